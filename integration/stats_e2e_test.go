package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// statsDB is a database with pg_stat_statements created and SPIRE's schema
// loaded with n entries.
func statsDB(t *testing.T, entries int) (*pgtest.DB, *pgx.Conn) {
	t.Helper()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: entries})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(ctx) })
	_, err = conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements")
	require.NoError(t, err)
	// the fixture's COPY and DDL are not SPIRE's workload
	_, _, code := runCLI(t, nil, "stats", "reset", "--dsn", db.DSN)
	require.Equal(t, 0, code)
	return db, conn
}

// callsOf sums pg_stat_statements calls of this database's statements whose
// text, whitespace collapsed, matches a LIKE pattern: the test's own view,
// independent of spiredb.
func callsOf(t *testing.T, conn *pgx.Conn, like string) (calls int64, queryids int) {
	t.Helper()
	err := conn.QueryRow(context.Background(), `SELECT COALESCE(sum(calls), 0)::int8, count(DISTINCT queryid)::int FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND regexp_replace(query, '\s+', ' ', 'g') LIKE $1`, like).Scan(&calls, &queryids)
	require.NoError(t, err)
	return calls, queryids
}

func countGroups(groups []tuning.Group, pred func(tuning.Group) bool) int {
	n := 0
	for _, g := range groups {
		if pred(g) {
			n++
		}
	}
	return n
}

func findGroup(groups []tuning.Group, pred func(tuning.Group) bool) *tuning.Group {
	for i := range groups {
		if pred(groups[i]) {
			return &groups[i]
		}
	}
	return nil
}

// A real spire-server reloading 15,000 entries (two pages) and creating
// entries: stats top puts the reload page first with its SPIRE label, merges
// SPIRE's IN-list statements of different lengths into one shape, and
// leaves spiredb's own statements out.
func TestStatsTopOnRealSpireServer(t *testing.T) {
	t.Parallel()
	db, conn := statsDB(t, 15000)
	// the reload every second rather than SPIRE's default 5 s: the same
	// statements, sooner
	srv := startSpire(t, db, spiretest.Options{Experimental: []string{`cache_reload_interval = "1s"`}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// entries federating with one and with two trust domains
	tds := spirefixture.FederatedTrustDomains(2)
	entries := spirefixture.GenerateEntries(12, 5, nil)
	for i := range entries {
		entries[i].SpiffeID += "-stats"
		entries[i].FederatesWith = tds[:1+i%2]
	}
	require.NoError(t, srv.CreateEntries(ctx, entries))
	require.Eventually(t, func() bool {
		var calls int64
		err := conn.QueryRow(ctx, `SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_statements
			WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND regexp_replace(query, '\s+', ' ', 'g') LIKE $1`,
			"WITH listing AS ( SELECT id AS e_id FROM registered_entries %ORDER BY id ASC LIMIT%").Scan(&calls)
		return err == nil && calls >= 6
	}, time.Minute, 200*time.Millisecond, "SPIRE reloads its cache three times")
	// SPIRE looks their bundles up by trust_domain IN (...): one domain is
	// planned as trust_domain = $1, two as IN ($1,$2): two query ids
	shape := `SELECT * FROM "bundles" WHERE (trust_domain %$1%)`
	shapeCalls, shapeIDs := callsOf(t, conn, shape)
	require.GreaterOrEqual(t, shapeIDs, 2, "SPIRE ran its bundle lookup under two query ids")

	// spiredb's other commands run statements too: doctor, tune check
	_, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN)
	require.Contains(t, []int{0, 4}, code, stderr)
	_, stderr, code = runCLI(t, nil, "tune", "check", "--dsn", db.DSN, "--ram", "4GB", "--cpus", "2")
	require.Contains(t, []int{0, 1}, code, stderr)

	stdout, stderr, code := runCLI(t, nil, "stats", "top", "--dsn", db.DSN, "-o", "json", "--limit", "0")
	require.Equal(t, 0, code, stderr)
	var r tuning.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &r), stdout)

	require.NotEmpty(t, r.Groups)
	assert.Equal(t, "cache reload page", r.Groups[0].Label, "top statement: %s", r.Groups[0].Query)
	assert.Contains(t, r.Groups[0].Query, "WITH listing AS")
	require.NotEmpty(t, r.Operations)
	assert.Equal(t, "cache reload page", r.Operations[0].Label)
	assert.Greater(t, r.Operations[0].Share, 0.5, "the reload dominates database time")
	assert.Equal(t, 2, r.Operations[0].Shapes, "first page and later pages are two shapes")

	// ... which are one shape, on one line
	fp, err := spire.Fingerprint(`SELECT * FROM "bundles" WHERE (trust_domain in ($1,$2))`)
	require.NoError(t, err)
	bundles := findGroup(r.Groups, func(g tuning.Group) bool { return g.Fingerprint == fp })
	require.NotNil(t, bundles)
	assert.Equal(t, "bundle fetch", bundles.Label)
	assert.GreaterOrEqual(t, len(bundles.QueryIDs), shapeIDs, "the query ids of one shape merged")
	assert.GreaterOrEqual(t, bundles.Calls, shapeCalls)
	laterCalls, _ := callsOf(t, conn, shape)
	assert.LessOrEqual(t, bundles.Calls, laterCalls, "calls of the merged shape")
	assert.Equal(t, 1, countGroups(r.Groups, func(g tuning.Group) bool {
		q := strings.Join(strings.Fields(g.Query), " ")
		return strings.HasPrefix(q, `SELECT * FROM "bundles" WHERE (trust_domain `) && !strings.HasSuffix(q, "FOR UPDATE")
	}), "one line for the shape")

	for _, label := range []string{"similar-entry lookup", "entry insert", "selector insert", "entry event insert", "transaction control"} {
		assert.NotNil(t, findGroup(r.Groups, func(g tuning.Group) bool { return g.Label == label }), "a %q shape", label)
	}
	for _, g := range r.Groups {
		assert.NotContains(t, g.Query, tuning.Marker, "spiredb's own statement reported")
		// SPIRE never names pg_catalog; doctor's and check's statements do
		assert.NotContains(t, g.Query, "pg_catalog", "spiredb's own statement reported")
	}
	assert.GreaterOrEqual(t, r.Source.Excluded, 5, "spiredb's own statements were seen and left out")
	var share float64
	for _, op := range r.Operations {
		share += op.Share
	}
	assert.InDelta(t, 1, share, 1e-6)

	// text: a table, the labels, the summary
	stdout, stderr, code = runCLI(t, nil, "stats", "top", "--dsn", db.DSN, "--by", "calls", "--limit", "5")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "database time by SPIRE operation:")
	assert.Contains(t, stdout, "cache reload page")
	assert.Contains(t, stdout, "by calls")
	assert.NotContains(t, stdout+stderr, db.Cluster.Password)
}

// Snapshots around SPIRE creating entries: the diff counts exactly the
// statements of those entries, marks shapes that had not run before, and
// --since compares a file with the live database.
func TestStatsSnapshotDiffOnRealSpireServer(t *testing.T) {
	t.Parallel()
	db, conn := statsDB(t, 2000)
	srv := startSpire(t, db, spiretest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	snapshot := func(name string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		_, stderr, code := runCLI(t, nil, "stats", "snapshot", "--dsn", db.DSN, "--out", path)
		require.Equal(t, 0, code, stderr)
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		return path
	}
	diff := func(args ...string) tuning.Diff {
		t.Helper()
		stdout, stderr, code := runCLI(t, nil, append([]string{"stats", "diff", "-o", "json", "--limit", "0"}, args...)...)
		require.Equal(t, 0, code, stderr)
		var d tuning.Diff
		require.NoError(t, json.Unmarshal([]byte(stdout), &d), stdout)
		return d
	}
	byLabel := func(d tuning.Diff, label string) tuning.Change {
		t.Helper()
		var sum tuning.Change
		sum.New = true
		found := false
		for _, c := range d.Changes {
			if c.Label == label {
				found = true
				sum.Calls += c.Calls
				sum.New = sum.New && c.New
			}
		}
		require.True(t, found, "no %q in the diff", label)
		return sum
	}
	create := func(n int, seed uint64) (selectors int64) {
		t.Helper()
		entries := spirefixture.GenerateEntries(n, seed, nil)
		for i := range entries {
			entries[i].SpiffeID += fmt.Sprintf("-diff-%d", seed)
			selectors += int64(len(entries[i].Selectors))
		}
		require.NoError(t, srv.CreateEntries(ctx, entries))
		return selectors
	}

	a := snapshot("a.json")
	selectors := create(30, 11)
	b := snapshot("b.json")
	d := diff(a, b)
	assert.Equal(t, int64(30), byLabel(d, "entry insert").Calls)
	assert.True(t, byLabel(d, "entry insert").New, "SPIRE had inserted no entry before")
	assert.Equal(t, selectors, byLabel(d, "selector insert").Calls)
	assert.Equal(t, int64(30), byLabel(d, "entry event insert").Calls)
	assert.False(t, d.Reset)
	for _, c := range d.Changes {
		assert.NotContains(t, c.Query, tuning.Marker)
	}

	selectors = create(10, 12)
	c := snapshot("c.json")
	d = diff(b, c)
	ins := byLabel(d, "entry insert")
	assert.Equal(t, int64(10), ins.Calls)
	assert.False(t, ins.New, "entry insert ran before b")
	assert.Equal(t, selectors, byLabel(d, "selector insert").Calls)
	for _, ch := range d.Changes {
		if ch.Label == "entry insert" {
			assert.Positive(t, ch.MeanBeforeMs)
			assert.Positive(t, ch.Slowdown)
		}
	}

	// live: nothing created since c
	d = diff("--since", c, "--dsn", db.DSN)
	for _, ch := range d.Changes {
		assert.NotEqual(t, "entry insert", ch.Label, "no entry was created after c")
	}
	// this database's statements were reset: rows that went backwards count
	// from zero (a full reset, which other tests' databases on this cluster
	// would feel, also sets Diff.Reset: unit-tested)
	_, _, code := runCLI(t, nil, "stats", "reset", "--dsn", db.DSN)
	require.Equal(t, 0, code)
	create(5, 13)
	d = diff("--since", c, "--dsn", db.DSN)
	assert.Equal(t, int64(5), byLabel(d, "entry insert").Calls)

	stdout, stderr, code := runCLI(t, nil, "stats", "diff", a, c)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "entry insert")
	assert.Contains(t, stdout, "new")
	calls, _ := callsOf(t, conn, `INSERT INTO "registered_entries" %`)
	assert.Equal(t, int64(5), calls, "the test's own view agrees")
}

// Reset clears the connected database's statements only, unless told.
func TestStatsResetIsPerDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db1, conn1 := statsDB(t, 10)
	_, conn2 := statsDB(t, 10)
	for _, c := range []*pgx.Conn{conn1, conn2} {
		_, err := c.Exec(ctx, "SELECT count(*) AS stats_reset_probe FROM registered_entries")
		require.NoError(t, err)
	}
	probe := "%stats_reset_probe%"
	_, _, code := runCLI(t, nil, "stats", "reset", "--dsn", db1.DSN)
	require.Equal(t, 0, code)
	n1, _ := callsOf(t, conn1, probe)
	n2, _ := callsOf(t, conn2, probe)
	assert.Zero(t, n1, "db1 was reset")
	assert.Equal(t, int64(1), n2, "db2 was not")
}

func TestStatsFaults(t *testing.T) {
	t.Parallel()
	noExt := pgtest.NewDB(t)
	_, stderr, code := runCLI(t, nil, "stats", "top", "--dsn", noExt.DSN)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "CREATE EXTENSION pg_stat_statements")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %s", stderr)

	db, _ := statsDB(t, 10)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.json")
	require.NoError(t, os.WriteFile(garbage, []byte("{"), 0o600))
	good := filepath.Join(dir, "good.json")
	_, stderr, code = runCLI(t, nil, "stats", "snapshot", "--dsn", db.DSN, "--out", good)
	require.Equal(t, 0, code, stderr)

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"stats", "top", "--dsn", db.DSN, "--by", "total_time"}, 2, "invalid --by"},
		{[]string{"stats", "top", "--dsn", db.DSN, "--limit", "-1"}, 2, "--limit"},
		{[]string{"stats", "diff", good}, 2, "two snapshot files"},
		{[]string{"stats", "diff", good, garbage}, 2, "not a spiredb stats snapshot"},
		{[]string{"stats", "diff", good, good}, 2, "taken after"},
		{[]string{"stats", "diff", "--since", filepath.Join(dir, "missing.json"), "--dsn", db.DSN}, 2, "no such file"},
		{[]string{"stats", "snapshot", "--dsn", db.DSN}, 2, "--out"},
		{[]string{"stats", "snapshot", "--dsn", db.DSN, "--out", filepath.Join(dir, "no", "such", "dir.json")}, 1, "writing snapshot"},
		{[]string{"stats", "top", "--dsn", "postgres://spire:hunter2@127.0.0.1:1/spire?connect_timeout=2"}, 3, ""},
		{[]string{"stats", "frobnicate"}, 2, "unknown command"},
	} {
		_, stderr, code := runCLI(t, nil, tc.args...)
		assert.Equal(t, tc.code, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, tc.args)
		assert.NotContains(t, stderr, "hunter2")
		assert.NotContains(t, stderr, db.Cluster.Password)
	}
	_, err := os.Stat(filepath.Join(dir, "no"))
	assert.True(t, os.IsNotExist(err), "nothing half-written")
}

// A server that does not preload the library: the error says to add it to
// shared_preload_libraries and restart.
func TestStatsNotPreloaded(t *testing.T) {
	t.Parallel()
	opts := pgtest.Options()
	opts.Settings = map[string]string{"shared_preload_libraries": "''"}
	c := pgtest.NewCluster(t, opts)
	ctx := context.Background()
	dsn := c.DSN("postgres")
	_, stderr, code := runCLI(t, nil, "stats", "top", "--dsn", dsn)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "shared_preload_libraries")
	assert.Contains(t, stderr, "restart")

	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements")
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "stats", "top", "--dsn", dsn)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "created but not loaded")
}
