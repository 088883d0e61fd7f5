package spirefixture

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protowire"
)

// Spec sizes a fixture.
type Spec struct {
	Entries int
	// Agents is the number of attested agents (default 3).
	Agents int
	// FederatedBundles is the number of federated trust domains (default 2).
	FederatedBundles int
	// Seed makes the data deterministic (default 1).
	Seed uint64
}

// Summary says what was loaded.
type Summary struct {
	Entries, Selectors, DNSNames, Federations, Bundles, Agents, Events int64
	Duration                                                           time.Duration
}

// FederatedTrustDomains returns the trust domain IDs a spec's bundles use.
func FederatedTrustDomains(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("spiffe://federated-%d.example", i+1)
	}
	return out
}

// Load creates SPIRE's schema from schemaSQL (spire.SchemaSQL) in
// the connected database and fills it per spec. The database must be empty.
func Load(ctx context.Context, conn *pgx.Conn, schemaSQL string, spec Spec) (Summary, error) {
	start := time.Now()
	if spec.Agents == 0 {
		spec.Agents = 3
	}
	if spec.FederatedBundles == 0 {
		spec.FederatedBundles = 2
	}
	if spec.Seed == 0 {
		spec.Seed = 1
	}
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		return Summary{}, fmt.Errorf("creating SPIRE schema: %w", err)
	}
	// the dump's set_config cleared the search_path for this session
	if _, err := conn.Exec(ctx, "SET search_path TO DEFAULT"); err != nil {
		return Summary{}, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return Summary{}, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	now := time.Now().UTC().Truncate(time.Second)
	var s Summary
	tds := FederatedTrustDomains(spec.FederatedBundles)
	bundleID := map[string]int32{}
	var bundleRows [][]any
	for i, td := range tds {
		data, err := bundleProto(td)
		if err != nil {
			return Summary{}, err
		}
		bundleID[td] = int32(i + 1)
		bundleRows = append(bundleRows, []any{int32(i + 1), now, now, td, data})
	}
	if err := copyRows(ctx, tx, "bundles", []string{"id", "created_at", "updated_at", "trust_domain", "data"}, bundleRows); err != nil {
		return Summary{}, err
	}
	s.Bundles = int64(len(bundleRows))

	entries := GenerateEntries(spec.Entries, spec.Seed, tds)
	r := mrand.New(mrand.NewPCG(spec.Seed, 7))
	var entryRows, selRows, dnsRows, fedRows, eventRows [][]any
	var selID, dnsID int32
	for i, e := range entries {
		id := int32(i + 1)
		entryID := uuid4(r)
		var hint any
		if e.Hint != "" {
			hint = e.Hint
		}
		entryRows = append(entryRows, []any{id, now, now, entryID, e.SpiffeID, e.ParentID, e.X509SVIDTTL,
			e.Admin, e.Downstream, e.EntryExpiry, int64(0), false, hint, e.JWTSVIDTTL})
		for _, sel := range e.Selectors {
			selID++
			selRows = append(selRows, []any{selID, now, now, id, sel.Type, sel.Value})
		}
		for _, d := range e.DNSNames {
			dnsID++
			dnsRows = append(dnsRows, []any{dnsID, now, now, id, d})
		}
		for _, td := range e.FederatesWith {
			fedRows = append(fedRows, []any{bundleID[td], id})
		}
		eventRows = append(eventRows, []any{id, now, now, entryID})
	}
	steps := []struct {
		table string
		cols  []string
		rows  [][]any
		n     *int64
	}{
		{"registered_entries", []string{"id", "created_at", "updated_at", "entry_id", "spiffe_id", "parent_id", "ttl",
			"admin", "downstream", "expiry", "revision_number", "store_svid", "hint", "jwt_svid_ttl"}, entryRows, &s.Entries},
		{"selectors", []string{"id", "created_at", "updated_at", "registered_entry_id", "type", "value"}, selRows, &s.Selectors},
		{"dns_names", []string{"id", "created_at", "updated_at", "registered_entry_id", "value"}, dnsRows, &s.DNSNames},
		{"federated_registration_entries", []string{"bundle_id", "registered_entry_id"}, fedRows, &s.Federations},
		{"registered_entries_events", []string{"id", "created_at", "updated_at", "entry_id"}, eventRows, &s.Events},
	}
	for _, st := range steps {
		if err := copyRows(ctx, tx, st.table, st.cols, st.rows); err != nil {
			return Summary{}, err
		}
		*st.n = int64(len(st.rows))
	}

	var agentRows, agentEvents, resolverRows [][]any
	for i := range spec.Agents {
		id := int32(i + 1)
		sid := fmt.Sprintf("spiffe://%s/spire/agent/join_token/%s", TrustDomain, uuid4(r))
		agentRows = append(agentRows, []any{id, now, now, sid, "join_token", fmt.Sprintf("%d", 1000+i), now.Add(time.Hour), "", nil, false})
		agentEvents = append(agentEvents, []any{id, now, now, sid})
		resolverRows = append(resolverRows, []any{id, now, now, sid, "k8s_psat", fmt.Sprintf("cluster:cluster-%d", i%2)})
	}
	if err := copyRows(ctx, tx, "attested_node_entries", []string{"id", "created_at", "updated_at", "spiffe_id", "data_type",
		"serial_number", "expires_at", "new_serial_number", "new_expires_at", "can_reattest"}, agentRows); err != nil {
		return Summary{}, err
	}
	if err := copyRows(ctx, tx, "attested_node_entries_events", []string{"id", "created_at", "updated_at", "spiffe_id"}, agentEvents); err != nil {
		return Summary{}, err
	}
	if err := copyRows(ctx, tx, "node_resolver_map_entries", []string{"id", "created_at", "updated_at", "spiffe_id", "type", "value"}, resolverRows); err != nil {
		return Summary{}, err
	}
	s.Agents = int64(len(agentRows))

	// sequences past the ids written, as SPIRE's inserts expect
	if _, err := tx.Exec(ctx, `DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['registered_entries','selectors','dns_names','bundles','attested_node_entries',
    'attested_node_entries_events','registered_entries_events','node_resolver_map_entries','migrations'] LOOP
    EXECUTE format('SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence(%L, ''id''), GREATEST((SELECT max(id) FROM public.%I), 1))', 'public.' || t, t);
  END LOOP;
END $$`); err != nil {
		return Summary{}, fmt.Errorf("advancing sequences: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Summary{}, err
	}
	if _, err := conn.Exec(ctx, "ANALYZE"); err != nil {
		return Summary{}, err
	}
	s.Duration = time.Since(start)
	return s, nil
}

func copyRows(ctx context.Context, tx pgx.Tx, table string, cols []string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"public", table}, cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copying %s: %w", table, err)
	}
	return nil
}

func uuid4(r *mrand.Rand) string {
	var b [16]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// bundleProto encodes SPIRE's common.Bundle protobuf (the bundles.data
// column): trust_domain_id = 1, root_cas = 2 (Certificate{der_bytes = 1}),
// refresh_hint = 4, sequence_number = 5.
func bundleProto(trustDomainID string) ([]byte, error) {
	der, err := selfSignedCA(trustDomainID)
	if err != nil {
		return nil, err
	}
	var cert []byte
	cert = protowire.AppendTag(cert, 1, protowire.BytesType)
	cert = protowire.AppendBytes(cert, der)

	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, trustDomainID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, cert)
	b = protowire.AppendTag(b, 4, protowire.VarintType)
	b = protowire.AppendVarint(b, 300)
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	return b, nil
}

func selfSignedCA(trustDomainID string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(trustDomainID)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"spiredb fixture"}, CommonName: u.Host},
		URIs:                  []*url.URL{u},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
}
