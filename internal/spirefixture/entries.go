// Package spirefixture fills a database with SPIRE data fast: the schema a
// real spire-server created (spire.SchemaSQL) and N SPIRE-valid
// registration entries with their selectors, DNS names, federated bundles,
// events rows and attested agents, written with COPY.
//
// A real spire-server started on a loaded database serves exactly these
// entries (proved by integration tests), so benchmarks and the demo can
// use SPIRE-shaped data without spending minutes in SPIRE's API.
package spirefixture

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// TrustDomain of the generated entries.
const TrustDomain = "example.org"

// Entry is a registration entry in the JSON form `spire-server entry create
// -data` reads.
type Entry struct {
	SpiffeID      string     `json:"spiffe_id"`
	ParentID      string     `json:"parent_id"`
	Selectors     []Selector `json:"selectors"`
	X509SVIDTTL   int32      `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL    int32      `json:"jwt_svid_ttl,omitempty"`
	DNSNames      []string   `json:"dns_names,omitempty"`
	FederatesWith []string   `json:"federates_with,omitempty"`
	Hint          string     `json:"hint,omitempty"`
	EntryExpiry   int64      `json:"entry_expiry,omitempty"`
	Admin         bool       `json:"admin,omitempty"`
	Downstream    bool       `json:"downstream,omitempty"`
}

// Selector is a type:value pair.
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// GenerateEntries makes n distinct, valid entries, deterministic for a
// seed: 3-5 selectors each, a DNS name on every 4th, a hint on every 3rd, an
// expiry (10 years out) on every 10th. federated, when not empty, lists
// trust domain IDs (spiffe://td) that every 7th entry federates with.
func GenerateEntries(n int, seed uint64, federated []string) []Entry {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]Entry, n)
	far := time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := range out {
		ns := fmt.Sprintf("ns-%d", i%50)
		e := Entry{
			SpiffeID:    fmt.Sprintf("spiffe://%s/%s/sa-%d/w-%d", TrustDomain, ns, i%200, i),
			ParentID:    fmt.Sprintf("spiffe://%s/spire/agent/k8s_psat/cluster/node-%d", TrustDomain, i%20),
			X509SVIDTTL: 3600,
			JWTSVIDTTL:  300,
			Selectors: []Selector{
				{"k8s", "ns:" + ns},
				{"k8s", fmt.Sprintf("sa:sa-%d", i%200)},
				{"k8s", fmt.Sprintf("pod-label:app:w-%d", i)},
			},
		}
		for j := 0; j < r.IntN(3); j++ {
			e.Selectors = append(e.Selectors, Selector{"unix", fmt.Sprintf("uid:%d", 1000+j)})
		}
		if i%4 == 0 {
			e.DNSNames = []string{fmt.Sprintf("w-%d.%s.svc", i, ns)}
		}
		if i%3 == 0 {
			e.Hint = "hint-" + ns
		}
		if i%10 == 0 {
			e.EntryExpiry = far + int64(i)
		}
		if len(federated) > 0 && i%7 == 0 {
			e.FederatesWith = []string{federated[i%len(federated)]}
		}
		out[i] = e
	}
	return out
}
