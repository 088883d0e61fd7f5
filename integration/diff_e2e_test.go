package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// diffCounts flattens a comparison: "table.kind" → count, non-zero only.
func diffCounts(d *backup.DiffResult) map[string]int64 {
	out := map[string]int64{}
	for _, t := range d.Tables {
		for _, c := range t.Changes {
			if c.Count > 0 {
				out[t.Table+"."+c.Kind] = c.Count
			}
		}
	}
	return out
}

// federatedBundlePEM writes a self-signed CA certificate for trust domain
// td, as `spire-server bundle set` takes it.
func federatedBundlePEM(t *testing.T, td string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	u, err := url.Parse("spiffe://" + td)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	f := filepath.Join(t.TempDir(), "bundle.pem")
	require.NoError(t, os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return f
}

// backup diff and restore --plan against a real spire-server: no findings
// on the unchanged datastore; after changes made through spire-server's own
// CLI, the counts equal the changes exactly; restore --clean over it is
// refused without --accept-loss (the target untouched), and with it the
// datastore is the backup's again.
func TestBackupDiffAndRestorePlanWithSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	src := pgtest.NewDB(t)
	srv := startSpire(t, src, spiretest.Options{})
	all := spirefixture.GenerateEntries(203, 5, nil) // 200 now, 3 after the backup
	require.NoError(t, srv.CreateEntries(ctx, all[:200]))
	// agents: spire-server records one per attestation; two are written
	// here as SPIRE writes them, and then banned and evicted by SPIRE
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		_, err := src.Pool.Exec(ctx, `INSERT INTO attested_node_entries (created_at, updated_at, spiffe_id, data_type, serial_number, expires_at, new_serial_number, can_reattest)
			VALUES (now(), now(), $1, 'join_token', $2, now() + interval '1 hour', '', false)`,
			"spiffe://"+spiretest.TrustDomain+"/spire/agent/join_token/"+name, "1"+strings.Repeat("0", len(name)))
		require.NoError(t, err)
	}
	_, err := srv.CLI(ctx, "token", "generate", "-ttl", "3600")
	require.NoError(t, err)

	b := s3test.NewBucket(t)
	env, store := s3CLI(b, "diff")
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		out, errOut, code := runCLI(t, env, append(args, store...)...)
		require.NotContains(t, out+errOut, b.SecretKey)
		return out, errOut, code
	}
	out, errOut, code := cli("backup", "run", "--dsn", src.DSN, "-o", "json")
	require.Equal(t, 0, code, errOut)
	var m backup.Manifest
	require.NoError(t, json.Unmarshal([]byte(out), &m))

	diff := func() *backup.DiffResult {
		t.Helper()
		out, errOut, code := cli("backup", "diff", "--dsn", src.DSN, "--id", m.ID, "-o", "json")
		require.Equal(t, 0, code, errOut)
		var d backup.DiffResult
		require.NoError(t, json.Unmarshal([]byte(out), &d), out)
		return &d
	}
	d := diff()
	require.Zero(t, d.Findings, "an unchanged datastore: %v", diffCounts(d))
	out, errOut, code = cli("backup", "restore", "--id", m.ID, "--target-dsn", src.DSN, "--plan")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "no differences", out)

	// changes, all through spire-server
	entries := map[string]string{} // entry ID → SPIFFE ID
	rows, err := src.Pool.Query(ctx, "SELECT entry_id, spiffe_id FROM registered_entries ORDER BY id LIMIT 3")
	require.NoError(t, err)
	for rows.Next() {
		var id, sid string
		require.NoError(t, rows.Scan(&id, &sid))
		entries[id] = sid
	}
	require.NoError(t, rows.Err())
	require.NoError(t, srv.CreateEntries(ctx, all[200:]))
	var ids []string
	for id := range entries {
		ids = append(ids, id)
	}
	for _, id := range ids[:2] {
		_, err := srv.CLI(ctx, "entry", "update", "-entryID", id, "-spiffeID", entries[id], "-parentID",
			"spiffe://"+spiretest.TrustDomain+"/agent", "-selector", "unix:uid:4242", "-x509SVIDTTL", "120")
		require.NoError(t, err)
	}
	_, err = srv.CLI(ctx, "entry", "delete", "-entryID", ids[2])
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "agent", "ban", "-spiffeID", "spiffe://"+spiretest.TrustDomain+"/spire/agent/join_token/node-a")
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "agent", "evict", "-spiffeID", "spiffe://"+spiretest.TrustDomain+"/spire/agent/join_token/node-b")
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "token", "generate", "-ttl", "3600")
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "bundle", "set", "-id", "spiffe://partner.org", "-path", federatedBundlePEM(t, "partner.org"))
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "federation", "create", "-trustDomain", "other.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
		"-bundleEndpointProfile", "https_web")
	require.NoError(t, err)

	d = diff()
	want := map[string]int64{
		"registered_entries.created":    3,
		"registered_entries.changed":    2,
		"registered_entries.deleted":    1,
		"attested_node_entries.banned":  1,
		"attested_node_entries.evicted": 1,
		"join_tokens.issued":            1,
		"bundles.added":                 1,
		"federated_trust_domains.added": 1,
	}
	require.Equal(t, want, diffCounts(d), "%+v", d.Tables)
	require.EqualValues(t, 11, d.Findings)
	for _, tb := range d.Tables {
		if tb.Table == "registered_entries" {
			require.EqualValues(t, 200, tb.Then)
			require.EqualValues(t, 202, tb.Now)
		}
	}
	// the text form names what a restore would do, in SPIRE's terms
	out, errOut, code = cli("backup", "diff", "--dsn", src.DSN, "--id", m.ID)
	require.Equal(t, 0, code, errOut)
	for _, s := range []string{"registration entries:", "3 created", "un-banned by a restore", "spiffe://partner.org", ids[2]} {
		require.Contains(t, out, s)
	}

	// a restore over it is refused, and prints the plan; nothing changes
	count := func() int {
		var n int
		require.NoError(t, src.Pool.QueryRow(ctx, "SELECT count(*) FROM registered_entries").Scan(&n))
		return n
	}
	out, errOut, code = cli("backup", "restore", "--id", m.ID, "--target-dsn", src.DSN, "--clean", "--yes")
	require.Equal(t, 1, code, out+errOut)
	require.Contains(t, errOut, "--accept-loss")
	require.Contains(t, out, "1 banned")
	require.Equal(t, 202, count(), "a refused restore left the target as it was")

	// with --accept-loss but the spire-server still connected: refused,
	// naming its sessions (it would keep its cache and events cursor)
	_, errOut, code = cli("backup", "restore", "--id", m.ID, "--target-dsn", src.DSN, "--clean", "--yes", "--accept-loss")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "connected")
	require.Contains(t, errOut, "--allow-sessions")
	require.Equal(t, 202, count(), "a refused restore left the target as it was")

	// with --accept-loss (SPIRE stopped, as for any restore) it is the
	// backup's datastore again
	srv.Halt()
	out, errOut, code = cli("backup", "restore", "--id", m.ID, "--target-dsn", src.DSN, "--clean", "--yes", "--accept-loss", "-o", "json")
	require.Equal(t, 0, code, errOut)
	var res backup.RestoreResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.NotNil(t, res.Plan)
	require.EqualValues(t, 11, res.Plan.Findings)
	require.Equal(t, 200, count())
	d = diff()
	require.Zero(t, d.Findings, "%v", diffCounts(d))
}

// The agent side of backup diff with real spire-agents: one attests after
// the backup (it must re-attest after a restore), one is banned and one
// evicted by spire-server, and one renews its SVID (30 s agent_ttl): the
// restored datastore knows only its old serial. Each is counted once,
// under what a restore would do to it.
func TestBackupDiffWithRealAgents(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	src := pgtest.NewDB(t)
	srv := startSpire(t, src, spiretest.Options{ServerLines: []string{`agent_ttl = "30s"`}})
	start := func() *spiretest.Agent {
		t.Helper()
		a, err := srv.StartAgent(ctx)
		require.NoError(t, err)
		t.Cleanup(a.Stop)
		return a
	}
	renewing, banned, evicted := start(), start(), start()
	serial := func(a *spiretest.Agent) string {
		var s string
		require.NoError(t, src.Pool.QueryRow(ctx, "SELECT serial_number FROM attested_node_entries WHERE spiffe_id = $1", a.SPIFFEID).Scan(&s))
		return s
	}

	b := s3test.NewBucket(t)
	env, store := s3CLI(b, "agents")
	out, errOut, code := runCLI(t, env, append([]string{"backup", "run", "--dsn", src.DSN, "-o", "json"}, store...)...)
	require.Equal(t, 0, code, errOut)
	var m backup.Manifest
	require.NoError(t, json.Unmarshal([]byte(out), &m))
	before := serial(renewing)

	fresh := start()
	_, err := srv.CLI(ctx, "agent", "ban", "-spiffeID", banned.SPIFFEID)
	require.NoError(t, err)
	_, err = srv.CLI(ctx, "agent", "evict", "-spiffeID", evicted.SPIFFEID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return serial(renewing) != before }, 90*time.Second, time.Second,
		"the agent renews its SVID at half its 30 s TTL: %s", renewing.LogTail(5))

	out, errOut, code = runCLI(t, env, append([]string{"backup", "diff", "--dsn", src.DSN, "--id", m.ID, "-o", "json"}, store...)...)
	require.Equal(t, 0, code, errOut)
	var d backup.DiffResult
	require.NoError(t, json.Unmarshal([]byte(out), &d), out)
	got := map[string][]string{}
	for _, tb := range d.Tables {
		if tb.Table != "attested_node_entries" {
			continue
		}
		for _, c := range tb.Changes {
			if c.Count > 0 {
				require.Len(t, c.Sample, int(c.Count))
				got[c.Kind] = c.Sample
			}
		}
	}
	require.Equal(t, map[string][]string{
		"attested": {fresh.SPIFFEID},
		"banned":   {banned.SPIFFEID},
		"evicted":  {evicted.SPIFFEID},
		"renewed":  {renewing.SPIFFEID},
	}, got, "%+v", d.Tables)
}
