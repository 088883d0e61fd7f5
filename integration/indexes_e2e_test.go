package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/spire"
)

func plan(t *testing.T, dsn string) indexes.Plan {
	t.Helper()
	out, stderr, code := runCLI(t, nil, "indexes", "plan", "--dsn", dsn, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var p indexes.Plan
	require.NoError(t, json.Unmarshal([]byte(out), &p), out)
	return p
}

func states(p indexes.Plan) map[string]indexes.State {
	m := map[string]indexes.State{}
	for _, ix := range p.Indexes {
		m[ix.Name] = ix.State
	}
	return m
}

// explainUses reports whether the plan of a catalog statement (as SPIRE
// sent it, with args) names an index.
func explainUses(t *testing.T, conn *pgx.Conn, sql string, args []any, index string) bool {
	t.Helper()
	var out string
	err := conn.QueryRow(context.Background(), "EXPLAIN (FORMAT JSON) "+sql, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...).Scan(&out)
	require.NoError(t, err)
	return strings.Contains(out, `"Index Name": "`+index+`"`)
}

func catalogExample(t *testing.T, label, contains string) *spire.Example {
	t.Helper()
	ss, err := spire.StatementsFor(label)
	require.NoError(t, err)
	for _, s := range ss {
		if s.Example != nil && strings.Contains(s.Example.SQL, contains) {
			return s.Example
		}
	}
	t.Fatalf("no %q statement containing %q in the catalog", label, contains)
	return nil
}

// A real spire-server keeps serving while the set is built under it; then
// its prune statements, as it sends them, plan with the new indexes; plan and apply are idempotent; the
// advisor finds the events index from SPIRE's prune statement.
func TestIndexesOnRealSpireServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 15000)
	srv := startSpire(t, db, spiretest.Options{Experimental: []string{`cache_reload_interval = "1s"`}})
	_, err := conn.Exec(ctx, "CREATE EXTENSION hypopg")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "ANALYZE")
	require.NoError(t, err)

	p := plan(t, db.DSN)
	assert.Equal(t, 23, p.SchemaVersion)
	for _, ix := range p.Indexes {
		assert.Equal(t, indexes.Missing, ix.State, ix.Name)
		assert.True(t, ix.Applicable)
	}
	require.Len(t, p.SpireIndexes, len(spire.Indexes))
	for _, s := range p.SpireIndexes {
		assert.True(t, s.Present && s.Valid, s.Name)
	}

	// SPIRE runs its events prune every prune_events_older_than/2 (6 h by
	// default): run its captured execution here, as SPIRE would
	prune := catalogExample(t, "events prune", `"registered_entries_events"`)
	old := time.Now().Add(-12 * time.Hour).UTC().Format("2006-01-02 15:04:05.999999-07")
	for range 3 {
		_, err := conn.Exec(ctx, prune.SQL, pgx.QueryExecModeSimpleProtocol, old)
		require.NoError(t, err)
	}
	out, stderr, code := runCLI(t, nil, "indexes", "advise", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var adv indexes.AdviseReport
	require.NoError(t, json.Unmarshal([]byte(out), &adv), out)
	var found *indexes.Advice
	for i, a := range adv.Advice {
		if a.Table == "registered_entries_events" && strings.Join(a.Columns, ",") == "created_at" {
			found = &adv.Advice[i]
		}
	}
	require.NotNil(t, found, "advice: %s", out)
	assert.Equal(t, "spiredb_registered_entries_events_created_at", found.InSet)
	require.NotEmpty(t, found.Statements)
	assert.Equal(t, "events prune", found.Statements[0].Label)
	assert.GreaterOrEqual(t, found.Statements[0].Gain, 0.5)
	assert.Positive(t, found.EstimatedBytes)
	assert.Positive(t, adv.Considered)

	// apply while SPIRE reloads every second
	out, stderr, code = runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var actions []indexes.Action
	require.NoError(t, json.Unmarshal([]byte(out), &actions), out)
	require.Len(t, actions, len(indexes.Set()))
	for _, a := range actions {
		assert.Equal(t, "created", a.Action, a.Name)
	}
	for name, st := range states(plan(t, db.DSN)) {
		assert.Equal(t, indexes.Present, st, name)
	}
	out, stderr, code = runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(out), &actions), out)
	for _, a := range actions {
		assert.Equal(t, "present", a.Action, "apply is idempotent: %s", a.Name)
	}

	// SPIRE still serves every entry
	n, err := srv.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, 15000, n)
	_, err = conn.Exec(ctx, "ANALYZE")
	require.NoError(t, err)
	// the prunes, as SPIRE sends them, plan with the new indexes
	expiry := catalogExample(t, "expiry prune", "expiry")
	assert.True(t, explainUses(t, conn, expiry.SQL, []any{fmt.Sprint(time.Now().Unix())}, "spiredb_registered_entries_expiry_set"))
	assert.True(t, explainUses(t, conn, prune.SQL, []any{old}, "spiredb_registered_entries_events_created_at"))
	nodePrune := catalogExample(t, "events prune", `"attested_node_entries_events"`)
	_ = nodePrune // a handful of agents: the planner rightly prefers a scan

	// the advisor has nothing left for the prune
	out, stderr, code = runCLI(t, nil, "indexes", "advise", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(out), &adv), out)
	for _, a := range adv.Advice {
		assert.NotEqual(t, "registered_entries_events", a.Table, "already indexed: %+v", a)
	}
	out, _, code = runCLI(t, nil, "indexes", "check", "--dsn", db.DSN)
	assert.Contains(t, []int{0, 4}, code, out)
	assert.NotContains(t, out, "duplicate", "the set duplicates nothing of SPIRE's")
}

// A cancelled CREATE INDEX CONCURRENTLY leaves an INVALID index; apply drops
// and rebuilds it. A build that times out on a long transaction leaves
// nothing behind.
func TestIndexesApplyRepairsInvalid(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 5000})
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	ix, ok := indexes.Lookup("spiredb_registered_entries_events_created_at")
	require.True(t, ok)

	// a transaction that has written to the events table holds the
	// concurrent build in its wait; cancel the build there
	blocker, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer blocker.Close(ctx)
	tx, err := blocker.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "UPDATE registered_entries_events SET entry_id = entry_id WHERE id = 1")
	require.NoError(t, err)
	builder, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer builder.Close(ctx)
	pid := builder.PgConn().PID()
	done := make(chan error, 1)
	go func() { _, err := builder.Exec(ctx, ix.CreateSQL("public")); done <- err }()
	require.Eventually(t, func() bool {
		var waiting bool
		err := conn.QueryRow(ctx, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid).Scan(&waiting)
		return err == nil && waiting
	}, 30*time.Second, 50*time.Millisecond, "the build waits for the open transaction")
	_, err = conn.Exec(ctx, "SELECT pg_cancel_backend($1)", pid)
	require.NoError(t, err)
	require.ErrorContains(t, <-done, "canceling statement")
	require.NoError(t, tx.Rollback(ctx))
	assert.Equal(t, indexes.Invalid, states(plan(t, db.DSN))[ix.Name])

	out, _, code := runCLI(t, nil, "indexes", "check", "--dsn", db.DSN)
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "invalid")
	assert.Contains(t, out, "spiredb indexes apply --only "+ix.Name)

	out, stderr, code := runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "--only", ix.Name, "--dry-run")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, `DROP INDEX CONCURRENTLY IF EXISTS "public".`+`"`+ix.Name+`"`)
	assert.Contains(t, out, ix.CreateSQL("public"))
	assert.Equal(t, indexes.Invalid, states(plan(t, db.DSN))[ix.Name], "dry run changed nothing")

	out, stderr, code = runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "--only", ix.Name, "-o", "json")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, `"rebuilt"`)
	assert.Equal(t, indexes.Present, states(plan(t, db.DSN))[ix.Name])

	// a long transaction on the table and a short lock timeout: the build
	// fails after its retries and leaves no INVALID index behind
	other, ok := indexes.Lookup("spiredb_registered_entries_expiry_set")
	require.True(t, ok)
	tx, err = blocker.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "UPDATE registered_entries SET ttl = ttl WHERE id = 1")
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "--only", other.Name, "--lock-timeout", "100ms")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "lock timeout")
	assert.Contains(t, stderr, "next apply")
	require.NoError(t, tx.Rollback(ctx))
	// the drop of the leftover waited for the same transaction: the next
	// apply drops it and builds the index
	assert.Contains(t, []indexes.State{indexes.Missing, indexes.Invalid}, states(plan(t, db.DSN))[other.Name])
	_, stderr, code = runCLI(t, nil, "indexes", "apply", "--dsn", db.DSN, "--only", other.Name)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, indexes.Present, states(plan(t, db.DSN))[other.Name])
}

// check: a hand-made duplicate of SPIRE's spiffe_id index, an INVALID
// index, an unused one; an index scanned only on a standby is not unused
// when that standby is passed; SPIRE's and unique indexes are never
// proposed for dropping.
func TestIndexesCheck(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	primary, dsn, conn := primaryWithFixture(t, 3000)
	for _, q := range []string{
		"CREATE INDEX my_spiffe_id ON registered_entries (spiffe_id)",
		"CREATE INDEX my_unused ON registered_entries (hint, ttl)",
		"CREATE INDEX standby_only ON registered_entries (downstream, parent_id, spiffe_id)",
		"SELECT pg_stat_reset()",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	// a unique build on duplicate values fails and leaves an INVALID index
	_, err := conn.Exec(ctx, "CREATE UNIQUE INDEX CONCURRENTLY my_broken ON registered_entries (parent_id)")
	require.ErrorContains(t, err, "could not create unique index")

	standby := startStandby(t, primary)
	sconn, err := pgx.Connect(ctx, standby.DSN("spire"))
	require.NoError(t, err)
	defer sconn.Close(ctx)
	_, err = sconn.Exec(ctx, "SET enable_seqscan = off")
	require.NoError(t, err)
	var n int
	require.NoError(t, sconn.QueryRow(ctx, "SELECT count(*) FROM registered_entries WHERE downstream = false AND parent_id = 'x' AND spiffe_id = 'y'").Scan(&n))
	waitTrue(t, standby.DSN("spire"), "SELECT idx_scan > 0 FROM pg_stat_user_indexes WHERE indexrelname = 'standby_only'")

	findings := func(args ...string) (map[string][]string, int) {
		out, stderr, code := runCLI(t, nil, append([]string{"indexes", "check", "--dsn", dsn, "-o", "json"}, args...)...)
		require.Contains(t, []int{0, 1, 4}, code, stderr)
		var r indexes.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		m := map[string][]string{}
		for _, f := range r.Findings {
			m[f.Index] = append(m[f.Index], f.Kind)
			assert.NotEmpty(t, f.Fix)
			_, spires := spire.Indexes[f.Index]
			assert.False(t, spires && f.Kind != "invalid", "proposed dropping SPIRE's %s", f.Index)
			assert.False(t, strings.HasSuffix(f.Index, "_pkey"), "proposed dropping a primary key: %s", f.Index)
		}
		return m, code
	}
	m, code := findings()
	assert.Equal(t, 1, code, "an INVALID index is an error")
	assert.Contains(t, m["my_broken"], "invalid")
	assert.Contains(t, m["my_spiffe_id"], "duplicate")
	assert.Contains(t, m["my_unused"], "unused")
	assert.Contains(t, m["standby_only"], "unused", "the primary alone never scanned it")
	assert.NotContains(t, m, "idx_registered_entries_spiffe_id")

	m, _ = findings("--replica-dsn", standby.DSN("spire"))
	assert.NotContains(t, m["standby_only"], "unused", "the standby scans it")
	assert.Contains(t, m["my_unused"], "unused")

	out, _, _ := runCLI(t, nil, "indexes", "check", "--dsn", dsn)
	assert.Contains(t, out, `DROP INDEX CONCURRENTLY "public"."my_spiffe_id";`)
	assert.Contains(t, out, "idx_registered_entries_spiffe_id (SPIRE's own)")
	assert.NotContains(t, out, primary.Password)
}

func TestIndexesFaults(t *testing.T) {
	t.Parallel()
	empty := pgtest.NewDB(t)
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 10})
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"indexes", "plan", "--dsn", empty.DSN}, 1, "no SPIRE schema"},
		{[]string{"indexes", "apply", "--dsn", db.DSN, "--only", "idx_bogus"}, 2, `no index "idx_bogus"`},
		{[]string{"indexes", "advise", "--dsn", db.DSN}, 1, "CREATE EXTENSION hypopg"},
		{[]string{"indexes", "advise", "--dsn", db.DSN, "--min-gain", "2"}, 2, "--min-gain"},
		{[]string{"indexes", "check", "--dsn", db.DSN, "--replica-dsn", "postgres://u:hunter2@127.0.0.1:1/x?connect_timeout=2"}, 3, ""},
		{[]string{"views", "refresh", "--dsn", db.DSN}, 2, "views create"},
		{[]string{"views", "create", "--dsn", db.DSN, "--view", "bogus"}, 2, `no view "bogus"`},
		{[]string{"views", "create", "--dsn", empty.DSN}, 1, "no SPIRE schema"},
		{[]string{"indexes", "frobnicate"}, 2, "unknown command"},
	} {
		_, stderr, code := runCLI(t, nil, tc.args...)
		assert.Equal(t, tc.code, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, tc.args)
		assert.NotContains(t, stderr, "hunter2")
		assert.NotContains(t, stderr, db.Cluster.Password)
	}
}
