package integration_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/migrations/lint"
)

// With --dsn: tables, columns and indexes resolve against a loaded SPIRE
// database, and lock findings are weighed by table size.
func TestLintWithCatalog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 3000})
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE big (id int, v int)",
		"INSERT INTO big SELECT g, g % 100 FROM generate_series(1, 1000000) g",
		"CREATE TABLE mid (id int, v int)",
		"INSERT INTO mid SELECT g, g FROM generate_series(1, 50000) g",
		"CREATE INDEX mid_id ON mid (id)",
		"ANALYZE",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "0001_indexes.up.sql")
	require.NoError(t, os.WriteFile(file, []byte(`CREATE INDEX i1 ON registered_entries (ttl);
CREATE INDEX i2 ON mid (v);
CREATE INDEX i3 ON big (v);
CREATE INDEX CONCURRENTLY i4 ON mid (id);
CREATE INDEX CONCURRENTLY i5 ON nowhere (x);
CREATE INDEX CONCURRENTLY i6 ON big (nope);
CREATE INDEX CONCURRENTLY i7 ON registered_entries (spiffe_id);
`), 0o644))
	out, stderr, code := runCLI(t, nil, "migrate", "lint", "--dsn", db.DSN, "-o", "json", dir)
	assert.Equal(t, 1, code, stderr)
	var fs []lint.Finding
	require.NoError(t, json.Unmarshal([]byte(out), &fs), out)
	got := map[int]map[string]string{}
	for _, f := range fs {
		if got[f.Line] == nil {
			got[f.Line] = map[string]string{}
		}
		got[f.Line][f.Rule] = f.Severity
	}
	assert.Equal(t, lint.Note, got[1]["create-index-not-concurrently"], "registered_entries: 3,000 rows")
	assert.Equal(t, lint.Warning, got[2]["create-index-not-concurrently"], "50,000 rows")
	assert.Equal(t, lint.Error, got[3]["create-index-not-concurrently"], "1,000,000 rows")
	assert.Contains(t, got[4], "duplicate-index", "mid_id is live")
	assert.Contains(t, got[7], "spire-duplicate-index")
	assert.NotContains(t, got[7], "duplicate-index", "reported once, as SPIRE's")
	assert.Contains(t, got[5], "unknown-table")
	assert.Contains(t, got[6], "unknown-column")
	assert.NotContains(t, out+stderr, db.Cluster.Password)

	// --fail-on warning, text output, and a clean file
	clean := filepath.Join(dir, "clean.sql")
	require.NoError(t, os.WriteFile(clean, []byte("CREATE INDEX CONCURRENTLY ok ON mid (v);\n"), 0o644))
	// spiredb's runner runs a file in one transaction: without the
	// directive this file fails, and the fix names the directive
	out, stderr, code = runCLI(t, nil, "migrate", "lint", clean)
	assert.Equal(t, 1, code, out+stderr)
	assert.Contains(t, out, "concurrently-in-transaction")
	assert.Contains(t, out, "-- spiredb:no-transaction")
	require.NoError(t, os.WriteFile(clean, []byte("-- spiredb:no-transaction\nCREATE INDEX CONCURRENTLY ok ON mid (v);\n"), 0o644))
	out, stderr, code = runCLI(t, nil, "migrate", "lint", clean)
	assert.Equal(t, 0, code, out+stderr)
	_, _, code = runCLI(t, nil, "migrate", "lint", "--fail-on", "warning", "--dsn", db.DSN, clean)
	assert.Equal(t, 0, code)
	out, _, code = runCLI(t, nil, "migrate", "lint", file)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, file+":3:1 error create-index-not-concurrently")
	assert.Contains(t, out, "    fix: CREATE INDEX CONCURRENTLY")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "lint"}, "give migration files"},
		{[]string{"migrate", "lint", "--pg-version", "12", clean}, "--pg-version"},
		{[]string{"migrate", "lint", "--spire-version", "1.9", clean}, "--spire-version"},
		{[]string{"migrate", "lint", "--fail-on", "note", clean}, "--fail-on"},
		{[]string{"migrate", "lint", filepath.Join(dir, "missing.sql")}, "no such file"},
	} {
		_, stderr, code := runCLI(t, nil, tc.args...)
		assert.Equal(t, 2, code, tc.args)
		assert.Contains(t, stderr, tc.want)
	}
	bad := filepath.Join(dir, "bad.sql")
	require.NoError(t, os.WriteFile(bad, []byte("CREATE INDEX ON"), 0o644))
	_, stderr, code = runCLI(t, nil, "migrate", "lint", bad)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "parse error in "+bad)
}

// Every suggested rewrite for the lock rules, run on a real PostgreSQL
// while a writer inserts into the same table: each completes, the linter
// finds nothing that locks in it, and no insert waits as long as the
// lock_timeout.
func TestLintRewritesDoNotBlockWriters(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE w (id bigserial, a int, b text)",
		"INSERT INTO w (a, b) SELECT g % 1000 + 1, md5(g::text) FROM generate_series(1, 300000) g",
		"CREATE TABLE ref (id int PRIMARY KEY)",
		"INSERT INTO ref SELECT g FROM generate_series(1, 1000) g",
		"VACUUM ANALYZE w",
		"CREATE INDEX w_b ON w (b)",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	rewrites := map[string][]string{
		"create-index-not-concurrently":  {"CREATE INDEX CONCURRENTLY w_a ON w (a)"},
		"drop-index-not-concurrently":    {"DROP INDEX CONCURRENTLY w_a"},
		"reindex-not-concurrently":       {"REINDEX INDEX CONCURRENTLY w_b"},
		"add-column-volatile-default":    {"ALTER TABLE w ADD COLUMN u uuid", "ALTER TABLE w ALTER COLUMN u SET DEFAULT gen_random_uuid()"},
		"add-column-not-null-no-default": {"ALTER TABLE w ADD COLUMN n int NOT NULL DEFAULT 0"},
		"set-not-null": {"ALTER TABLE w ADD CONSTRAINT w_a_nn CHECK (a IS NOT NULL) NOT VALID",
			"ALTER TABLE w VALIDATE CONSTRAINT w_a_nn", "ALTER TABLE w ALTER COLUMN a SET NOT NULL"},
		"constraint-not-valid": {"ALTER TABLE w ADD CONSTRAINT w_a_ref FOREIGN KEY (a) REFERENCES ref (id) NOT VALID",
			"ALTER TABLE w VALIDATE CONSTRAINT w_a_ref"},
		"unique-without-using-index": {"CREATE UNIQUE INDEX CONCURRENTLY w_id_key ON w (id)", "ALTER TABLE w ADD CONSTRAINT w_id_key UNIQUE USING INDEX w_id_key"},
		"alter-column-type":          {"ALTER TABLE w ADD COLUMN a_big bigint"},
	}
	const lockTimeout = 2 * time.Second

	writer, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer writer.Close(ctx)
	stop := make(chan struct{})
	var mu sync.Mutex
	var worst time.Duration
	var inserts int
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := writer.Exec(ctx, "INSERT INTO w (a, b) VALUES (1, 'w')")
			d := time.Since(t0)
			mu.Lock()
			if err == nil {
				inserts++
			}
			worst = max(worst, d)
			mu.Unlock()
		}
	})
	_, err = conn.Exec(ctx, "SET lock_timeout = '2s'")
	require.NoError(t, err)
	for _, rule := range []string{"create-index-not-concurrently", "drop-index-not-concurrently", "reindex-not-concurrently",
		"add-column-volatile-default", "add-column-not-null-no-default", "set-not-null", "constraint-not-valid",
		"unique-without-using-index", "alter-column-type"} {
		// the rewrite, read as a whole, is clean for its rule
		fs, err := lint.Lint([]lint.File{{Name: rule, SQL: strings.Join(rewrites[rule], ";\n") + ";"}}, lint.Options{RunnerSetsLockTimeout: true})
		require.NoError(t, err)
		for _, f := range fs {
			assert.NotEqual(t, rule, f.Rule, "the rewrite for %s trips it: %v", rule, rewrites[rule])
		}
		// run one statement at a time (CONCURRENTLY outside transactions)
		for _, q := range rewrites[rule] {
			_, err = conn.Exec(ctx, q)
			require.NoError(t, err, "%s: %s", rule, q)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d inserts during the rewrites; the slowest took %s", inserts, worst)
	assert.Positive(t, inserts)
	assert.Less(t, worst, lockTimeout, "a rewrite blocked the writer")
}
