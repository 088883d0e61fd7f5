package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/tcpproxy"
	"github.com/spiredb/spiredb/migrations"
	"github.com/spiredb/spiredb/migrations/backfill"
	"github.com/spiredb/spiredb/replication"
)

func writeMigrations(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
	return dir
}

// migratedDB is a fresh database with spiredb's migrations up and sql run.
func migratedDB(t *testing.T, sql string) *pgtest.DB {
	t.Helper()
	db := pgtest.NewDB(t)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	_, err := db.Pool.Exec(context.Background(), sql)
	require.NoError(t, err)
	return db
}

func migrateStatus(t *testing.T, dsn string, args ...string) (migrations.Status, int) {
	t.Helper()
	out, stderr, code := runCLI(t, nil, append([]string{"migrate", "status", "--dsn", dsn, "-o", "json"}, args...)...)
	require.Contains(t, []int{0, 1}, code, stderr)
	var st migrations.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	return st, code
}

// spiredb's own migrations: up, status, down, up again.
func TestMigrateOwnMigrations(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	st, code := migrateStatus(t, db.DSN)
	assert.Equal(t, 0, code)
	assert.Equal(t, "spiredb.schema_migrations", st.Table)
	assert.Equal(t, []int64{1, 2}, st.Applied)
	assert.Empty(t, st.Pending)
	var ok bool
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT to_regclass('spiredb.backfill_jobs') IS NOT NULL AND to_regclass('public.schema_migrations') IS NULL").Scan(&ok))
	assert.True(t, ok, "the jobs table exists, and nothing went to public")

	out, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "nothing to migrate")
	_, stderr, code = runCLI(t, nil, "migrate", "down", "2", "--dsn", db.DSN, "--yes")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT to_regclass('spiredb.backfill_jobs') IS NULL").Scan(&ok))
	assert.True(t, ok)
	st, _ = migrateStatus(t, db.DSN)
	assert.Equal(t, []int64{1, 2}, st.Pending)
	_, stderr, code = runCLI(t, nil, "migrate", "up", "1", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	st, _ = migrateStatus(t, db.DSN)
	assert.Equal(t, int64(1), st.Version)
}

// Two runs at once: one applies, the other waits and finds nothing
// pending; with a short --lock-wait the second fails naming the holder.
func TestMigrateConcurrentRuns(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	dir := writeMigrations(t, map[string]string{
		"0001_slow.up.sql":   "CREATE TABLE slow (id int); SELECT pg_sleep(1.5);",
		"0001_slow.down.sql": "DROP TABLE slow;",
		"0002_more.up.sql":   "ALTER TABLE slow ADD COLUMN v text;",
		"0002_more.down.sql": "ALTER TABLE slow DROP COLUMN v;",
	})
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]string, 2)
	codes := make([]int, 2)
	for i := range 2 {
		wg.Go(func() {
			outs[i], errs[i], codes[i] = runCLI(t, nil, "migrate", "up", "--source", "file://"+dir, "--dsn", db.DSN, "-o", "json")
		})
	}
	wg.Wait()
	require.Equal(t, []int{0, 0}, codes, "%v %v", outs, errs)
	var a, b []migrations.Applied
	require.NoError(t, json.Unmarshal([]byte(outs[0]), &a))
	require.NoError(t, json.Unmarshal([]byte(outs[1]), &b))
	assert.Equal(t, 2, len(a)+len(b), "one run applied both, the other found nothing pending: %v %v", a, b)
	assert.True(t, len(a) == 0 || len(b) == 0)
	st, _ := migrateStatus(t, db.DSN, "--source", dir)
	assert.Equal(t, int64(2), st.Version)
	assert.Equal(t, "spiredb.operator_migrations", st.Table)

	// a long migration holds the lock; a run with a short wait names it
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0003_slower.up.sql"), []byte("SELECT pg_sleep(3);"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0003_slower.down.sql"), []byte("SELECT 1;"), 0o644))
	ctx := context.Background()
	first := exec.CommandContext(ctx, spiredbCLI(t), "migrate", "up", "--source", dir, "--dsn", db.DSN)
	var firstOut bytes.Buffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	require.NoError(t, first.Start())
	waitTrue(t, db.DSN, "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()")
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--source", dir, "--dsn", db.DSN, "--lock-wait", "300ms")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "holds the migration lock (pid ")
	assert.Contains(t, stderr, `application_name "spiredb"`)
	require.NoError(t, first.Wait(), firstOut.String())
}

// A migration that fails midway leaves nothing of itself and no dirty
// version; a no-transaction file that fails midway says which statement.
func TestMigrateFailureLeavesNoTrace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	dir := writeMigrations(t, map[string]string{
		"0001_base.up.sql":     "CREATE TABLE base (id int PRIMARY KEY);",
		"0001_base.down.sql":   "DROP TABLE base;",
		"0002_broken.up.sql":   "CREATE TABLE partial (id int);\nINSERT INTO base VALUES (1);\nSELECT 1 / 0;\n",
		"0002_broken.down.sql": "DROP TABLE IF EXISTS partial;",
	})
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--source", dir, "--dsn", db.DSN)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "migration 2")
	assert.Contains(t, stderr, "division by zero")
	assert.Contains(t, stderr, "rolled back")
	var partial bool
	var rows int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT to_regclass('partial') IS NOT NULL, (SELECT count(*) FROM base)").Scan(&partial, &rows))
	assert.False(t, partial, "nothing of the failed migration stays")
	assert.Zero(t, rows)
	st, code := migrateStatus(t, db.DSN, "--source", dir)
	assert.Equal(t, 1, code, "status exits 1 while a failure is recorded")
	assert.Equal(t, int64(1), st.Version)
	assert.False(t, st.Dirty)
	require.Len(t, st.Failures, 1)
	assert.Contains(t, st.Failures[0].Error, "division by zero")

	// fixed: it applies, and the failure is cleared
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0002_broken.up.sql"), []byte("CREATE TABLE partial (id int);\n"), 0o644))
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--source", dir, "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	st, code = migrateStatus(t, db.DSN, "--source", dir)
	assert.Equal(t, 0, code)
	assert.Equal(t, int64(2), st.Version)
	assert.Empty(t, st.Failures)

	// a no-transaction file: statements 1-2 run, 3 fails
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0003_indexes.up.sql"), []byte(migrations.NoTransaction+`
CREATE INDEX CONCURRENTLY partial_id ON partial (id);
CREATE INDEX CONCURRENTLY base_id2 ON base (id);
CREATE INDEX CONCURRENTLY nope_x ON nope (x);
`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0003_indexes.down.sql"), []byte("DROP INDEX IF EXISTS partial_id;"), 0o644))
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--source", dir, "--dsn", db.DSN)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "at statement 3")
	out, _, code := runCLI(t, nil, "migrate", "status", "--source", dir, "--dsn", db.DSN)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "statement 3: CREATE INDEX CONCURRENTLY nope_x")
	assert.Contains(t, out, "statements 1 to 2 were applied")
	st, _ = migrateStatus(t, db.DSN, "--source", dir)
	assert.Equal(t, int64(2), st.Version)

	// a file with its own COMMIT would end the runner's transaction early
	dir3 := writeMigrations(t, map[string]string{"0001_own_tx.up.sql": "BEGIN; CREATE TABLE own_tx (id int); COMMIT;", "0001_own_tx.down.sql": "SELECT 1;"})
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--source", dir3, "--version-table", "third", "--dsn", db.DSN)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "its own transaction control")
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT to_regclass('own_tx') IS NOT NULL").Scan(&partial))
	assert.False(t, partial)

	// a migration that meets a lock is rolled back and retried
	dir2 := writeMigrations(t, map[string]string{"0001_alter.up.sql": "ALTER TABLE base ADD COLUMN v text;", "0001_alter.down.sql": "ALTER TABLE base DROP COLUMN v;"})
	holder, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE base IN ACCESS SHARE MODE")
	require.NoError(t, err)
	go func() { time.Sleep(700 * time.Millisecond); _ = tx.Rollback(ctx) }()
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--source", dir2, "--version-table", "other", "--dsn", db.DSN, "--lock-timeout", "200ms", "--log-level", "warn")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "retrying")
}

// The zero-downtime step helpers are idempotent.
func TestMigrationSteps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE TABLE s (id int PRIMARY KEY, a int, b int); INSERT INTO s SELECT g, g, g FROM generate_series(1, 1000) g")
	require.NoError(t, err)
	for range 2 {
		require.NoError(t, migrations.AddNotNull(ctx, conn, "s", "a"))
		require.NoError(t, migrations.AddConstraint(ctx, conn, "public.s", "b_pos", "CHECK (b > 0)"))
		require.NoError(t, migrations.CreateIndexConcurrently(ctx, conn, "public", "s_b", "ON s (b)", false))
	}
	var notNull, valid bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT attnotnull FROM pg_attribute WHERE attrelid = 's'::regclass AND attname = 'a'),
		(SELECT convalidated FROM pg_constraint WHERE conname = 'b_pos')`).Scan(&notNull, &valid))
	assert.True(t, notNull)
	assert.True(t, valid)
	// an INVALID leftover (a failed unique build) is dropped and rebuilt
	_, err = conn.Exec(ctx, "UPDATE s SET b = 1 WHERE id < 3")
	require.NoError(t, err)
	assert.Error(t, migrations.CreateIndexConcurrently(ctx, conn, "public", "s_b_key", "ON s (b)", true))
	var leftover bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT to_regclass('s_b_key') IS NOT NULL").Scan(&leftover))
	assert.False(t, leftover, "the failed build's INVALID index was dropped")
	_, err = conn.Exec(ctx, "UPDATE s SET b = id")
	require.NoError(t, err)
	require.NoError(t, migrations.CreateIndexConcurrently(ctx, conn, "public", "s_b_key", "ON s (b)", true))
	require.NoError(t, migrations.DropIndexConcurrently(ctx, conn, "public", "s_b_key"))
	require.NoError(t, migrations.DropIndexConcurrently(ctx, conn, "public", "s_b_key"))
}

// A backfill of 1,000,000 rows while writers update and insert rows of the
// same table, killed with SIGKILL at random moments and resumed: every row
// that existed at the start is updated exactly once, rows inserted during
// the run are untouched, no writer fails.
func TestBackfillExactlyOnceUnderWritersAndKills(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	const rows = 1_000_000
	for _, q := range []string{
		"CREATE TABLE bf (id bigserial PRIMARY KEY, n int NOT NULL DEFAULT 0, v text)",
		fmt.Sprintf("INSERT INTO bf (v) SELECT md5(g::text) FROM generate_series(1, %d) g", rows),
		"VACUUM ANALYZE bf",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err)
	}

	stop := make(chan struct{})
	var writerErrs, writes atomic.Int64
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			c, err := pgx.Connect(ctx, db.DSN)
			if err != nil {
				writerErrs.Add(1)
				return
			}
			defer c.Close(context.Background())
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if r.IntN(4) == 0 {
					_, err = c.Exec(ctx, "INSERT INTO bf (v) VALUES ('new')")
				} else {
					_, err = c.Exec(ctx, "UPDATE bf SET v = md5(random()::text) WHERE id = $1", 1+r.Int64N(rows))
				}
				if err != nil {
					writerErrs.Add(1)
					t.Logf("writer: %v", err)
				}
				writes.Add(1)
			}
		})
	}

	args := []string{"migrate", "backfill", "--dsn", db.DSN, "--table", "bf", "--set", "n = n + 1", "--name", "bump", "--target-batch-duration", "100ms"}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	progressOf := func() (int64, string) {
		var done int64
		var state string
		err := conn.QueryRow(ctx, "SELECT rows_done, state FROM spiredb.backfill_jobs WHERE name = 'bump'").Scan(&done, &state)
		if err != nil {
			return -1, ""
		}
		return done, state
	}
	kills := 0
	for kills < 5 {
		cmd := exec.CommandContext(ctx, spiredbCLI(t), args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		before, _ := progressOf()
		// a random moment once the job has moved on
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if done, _ := progressOf(); done > before || len(exited) > 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Duration(r.Int64N(int64(400 * time.Millisecond))))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := <-exited
		done, state := progressOf()
		t.Logf("kill %d: %d rows done, %s (%v)", kills, done, state, err)
		if state == backfill.Done {
			break
		}
		kills++
		// the killed session must be gone before a resume (its lock)
		waitTrue(t, db.DSN, `SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database()
			AND pid <> pg_backend_pid() AND application_name = 'spiredb'`)
		args = []string{"migrate", "backfill", "--dsn", db.DSN, "--resume", "bump", "--target-batch-duration", "100ms"}
	}
	out, stderr, code := runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--resume", "bump", "-o", "json")
	require.Equal(t, 0, code, out+stderr)
	close(stop)
	wg.Wait()
	assert.GreaterOrEqual(t, kills, 5, "the job finished before five kills: the test proved less")
	assert.Zero(t, writerErrs.Load(), "writers failed")
	assert.Positive(t, writes.Load())

	var job backfill.Job
	require.NoError(t, json.Unmarshal([]byte(out), &job), out)
	assert.Equal(t, backfill.Done, job.State)
	// the job's range ends at the largest id when it started (writers
	// had inserted a few rows before that)
	require.Len(t, job.MaxKey, 1)
	var maxAtStart int64
	_, err = fmt.Sscan(job.MaxKey[0], &maxAtStart)
	require.NoError(t, err)
	require.GreaterOrEqual(t, maxAtStart, int64(rows))
	assert.EqualValues(t, maxAtStart, job.RowsDone, "rows_done counts each row once")
	var wrong, newRows, newTouched int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE id <= $1 AND n <> 1),
		count(*) FILTER (WHERE id > $1), count(*) FILTER (WHERE id > $1 AND n <> 0) FROM bf`, maxAtStart).Scan(&wrong, &newRows, &newTouched))
	assert.Zero(t, wrong, "every row that existed at the start updated exactly once")
	assert.Positive(t, newRows, "writers inserted during the run")
	assert.Zero(t, newTouched, "rows inserted during the run are untouched")

	// status, a cancel of a finished job, faults
	out, _, code = runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--status")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "bump: done on public.bf SET n = n + 1; ")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--table", "bf", "--set", "n = n + 1", "--name", "bump"}, 2, "already exists"},
		{[]string{"--cancel", "bump"}, 1, "nothing to cancel"},
		{[]string{"--table", "bf", "--set", "n = 1; DROP TABLE bf"}, 2, "assignments only"},
		{[]string{"--table", "bf", "--set", "n = 1", "--resume", "bump"}, 2, "give one of"},
		{[]string{"--table", "nope", "--set", "n = 1"}, 2, `no table "nope"`},
		{[]string{"--table", "bf", "--set", "n = 1", "--batch-size", "0"}, 2, "--batch-size"},
		{[]string{"--table", "bf", "--set", "n = 1", "--max-replica-lag", "lots"}, 2, "--max-replica-lag"},
		{[]string{"--status=nope"}, 2, "no backfill job"},
	} {
		_, stderr, code := runCLI(t, nil, append([]string{"migrate", "backfill", "--dsn", db.DSN}, tc.args...)...)
		assert.Equal(t, tc.code, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, tc.args)
	}
	// a dry run changes nothing
	out, stderr, code = runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--table", "bf", "--set", "n = n + 1", "--where", "v = 'new'", "--dry-run")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "rows to update")
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM bf WHERE n > 1").Scan(&wrong))
	assert.Zero(t, wrong)
}

// A job cancelled while it runs stops after its batch and resumes later.
func TestBackfillCancelAndResume(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := migratedDB(t, "CREATE TABLE c (a int, b int, n int DEFAULT 0, PRIMARY KEY (a, b)); INSERT INTO c (a, b) SELECT g / 100, g % 100 FROM generate_series(1, 200000) g")
	cmd := exec.CommandContext(ctx, spiredbCLI(t), "migrate", "backfill", "--dsn", db.DSN, "--table", "c", "--set", "n = n + 1",
		"--name", "slow", "--batch-size", "500", "--where", "b % 2 = 0 OR pg_sleep(0) IS NOT NULL", "--allow-volatile")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	waitTrue(t, db.DSN, "SELECT coalesce((SELECT batches > 3 FROM spiredb.backfill_jobs WHERE name = 'slow'), false)")
	_, stderr, code := runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--cancel", "slow")
	require.Equal(t, 0, code, stderr)
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, out.String())
	assert.Equal(t, 1, ee.ExitCode())
	var state string
	var done int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT state, rows_done FROM spiredb.backfill_jobs WHERE name = 'slow'").Scan(&state, &done))
	assert.Equal(t, backfill.Cancelled, state)
	assert.Less(t, done, int64(200000))
	// the stored clauses are checked again: pg_sleep needs --allow-volatile
	// on the resume too
	_, stderr, code = runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--resume", "slow")
	require.Equal(t, 2, code, stderr)
	require.Contains(t, stderr, "pg_sleep")
	_, stderr, code = runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--resume", "slow", "--allow-volatile")
	require.Equal(t, 0, code, stderr)
	var wrong int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM c WHERE n <> 1").Scan(&wrong))
	assert.Zero(t, wrong, "composite key: every row exactly once across the cancel")
}

// TestBackfillMaxImpactYieldsToTheWorkload: under --max-impact the job
// rests when the live workload's statements on the table get slower than
// with the job idle. The workload here updates the first row of the
// job's next batch, over and over: alone it takes a fraction of a
// millisecond, and while a batch runs it waits for the batch's commit —
// slower because of the job, which the governor must answer with rests,
// and say why in its progress.
func TestBackfillMaxImpactYieldsToTheWorkload(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := migratedDB(t, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
		CREATE TABLE impact_entries (id int PRIMARY KEY, n int DEFAULT 0);
		INSERT INTO impact_entries (id) SELECT g FROM generate_series(1, 2000000) g`)

	var next atomic.Int64 // the first row of the job's next batch
	next.Store(1)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() {
		conn, err := pgx.Connect(ctx, db.DSN)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		for ctx.Err() == nil {
			_, _ = conn.Exec(ctx, "UPDATE impact_entries SET n = n WHERE id = $1", next.Load())
		}
	})
	time.Sleep(300 * time.Millisecond) // the workload's statement is known before the job starts

	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var mu sync.Mutex
	var seen []backfill.Progress
	jctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		_, err := backfill.Start(jctx, conn, backfill.Spec{Name: "gentle", Table: "impact_entries", Set: "n = n + 1"},
			backfill.Options{MaxImpact: 0.3, Progress: func(p backfill.Progress) {
				next.Store(p.Rows + 1)
				mu.Lock()
				seen = append(seen, p)
				mu.Unlock()
			}})
		done <- err
	}()
	var maxRest, maxImpact float64
	cause := ""
	// the rest reaches a batch's length in about ten windows of a second;
	// beside the package's heavier tests a window can take several (a run
	// of the whole package measured 0.81× after 40 s: the loop ends as
	// soon as it is reached, so the bound costs nothing when it is quick)
	deadline := time.Now().Add(100 * time.Second)
	for time.Now().Before(deadline) && maxRest < 1 {
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		for _, p := range seen {
			if p.Impact > maxImpact {
				maxImpact, cause = p.Impact, p.ImpactCause
			}
			maxRest = max(maxRest, p.Rest)
		}
		mu.Unlock()
	}
	t.Logf("rest %.2f× batches, impact %+.0f%%: %s", maxRest, 100*maxImpact, cause)
	stop()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.GreaterOrEqual(t, maxRest, 1.0, "the job rests at least a batch's duration after each batch")
	assert.Greater(t, maxImpact, 0.5, "the workload's calls waited for the batches")
	assert.Contains(t, cause, "impact_entries's statements")

	// the job's own statements are not the workload: its checkpoint is intact
	var rows int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT rows_done FROM spiredb.backfill_jobs WHERE name = 'gentle'").Scan(&rows))
	var changed int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM impact_entries WHERE n = 1").Scan(&changed))
	assert.Equal(t, rows, changed)
	assert.Less(t, rows, int64(2000000), "the governor slowed the job down before it finished")
	// the governor tells the job's statements from the workload's by the
	// marker pg_stat_statements keeps at the start of their texts
	var own, unmarked int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE query NOT LIKE '/* spiredb */%')
		FROM pg_stat_statements WHERE query LIKE '%UPDATE%impact_entries%SET n = n +%'`).Scan(&own, &unmarked))
	assert.Positive(t, own)
	assert.Zero(t, unmarked)

	// flags
	for _, args := range [][]string{
		{"--max-impact", "30%", "--batch-size", "500"},
		{"--max-impact", "lots"},
		{"--max-impact", "0"},
	} {
		_, stderr, code := runCLI(t, nil, append([]string{"migrate", "backfill", "--dsn", db.DSN, "--table", "impact_entries", "--set", "n = 0"}, args...)...)
		assert.Equal(t, 2, code, "%v: %s", args, stderr)
		assert.Contains(t, stderr, "--max-impact")
	}
}

// TestBackfillPausesWhileSessionsWait: with PauseOnLockWaits (and under
// --max-impact) the job changes nothing while another session waits for a
// lock on the table — it would queue behind that session and everything
// after it would queue behind the job — and goes on when the wait ends.
func TestBackfillPausesWhileSessionsWait(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := migratedDB(t, "CREATE TABLE pw (id int PRIMARY KEY, n int DEFAULT 0); INSERT INTO pw (id) SELECT g FROM generate_series(1, 5000) g")

	// a writer holds a row; a migration's LOCK TABLE waits behind it
	holder, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, "UPDATE pw SET n = n WHERE id = 1")
	require.NoError(t, err)
	waiter, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = waiter.Rollback(ctx) }()
	_, err = waiter.Exec(ctx, "SET LOCAL lock_timeout = 0") // it waits as long as it takes
	require.NoError(t, err)
	locked := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "LOCK TABLE pw IN SHARE MODE")
		locked <- err
	}()
	require.Eventually(t, func() bool {
		var n int
		_ = db.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE relation = 'pw'::regclass AND NOT granted").Scan(&n)
		return n > 0
	}, 10*time.Second, 20*time.Millisecond)

	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var paused atomic.Value
	paused.Store("")
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		_, err := backfill.Start(ctx, conn, backfill.Spec{Name: "pw", Table: "pw", Set: "n = n + 1"}, backfill.Options{
			BatchSize: 500, PauseOnLockWaits: true, LockTimeout: 200 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			Progress: func(p backfill.Progress) {
				if p.Paused != "" {
					paused.Store(p.Paused)
				}
			}})
		done <- err
	}()
	require.Eventually(t, func() bool { return paused.Load().(string) != "" }, 10*time.Second, 20*time.Millisecond)
	assert.Contains(t, paused.Load().(string), "wait for locks on public.pw")
	time.Sleep(500 * time.Millisecond) // two more looks: still paused, nothing changed
	var changed int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM pw WHERE n <> 0").Scan(&changed))
	assert.Zero(t, changed, "nothing changes while a session waits")
	assert.Equal(t, 1, strings.Count(logs.String(), "backfill paused"),
		"a pause is logged when it begins, not at every look (four a second): %s", logs.String())
	select {
	case err := <-done:
		t.Fatalf("the job ended while paused: %v", err)
	default:
	}

	// a paused job hears a cancel (an operator's way out of a long wait)
	cc, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer cc.Close(ctx)
	_, err = backfill.Cancel(ctx, cc, "pw")
	require.NoError(t, err)
	select {
	case err := <-done:
		require.ErrorIs(t, err, backfill.ErrCancelled)
	case <-time.After(10 * time.Second):
		t.Fatal("the paused job did not stop when cancelled")
	}

	// the wait ends: the resumed job goes on to the end
	require.NoError(t, holder.Commit(ctx))
	require.NoError(t, <-locked)
	require.NoError(t, waiter.Commit(ctx))
	job, err := backfill.Resume(ctx, conn, "pw", backfill.Options{BatchSize: 500, PauseOnLockWaits: true})
	require.NoError(t, err)
	assert.Equal(t, backfill.Done, job.State)
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM pw WHERE n <> 1").Scan(&changed))
	assert.Zero(t, changed)
}

// TestBackfillBatchRoundTrips: a batch's statements go to the server in
// two pipelined round trips. One round trip each (eight) was most of a
// short batch's fixed cost: 100-row batches ran 1.7× as long per row as
// 1,000-row ones.
func TestBackfillBatchRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := migratedDB(t, "CREATE TABLE rt (id int PRIMARY KEY, n int DEFAULT 0); INSERT INTO rt (id) SELECT g FROM generate_series(1, 20000) g")
	cfg, err := pgx.ParseConfig(db.DSN)
	require.NoError(t, err)
	proxy, err := tcpproxy.Start(net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	require.NoError(t, err)
	t.Cleanup(proxy.Close)
	cfg.Host, cfg.Port, cfg.Fallbacks = "127.0.0.1", uint16(proxy.Port()), nil
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(ctx)

	// the checks for room (lock waits, a standby's lag, both under
	// --max-impact) ride the batch's first round trip rather than adding one
	for i, opts := range []backfill.Options{
		{BatchSize: 100},
		{BatchSize: 100, PauseOnLockWaits: true, MaxReplicaLag: replication.Limit{Bytes: 1 << 30, Duration: time.Minute}},
	} {
		before := proxy.ClientSends()
		job, err := backfill.Start(ctx, conn, backfill.Spec{Name: fmt.Sprintf("rt%d", i), Table: "rt", Set: "n = n + 1"}, opts)
		require.NoError(t, err)
		sends := proxy.ClientSends() - before
		require.Equal(t, backfill.Done, job.State)
		require.EqualValues(t, 20000, job.RowsDone)
		require.GreaterOrEqual(t, job.Batches, int64(200))
		perBatch := float64(sends) / float64(job.Batches)
		t.Logf("%+v: %d sends for %d batches: %.2f per batch", opts, sends, job.Batches, perBatch)
		assert.LessOrEqual(t, perBatch, 2.5, "two round trips a batch, and the job's few before the first")
		var wrong int64
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM rt WHERE n <> $1", i+1).Scan(&wrong))
		assert.Zero(t, wrong)
	}
}

// syncBuffer is a bytes.Buffer a logger and the test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestMigrationSetsNeverShareAVersionTable: golang-migrate's default table
// is schema_migrations, and spiredb keeps its own migrations' version in
// spiredb.schema_migrations. An operator's set pointed there skipped its
// own first migrations and moved spiredb's version to one spiredb does
// not have. Each set keeps a table of its own; spiredb's bookkeeping
// tables and any table not shaped like a version table are refused, and
// nothing is written.
func TestMigrationSetsNeverShareAVersionTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	_, err := db.Pool.Exec(ctx, "CREATE TABLE spiredb.audit (id int, note text); INSERT INTO spiredb.audit VALUES (1, 'kept')")
	require.NoError(t, err)
	dir := writeMigrations(t, map[string]string{
		"1_a.up.sql": "CREATE TABLE app_a (id int);", "1_a.down.sql": "DROP TABLE app_a;",
		"2_b.up.sql": "CREATE TABLE app_b (id int);", "2_b.down.sql": "DROP TABLE app_b;",
		"3_c.up.sql": "CREATE TABLE app_c (id int);", "3_c.down.sql": "DROP TABLE app_c;",
	})
	state := func() string {
		var s string
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT (SELECT string_agg(version || '/' || dirty, ',') FROM spiredb.schema_migrations)
			|| ' jobs=' || (SELECT count(*) FROM spiredb.backfill_jobs) || ' audit=' || (SELECT count(*) FROM spiredb.audit)
			|| ' app=' || (SELECT count(*) FROM pg_class WHERE relname LIKE 'app\_%')`).Scan(&s))
		return s
	}
	before := state()
	for _, args := range [][]string{
		{"--source", dir, "--version-table", "schema_migrations"},
		{"--source", dir, "--version-table", "backfill_jobs"},
		{"--source", dir, "--version-table", "migration_runs"},
		{"--source", dir, "--version-table", "audit"},
		{"--version-table", "operator_migrations"},
	} {
		for _, verb := range []string{"up", "status"} {
			_, stderr, code := runCLI(t, nil, append([]string{"migrate", verb, "--dsn", db.DSN}, args...)...)
			require.Equal(t, 2, code, "migrate %s %v: %s", verb, args, stderr)
			require.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, stderr)
		}
	}
	require.Equal(t, before, state(), "a refused run wrote")

	// its own table: every migration of the set, spiredb's untouched
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--dsn", db.DSN, "--source", dir)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, strings.Replace(before, "app=0", "app=3", 1), state())
}
