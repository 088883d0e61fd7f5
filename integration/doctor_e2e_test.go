package integration_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// A real spire-server creates its schema and 2,000 entries through its API;
// spiredb doctor then reports what SPIRE wrote.
func TestDoctorOnRealSpireServer(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	srv := startSpire(t, db, spiretest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(2000, 42, nil)))
	n, err := srv.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, 2000, n)

	stdout, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Contains(t, []int{0, 4}, code, "doctor exit %d: %s", code, stderr)
	var rep struct {
		Server struct {
			Role       string `json:"role"`
			VersionNum int    `json:"version_num"`
		} `json:"server"`
		Statements struct {
			Preloaded bool `json:"preloaded"`
		} `json:"pg_stat_statements"`
		SPIRE struct {
			Present     bool   `json:"present"`
			Version     int    `json:"version"`
			CodeVersion string `json:"code_version"`
			Entries     int64  `json:"registration_entries"`
			Bundles     int64  `json:"bundles"`
		} `json:"spire"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	require.True(t, rep.SPIRE.Present)
	require.Equal(t, 23, rep.SPIRE.Version)
	require.Equal(t, "1.13.3", rep.SPIRE.CodeVersion)
	require.EqualValues(t, 2000, rep.SPIRE.Entries)
	require.EqualValues(t, 1, rep.SPIRE.Bundles, "the server's own trust bundle")
	require.Equal(t, "primary", rep.Server.Role)
	require.True(t, rep.Statements.Preloaded)
	require.NotContains(t, stdout+stderr, db.Cluster.Password, "doctor printed the DSN password")
}

// The COPY loader writes data a real spire-server serves exactly: the count
// matches and a spot check of entries matches what was generated.
func TestFixtureIsServedBySpire(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	const n = 3000
	spec := spirefixture.Spec{Entries: n, Seed: 7}
	sum := loadFixture(t, db, spec)
	require.EqualValues(t, n, sum.Entries)

	srv := startSpire(t, db, spiretest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	count, err := srv.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, n, count)

	want := spirefixture.GenerateEntries(n, spec.Seed, spirefixture.FederatedTrustDomains(2))
	for _, i := range []int{0, 1, 7, 40, 1234, n - 1} {
		e := want[i]
		out, err := srv.Show(ctx, "-spiffeID", e.SpiffeID)
		require.NoError(t, err)
		var got []map[string]any
		require.NoError(t, json.Unmarshal(out, &got))
		require.Len(t, got, 1, "entry %d", i)
		g := got[0]
		require.Equal(t, e.ParentID, spiffeIDString(g["parent_id"]), "entry %d parent", i)
		require.EqualValues(t, e.X509SVIDTTL, g["x509_svid_ttl"])
		require.EqualValues(t, e.JWTSVIDTTL, g["jwt_svid_ttl"])
		require.Equal(t, e.Hint, str(g["hint"]))
		require.EqualValues(t, e.EntryExpiry, num(g["expires_at"]), "entry %d expiry", i)
		require.ElementsMatch(t, selectorStrings(e.Selectors), gotSelectors(g["selectors"]), "entry %d selectors", i)
		require.ElementsMatch(t, e.DNSNames, strs(g["dns_names"]), "entry %d dns", i)
		var fed []string
		for _, td := range e.FederatesWith {
			fed = append(fed, strings.TrimPrefix(td, "spiffe://"))
		}
		require.ElementsMatch(t, fed, strs(g["federates_with"]), "entry %d federates_with", i)
	}
}

func spiffeIDString(v any) string {
	m, _ := v.(map[string]any)
	path := str(m["path"])
	return "spiffe://" + str(m["trust_domain"]) + path
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func num(v any) int64 {
	switch x := v.(type) {
	case float64:
		return int64(x)
	case string:
		var n int64
		for _, c := range x {
			n = n*10 + int64(c-'0')
		}
		return n
	}
	return 0
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, x := range l {
		out = append(out, str(x))
	}
	return out
}

func selectorStrings(sels []spirefixture.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.Type + ":" + s.Value
	}
	return out
}

func gotSelectors(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, x := range l {
		m, _ := x.(map[string]any)
		out = append(out, str(m["type"])+":"+str(m["value"]))
	}
	return out
}
