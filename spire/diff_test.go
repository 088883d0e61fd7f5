package spire_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

// twin returns a database holding the fixture ("then") and an exact copy
// of it ("now", made with CREATE DATABASE ... TEMPLATE), both connected.
func twin(t *testing.T, spec spirefixture.Spec) (then, now *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	c, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	_, err = spirefixture.Load(ctx, c, spire.SchemaSQL, spec)
	require.NoError(t, err)
	_, err = c.Exec(ctx, `INSERT INTO join_tokens (created_at, updated_at, token, expiry) VALUES
		(now(), now(), 'tok-live-1', extract(epoch FROM now())::bigint + 86400),
		(now(), now(), 'tok-gone-expired', extract(epoch FROM now())::bigint - 60),
		(now(), now(), 'tok-kept', extract(epoch FROM now())::bigint + 86400)`)
	require.NoError(t, err)
	require.NoError(t, c.Close(ctx))
	db.Pool.Close() // a template database must have no sessions

	copyDB := pgtest.NewDB(t) // for its name and clean-up; replaced by the copy
	copyDB.Pool.Close()
	admin, err := pgx.Connect(ctx, db.Cluster.DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{copyDB.Name}.Sanitize())
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{copyDB.Name}.Sanitize()+" TEMPLATE "+pgx.Identifier{db.Name}.Sanitize())
	require.NoError(t, err)

	then, err = pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	t.Cleanup(func() { _ = then.Close(context.Background()) })
	now, err = pgx.Connect(ctx, copyDB.DSN)
	require.NoError(t, err)
	t.Cleanup(func() { _ = now.Close(context.Background()) })
	return then, now
}

func counts(d *spire.DatastoreDiff) map[string]int64 {
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

// Every kind of change SPIRE makes is counted exactly once, under the name
// of what a restore would do to it; a row SPIRE only touched is not a
// change; an identical copy has no findings.
func TestDiffClassifiesSpireChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	then, now := twin(t, spirefixture.Spec{Entries: 300, Agents: 6, FederatedBundles: 2})

	d, err := spire.Diff(ctx, then, now, spire.DiffOptions{})
	require.NoError(t, err)
	require.Zero(t, d.Findings, "%+v", counts(d))
	require.Empty(t, counts(d))
	require.Equal(t, 23, d.SchemaThen)

	exec := func(sql string) {
		t.Helper()
		_, err := now.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	// entries: 2 created, 1 selector changed, 1 DNS name added, 1 only
	// touched, 1 deleted (with its children, as SPIRE does)
	exec(`INSERT INTO registered_entries (created_at, updated_at, entry_id, spiffe_id, parent_id, ttl, admin, downstream, expiry, revision_number, store_svid, hint, jwt_svid_ttl)
		VALUES (now(), now(), 'zz-new-1', 'spiffe://example.org/new/1', 'spiffe://example.org/agent', 3600, false, false, 0, 0, false, '', 300),
		       (now(), now(), '00-new-2', 'spiffe://example.org/new/2', 'spiffe://example.org/agent', 3600, false, false, 0, 0, false, '', 300)`)
	exec(`UPDATE selectors SET value = value || '-changed', updated_at = now() WHERE id = (SELECT min(id) FROM selectors
		WHERE registered_entry_id = (SELECT id FROM registered_entries ORDER BY id LIMIT 1))`)
	exec(`INSERT INTO dns_names (created_at, updated_at, registered_entry_id, value) SELECT now(), now(), id, 'added.example.org'
		FROM registered_entries ORDER BY id OFFSET 1 LIMIT 1`)
	exec(`UPDATE registered_entries SET updated_at = now() + interval '1 hour' WHERE id = (SELECT id FROM registered_entries ORDER BY id OFFSET 2 LIMIT 1)`)
	exec(`WITH gone AS (SELECT id FROM registered_entries ORDER BY id OFFSET 3 LIMIT 1),
		s AS (DELETE FROM selectors WHERE registered_entry_id IN (SELECT id FROM gone)),
		n AS (DELETE FROM dns_names WHERE registered_entry_id IN (SELECT id FROM gone))
		DELETE FROM registered_entries WHERE id IN (SELECT id FROM gone)`)
	// agents: 1 attested, 1 banned (SPIRE clears the serial), 1 renewed,
	// 1 evicted, 1 with a new selector
	exec(`INSERT INTO attested_node_entries (created_at, updated_at, spiffe_id, data_type, serial_number, expires_at, new_serial_number, can_reattest)
		VALUES (now(), now(), 'spiffe://example.org/spire/agent/join_token/new', 'join_token', '123', now() + interval '1 hour', '', false)`)
	exec(`UPDATE attested_node_entries SET serial_number = '', new_serial_number = '' WHERE id = (SELECT min(id) FROM attested_node_entries)`)
	exec(`UPDATE attested_node_entries SET serial_number = serial_number || '9', expires_at = expires_at + interval '1 hour'
		WHERE id = (SELECT id FROM attested_node_entries ORDER BY id OFFSET 1 LIMIT 1)`)
	exec(`DELETE FROM attested_node_entries WHERE id = (SELECT id FROM attested_node_entries ORDER BY id OFFSET 2 LIMIT 1)`)
	exec(`INSERT INTO node_resolver_map_entries (created_at, updated_at, spiffe_id, type, value)
		SELECT now(), now(), spiffe_id, 'k8s_psat', 'cluster:new' FROM attested_node_entries ORDER BY id OFFSET 3 LIMIT 1`)
	// bundles: 1 changed, 1 added; a CA journal and a federation added
	exec(`UPDATE bundles SET data = data || '\x00'::bytea WHERE id = (SELECT min(id) FROM bundles)`)
	exec(`INSERT INTO bundles (created_at, updated_at, trust_domain, data) VALUES (now(), now(), 'spiffe://added.org', '\x0a00'::bytea)`)
	exec(`INSERT INTO ca_journals (created_at, updated_at, data, active_x509_authority_id, active_jwt_authority_id) VALUES (now(), now(), '\x01', 'x', 'j')`)
	exec(`INSERT INTO federated_trust_domains (created_at, updated_at, trust_domain, bundle_endpoint_url, bundle_endpoint_profile, implicit)
		VALUES (now(), now(), 'spiffe://fed.org', 'https://fed.org/bundle', 'https_web', false)`)
	// join tokens: 1 issued, 1 used (deleted, unexpired), 1 expired and pruned
	exec(`INSERT INTO join_tokens (created_at, updated_at, token, expiry) VALUES (now(), now(), 'tok-new', extract(epoch FROM now())::bigint + 600)`)
	exec(`DELETE FROM join_tokens WHERE token IN ('tok-live-1', 'tok-gone-expired')`)

	d, err = spire.Diff(ctx, then, now, spire.DiffOptions{Sample: 5, Now: time.Now()})
	require.NoError(t, err)
	require.Equal(t, map[string]int64{
		"registered_entries.created":     2,
		"registered_entries.changed":     2,
		"registered_entries.deleted":     1,
		"attested_node_entries.attested": 1,
		"attested_node_entries.banned":   1,
		"attested_node_entries.renewed":  1,
		"attested_node_entries.evicted":  1,
		"attested_node_entries.changed":  1,
		"bundles.changed":                1,
		"bundles.added":                  1,
		"ca_journals.added":              1,
		"federated_trust_domains.added":  1,
		"join_tokens.issued":             1,
		"join_tokens.used":               1,
		"join_tokens.expired":            1,
	}, counts(d))
	require.EqualValues(t, 17, d.Findings)
	for _, tb := range d.Tables {
		if tb.Table == "registered_entries" {
			require.EqualValues(t, 300, tb.Then)
			require.EqualValues(t, 301, tb.Now)
			require.Equal(t, []string{"00-new-2", "zz-new-1"}, tb.Changes[0].Sample, "sampled in key order")
		}
		if tb.Table == "join_tokens" {
			for _, c := range tb.Changes {
				for _, s := range c.Sample {
					require.True(t, strings.HasPrefix(s, "sha256:"), "a join token is a credential: never listed as is (%s)", s)
				}
			}
		}
	}
}
