package lint

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func rulesOf(t *testing.T, sql string, opts Options) []string {
	t.Helper()
	fs, err := Lint([]File{{Name: "m.sql", SQL: sql}}, opts)
	require.NoError(t, err, sql)
	var out []string
	for _, f := range fs {
		out = append(out, f.Rule)
	}
	return out
}

// A file written as docs/migrations.md says: the directive on the first
// line, then several CONCURRENTLY statements. spiredb's runner runs them one
// by one outside a transaction, so nothing is in a transaction; without the
// directive the same file fails.
func TestNoTransactionDirective(t *testing.T) {
	body := `SET lock_timeout = '2s';
CREATE INDEX CONCURRENTLY IF NOT EXISTS e_hint ON registered_entries (hint);
DROP INDEX CONCURRENTLY IF EXISTS e_old;
REINDEX INDEX CONCURRENTLY e_hint;
`
	for _, opts := range []Options{{RunnerSetsLockTimeout: true}, {RunnerSetsLockTimeout: false}} {
		assert.NotContains(t, rulesOf(t, NoTransaction+"\n"+body, opts), "concurrently-in-transaction", "runner=%v", opts.RunnerSetsLockTimeout)
		assert.NotContains(t, rulesOf(t, "\n\n"+NoTransaction+" (index builds)\n"+body, opts), "concurrently-in-transaction", "after blank lines")
		assert.Contains(t, rulesOf(t, body, opts), "concurrently-in-transaction", "without the directive: runner=%v", opts.RunnerSetsLockTimeout)
		// the directive does not hide an explicit transaction
		assert.Contains(t, rulesOf(t, NoTransaction+"\nBEGIN;\n"+body+"COMMIT;\n", opts), "concurrently-in-transaction")
		// nor is it a directive anywhere but first
		assert.Contains(t, rulesOf(t, body+NoTransaction+"\n", opts), "concurrently-in-transaction")
	}
	fs, err := Lint([]File{{Name: "m.sql", SQL: "CREATE INDEX CONCURRENTLY i ON t (a)"}}, Options{RunnerSetsLockTimeout: true})
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Contains(t, fs[0].Fix, NoTransaction, "the fix names the directive")
}

// A column the same file (or an earlier file) added is known to the
// statements after it, and so is one the live table has; one named before
// it is added is still reported.
func TestColumnsAddedInTheFiles(t *testing.T) {
	runner := Options{RunnerSetsLockTimeout: true}
	sameFile := `ALTER TABLE registered_entries ADD COLUMN owner_team text;
UPDATE registered_entries SET owner_team = 'infra' WHERE id = 1;
ALTER TABLE registered_entries RENAME COLUMN owner_team TO team;
UPDATE registered_entries SET team = 'x' WHERE id = 2;`
	assert.NotContains(t, rulesOf(t, sameFile, runner), "spire-unknown-column")
	assert.NotContains(t, rulesOf(t, NoTransaction+"\nALTER TABLE registered_entries ADD COLUMN team text;\nCREATE INDEX CONCURRENTLY e_team ON registered_entries (team);", runner), "spire-unknown-column")
	before := `UPDATE registered_entries SET hint = 'x' WHERE team = 'y';
ALTER TABLE registered_entries ADD COLUMN team text;`
	assert.Contains(t, rulesOf(t, before, runner), "spire-unknown-column", "used before it is added")
	assert.Contains(t, rulesOf(t, "ALTER TABLE selectors ADD COLUMN team text; UPDATE registered_entries SET hint = 'x' WHERE team = 'y';", runner), "spire-unknown-column", "added to another table")

	fs, err := Lint([]File{
		{Name: "0001_add.up.sql", SQL: "ALTER TABLE registered_entries ADD COLUMN team text;"},
		{Name: "0002_index.up.sql", SQL: NoTransaction + "\nCREATE INDEX CONCURRENTLY e_team ON registered_entries (team);"},
	}, runner)
	require.NoError(t, err)
	for _, f := range fs {
		assert.NotEqual(t, "spire-unknown-column", f.Rule, "a column an earlier file added: %+v", f)
	}

	live := Options{RunnerSetsLockTimeout: true, Catalog: &Catalog{Tables: map[string]*Table{
		"registered_entries": {Columns: map[string]string{"id": "bigint", "team": "text"}},
	}}}
	assert.NotContains(t, rulesOf(t, "UPDATE registered_entries SET team = 'x' WHERE id = 2", live), "spire-unknown-column", "the live table has it")
}

// Every rule: a statement that must trigger it and a near miss that must not.
func TestRules(t *testing.T) {
	noRunner := Options{RunnerSetsLockTimeout: false}
	runner := Options{RunnerSetsLockTimeout: true}
	tests := []struct {
		rule, trigger, nearMiss string
		opts                    Options
	}{
		{"create-index-not-concurrently", "CREATE INDEX i ON registered_entries (hint)", "CREATE INDEX CONCURRENTLY i ON registered_entries (hint)", runner},
		{"drop-index-not-concurrently", "DROP INDEX i", "DROP INDEX CONCURRENTLY i", runner},
		{"reindex-not-concurrently", "REINDEX INDEX i", "REINDEX INDEX CONCURRENTLY i", runner},
		{"concurrently-in-transaction", "BEGIN; CREATE INDEX CONCURRENTLY i ON t (a); COMMIT;", "CREATE INDEX CONCURRENTLY i ON t (a)", noRunner},
		{"concurrently-in-transaction", "CREATE INDEX CONCURRENTLY i ON t (a)", "-- spiredb:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a)", runner},
		{"concurrently-in-transaction", "SET lock_timeout = '1s'; DROP INDEX CONCURRENTLY i;", "-- spiredb:no-transaction\nSET lock_timeout = '1s'; DROP INDEX CONCURRENTLY i;", runner},
		{"concurrently-in-transaction", "DO $$ BEGIN EXECUTE 'CREATE INDEX CONCURRENTLY i ON t (a)'; END $$", "DO $$ BEGIN EXECUTE 'CREATE INDEX i ON t (a)'; END $$", runner},
		{"add-column-volatile-default", "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid()", "ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()", runner},
		{"add-column-not-null-no-default", "ALTER TABLE t ADD COLUMN c int NOT NULL", "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0", runner},
		{"set-not-null", "ALTER TABLE t ALTER COLUMN c SET NOT NULL",
			"ALTER TABLE t ADD CONSTRAINT c_nn CHECK (c IS NOT NULL) NOT VALID; ALTER TABLE t VALIDATE CONSTRAINT c_nn; ALTER TABLE t ALTER COLUMN c SET NOT NULL;", runner},
		{"constraint-not-valid", "ALTER TABLE t ADD CONSTRAINT ck CHECK (c > 0)", "ALTER TABLE t ADD CONSTRAINT ck CHECK (c > 0) NOT VALID", runner},
		{"constraint-not-valid", "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES u (id)", "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES u (id) NOT VALID", runner},
		{"unique-without-using-index", "ALTER TABLE t ADD CONSTRAINT uq UNIQUE (c)", "ALTER TABLE t ADD CONSTRAINT uq UNIQUE USING INDEX uq_idx", runner},
		{"alter-column-type", "ALTER TABLE t ALTER COLUMN c TYPE bigint", "ALTER TABLE t ADD COLUMN c2 bigint", runner},
		{"vacuum-full", "VACUUM FULL t", "VACUUM t", runner},
		{"cluster", "CLUSTER t USING t_pkey", "ANALYZE t", runner},
		{"lock-table", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "SELECT 1 FROM t FOR UPDATE", runner},
		{"truncate", "TRUNCATE t", "DELETE FROM t WHERE id < 100", runner},
		{"refresh-concurrently-needs-unique-index", "REFRESH MATERIALIZED VIEW CONCURRENTLY v",
			"CREATE UNIQUE INDEX CONCURRENTLY v_key ON v (id)", runner},
		{"missing-lock-timeout", "ALTER TABLE t ADD COLUMN c int", "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN c int;", noRunner},
		{"update-delete-without-where", "UPDATE t SET c = 1", "UPDATE t SET c = 1 WHERE id BETWEEN 1 AND 1000", runner},
		{"update-delete-without-where", "DELETE FROM t", "DELETE FROM t WHERE id = 1", runner},
		{"batch-in-one-transaction", "DO $$ BEGIN FOR i IN 1..10 LOOP UPDATE t SET c = 1 WHERE id = i; END LOOP; END $$",
			"DO $$ BEGIN FOR i IN 1..10 LOOP PERFORM 1; END LOOP; END $$", runner},
		{"batch-in-one-transaction", "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN LOOP DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 10); EXIT WHEN NOT FOUND; END LOOP; END $$",
			"CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN LOOP DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 10); COMMIT; EXIT WHEN NOT FOUND; END LOOP; END $$", runner},
		{"offset-paging", "DO $$ DECLARE o int := 0; BEGIN LOOP PERFORM * FROM t ORDER BY id OFFSET o LIMIT 10; o := o + 10; END LOOP; END $$",
			"DO $$ DECLARE last int := 0; BEGIN LOOP PERFORM * FROM t WHERE id > last ORDER BY id LIMIT 10; END LOOP; END $$", runner},
		{"sleep-in-transaction", "BEGIN; UPDATE t SET c = 1 WHERE id < 10; SELECT pg_sleep(1); COMMIT;", "SELECT pg_sleep(1)", runner},
		{"sleep-in-transaction", "DO $$ BEGIN PERFORM pg_sleep(1); END $$", "DO $$ BEGIN PERFORM 1; END $$", runner},
		{"non-immutable-in-index", "CREATE INDEX CONCURRENTLY i ON registered_entries (expiry) WHERE expiry > extract(epoch FROM now())",
			"CREATE INDEX CONCURRENTLY i ON registered_entries (expiry) WHERE expiry <> 0", runner},
		{"non-immutable-in-index", "CREATE INDEX CONCURRENTLY i ON t (c) WHERE created_at > CURRENT_TIMESTAMP", "CREATE INDEX CONCURRENTLY i ON t (c) WHERE created_at > '2026-01-01'", runner},
		{"rename", "ALTER TABLE t RENAME COLUMN a TO b", "ALTER INDEX i RENAME TO j", runner},
		{"rename", "ALTER TABLE t RENAME TO u", "COMMENT ON TABLE t IS 'x'", runner},
		{"spire-unknown-column", "CREATE INDEX CONCURRENTLY g ON registered_entries USING gin (selectors)",
			"CREATE INDEX CONCURRENTLY g ON selectors (type, value, registered_entry_id)", runner},
		{"spire-unknown-column", "UPDATE registered_entries SET hint = '' WHERE selectors IS NULL", "UPDATE registered_entries SET hint = '' WHERE id = 1", runner},
		{"spire-expiry-type", "SELECT id FROM registered_entries WHERE expiry < now()", "SELECT id FROM registered_entries WHERE expiry <> 0 AND expiry < extract(epoch FROM now())::bigint", runner},
		{"spire-expiry-type", "DELETE FROM join_tokens WHERE expiry < CURRENT_TIMESTAMP", "DELETE FROM join_tokens WHERE expiry < 1700000000", runner},
		{"spire-duplicate-index", "CREATE INDEX CONCURRENTLY dup ON registered_entries (spiffe_id)",
			"CREATE INDEX CONCURRENTLY ok ON registered_entries (expiry) WHERE expiry <> 0", runner},
		{"spire-hot-table-lock", "ALTER TABLE selectors ADD COLUMN note text", "ALTER TABLE my_table ADD COLUMN note text", runner},
		{"pgss-renamed-column", "SELECT query, total_time FROM pg_stat_statements", "SELECT query, total_exec_time FROM pg_stat_statements", runner},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			covered[tt.rule] = true
			assert.Contains(t, rulesOf(t, tt.trigger, tt.opts), tt.rule, "must trigger: %s", tt.trigger)
			assert.NotContains(t, rulesOf(t, tt.nearMiss, tt.opts), tt.rule, "near miss: %s", tt.nearMiss)
		})
	}
	// the catalog rules are tested on a real database (integration)
	for _, r := range Rules {
		switch r.ID {
		case "unknown-table", "unknown-column", "duplicate-index":
			continue
		}
		assert.True(t, covered[r.ID], "rule %s has no table test", r.ID)
	}
}

func TestRulesWithCatalog(t *testing.T) {
	cat := &Catalog{
		Tables: map[string]*Table{
			"small": {Rows: 100, Columns: map[string]string{"id": "integer", "a": "text"}},
			"mid":   {Rows: 50_000, Columns: map[string]string{"id": "integer", "a": "text"}},
			"big":   {Rows: 2_000_000, Columns: map[string]string{"id": "integer", "a": "text"}, Indexes: []CatalogIndex{{Name: "big_a", Keys: []string{"a", "id"}}}},
		},
		MatviewUniqueIndex: map[string]bool{"v": true},
	}
	sev := func(sql string) map[string]string {
		fs, err := Lint([]File{{Name: "m.sql", SQL: sql}}, Options{Catalog: cat, RunnerSetsLockTimeout: true})
		require.NoError(t, err)
		m := map[string]string{}
		for _, f := range fs {
			m[f.Rule] = f.Severity
		}
		return m
	}
	assert.Equal(t, Note, sev("CREATE INDEX i ON small (a)")["create-index-not-concurrently"])
	assert.Equal(t, Warning, sev("CREATE INDEX i ON mid (a)")["create-index-not-concurrently"])
	assert.Equal(t, Error, sev("CREATE INDEX i ON big (id)")["create-index-not-concurrently"])
	assert.Contains(t, sev("CREATE INDEX CONCURRENTLY i ON big (a)"), "duplicate-index")
	assert.Contains(t, sev("CREATE INDEX CONCURRENTLY i ON nowhere (a)"), "unknown-table")
	assert.Contains(t, sev("CREATE INDEX CONCURRENTLY i ON big (b)"), "unknown-column")
	assert.NotContains(t, sev("REFRESH MATERIALIZED VIEW CONCURRENTLY v"), "refresh-concurrently-needs-unique-index")
	// a table created in the same migrations is empty
	created := sev("CREATE TABLE n (id int); ALTER TABLE n ALTER COLUMN id TYPE bigint; CREATE INDEX i ON n (id); ALTER TABLE n ADD COLUMN u uuid DEFAULT gen_random_uuid();")
	assert.NotContains(t, created, "create-index-not-concurrently")
	assert.NotContains(t, created, "alter-column-type")
	assert.Equal(t, Note, created["add-column-volatile-default"])
}

func TestIgnoreComment(t *testing.T) {
	sql := "-- spiredb:ignore truncate emptied on purpose, the table is unused\nTRUNCATE t;\nTRUNCATE u;\n"
	fs, err := Lint([]File{{Name: "m.sql", SQL: sql}}, Options{RunnerSetsLockTimeout: true})
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Equal(t, 3, fs[0].Line)
	assert.Equal(t, 1, fs[0].Column)
}

func TestPositionsAndParseErrors(t *testing.T) {
	fs, err := Lint([]File{{Name: "a.sql", SQL: "-- header\n\n  /* x */ TRUNCATE t;\nSELECT 1;\n    VACUUM FULL t;"}}, Options{RunnerSetsLockTimeout: true})
	require.NoError(t, err)
	require.Len(t, fs, 2)
	assert.Equal(t, [2]int{3, 11}, [2]int{fs[0].Line, fs[0].Column})
	assert.Equal(t, [2]int{5, 5}, [2]int{fs[1].Line, fs[1].Column})

	_, err = Lint([]File{{Name: "bad.sql", SQL: "CREATE INDEX ON"}}, Options{})
	var pe *ParseError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "bad.sql", pe.File)
}

// Golden files: the text and JSON output of testdata/golden.sql.
func TestGolden(t *testing.T) {
	sql, err := os.ReadFile(filepath.Join("testdata", "golden.sql"))
	require.NoError(t, err)
	fs, err := Lint([]File{{Name: "golden.sql", SQL: string(sql)}}, Options{PGVersion: 15, RunnerSetsLockTimeout: false})
	require.NoError(t, err)
	var text strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&text, "%s:%d:%d %s %s %s\n    fix: %s\n", f.File, f.Line, f.Column, f.Severity, f.Rule, f.Message, f.Fix)
	}
	js, err := json.MarshalIndent(fs, "", "  ")
	require.NoError(t, err)
	for name, got := range map[string]string{"golden.txt": text.String(), "golden.json": string(js) + "\n"} {
		path := filepath.Join("testdata", name)
		if *update {
			require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		}
		want, err := os.ReadFile(path)
		require.NoError(t, err, "run go test ./migrations/lint -update to create it")
		assert.Equal(t, string(want), got, name)
	}
}

func FuzzLint(f *testing.F) {
	for _, s := range []string{"CREATE INDEX i ON t (a)", "DO $$ BEGIN LOOP UPDATE t SET a = 1; END LOOP; END $$", "BEGIN; TRUNCATE t; COMMIT;",
		"-- spiredb:ignore truncate x\nTRUNCATE t", "SELECT total_time FROM pg_stat_statements", "ALTER TABLE t ADD COLUMN c int NOT NULL"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		fs, err := Lint([]File{{Name: "f.sql", SQL: sql}}, Options{})
		if err != nil {
			return
		}
		for _, x := range fs {
			if x.Line < 1 || x.Column < 1 || x.Rule == "" || SeverityRank(x.Severity) == 0 {
				t.Fatalf("bad finding %+v for %q", x, sql)
			}
		}
	})
}

// corpus makes n mixed statements (DDL safe and unsafe, DML, DO blocks,
// SPIRE tables and others) in files of 100.
func corpus(n int) []File {
	templates := []string{
		"CREATE INDEX i{i} ON t{i} (a, b)",
		"CREATE INDEX CONCURRENTLY i{i} ON registered_entries (hint)",
		"ALTER TABLE t{i} ADD COLUMN c{i} int NOT NULL DEFAULT 0",
		"ALTER TABLE t{i} ADD COLUMN u{i} uuid DEFAULT gen_random_uuid()",
		"ALTER TABLE t{i} ALTER COLUMN c SET NOT NULL",
		"ALTER TABLE t{i} ADD CONSTRAINT ck{i} CHECK (a > 0) NOT VALID",
		"UPDATE t{i} SET a = a + 1 WHERE id BETWEEN {i} AND {i} + 1000",
		"DELETE FROM registered_entries_events WHERE created_at < now() - interval '12 hours'",
		"SELECT id, spiffe_id FROM registered_entries WHERE expiry <> 0 AND expiry < {i}",
		"DO $$ BEGIN FOR i IN 1..10 LOOP UPDATE t{i} SET a = 1 WHERE id = i; END LOOP; END $$",
		"DROP INDEX CONCURRENTLY IF EXISTS i{i}",
		"INSERT INTO t{i} (a, b) VALUES ({i}, 'x')",
		"CREATE TABLE n{i} (id bigserial PRIMARY KEY, a int, b text)",
		"REFRESH MATERIALIZED VIEW CONCURRENTLY v{i}",
		"SELECT query, total_exec_time FROM pg_stat_statements ORDER BY 2 DESC LIMIT 10",
		"ALTER TABLE selectors ALTER COLUMN value TYPE text",
		"CREATE INDEX CONCURRENTLY e{i} ON registered_entries (expiry) WHERE expiry <> 0",
		"VACUUM ANALYZE t{i}",
		"SET lock_timeout = '2s'",
		"COMMENT ON TABLE t{i} IS 'migration {i}'",
	}
	var files []File
	var b strings.Builder
	for i := range n {
		b.WriteString(strings.ReplaceAll(templates[i%len(templates)], "{i}", strconv.Itoa(i)) + ";\n")
		if (i+1)%100 == 0 || i == n-1 {
			files = append(files, File{Name: fmt.Sprintf("%04d.up.sql", len(files)+1), SQL: b.String()})
			b.Reset()
		}
	}
	return files
}

// BenchmarkLint lints 10,000 mixed statements (100 files); the target is
// at least 5,000 statements/s.
func BenchmarkLint(b *testing.B) {
	files := corpus(10000)
	if _, err := Lint(files, Options{}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := Lint(files, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(10000*float64(b.N)/b.Elapsed().Seconds(), "stmts/s")
}
