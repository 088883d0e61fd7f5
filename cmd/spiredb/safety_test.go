package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/pgtest"
)

// TestBackfillExpressionsStayInTheirBounds: --where and --set cannot close
// the statement spiredb wraps around them, carry placeholders or
// comments, or call volatile functions without --allow-volatile; each is
// a usage error (exit 2) and no row changes.
func TestBackfillExpressionsStayInTheirBounds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	_, errOut, code := runArgs(t, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, exitOK, code, errOut)
	_, err := db.Pool.Exec(ctx, "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO t (id) SELECT generate_series(1, 300)")
	require.NoError(t, err)
	sumV := func() (n int64) {
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT sum(v) FROM t").Scan(&n))
		return n
	}
	for i, bad := range [][]string{
		{"--set", "v = 1", "--where", "true) OR (true"},
		{"--set", "v = 100 WHERE $1::text IS NOT NULL --"},
		{"--set", "v = 1", "--where", "id < 3 -- the rest"},
		{"--set", "v = 1 /* x */"},
		{"--set", "v = pg_terminate_backend(pg_backend_pid())::int"},
		{"--set", "v = 1", "--where", "pg_sleep(0) IS NOT NULL"},
		{"--set", "v = 1", "--where", "id = $1"},
		{"--set", "v = (WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d)::int"},
		{"--table", "no_such_table", "--set", "v = 1"},
	} {
		args := append([]string{"migrate", "backfill", "--dsn", db.DSN, "--name", fmt.Sprintf("bad-%d", i)}, bad...)
		if !strings.Contains(strings.Join(bad, " "), "--table") {
			args = append(args, "--table", "t")
		}
		for _, dry := range []bool{false, true} {
			a := args
			if dry {
				a = append(a, "--dry-run")
			}
			out, errOut, code := runArgs(t, a...)
			require.Equal(t, exitUsage, code, "%v: %s %s", bad, out, errOut)
			require.Equal(t, 0, strings.Count(strings.TrimSpace(errOut), "\n"), "one line: %q", errOut)
		}
		require.Zero(t, sumV(), "%v changed rows", bad)
	}
	var rows int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&rows))
	require.Equal(t, 300, rows)

	_, errOut, code = runArgs(t, "migrate", "backfill", "--dsn", db.DSN, "--table", "t", "--name", "some", "--set", "v = 2", "--where", "id <= 10 OR id > 295")
	require.Equal(t, exitOK, code, errOut)
	require.EqualValues(t, 30, sumV(), "exactly the rows --where names")
	_, errOut, code = runArgs(t, "migrate", "backfill", "--dsn", db.DSN, "--table", "t", "--name", "volatile", "--set", "v = 1 + (random() * 0)::int", "--allow-volatile")
	require.Equal(t, exitOK, code, errOut)
	require.EqualValues(t, 300, sumV())
}

// TestDangerousCommandsNeedAnExplicitTargetAndConfirmation: fence,
// promote, restore --clean, prune, rekey (and the others below) never take
// their target from the environment, and off a terminal they need --yes.
func TestDangerousCommandsNeedAnExplicitTargetAndConfirmation(t *testing.T) {
	// not parallel: it sets SPIREDB_DSN and SPIREDB_STORE, and the
	// terminal hooks
	c := pgtest.NewCluster(t, pgtest.Options())
	ctx := context.Background()
	readOnly := func() string {
		var v string
		conn, err := pgconn.Connect(ctx, c.DSN("postgres"))
		require.NoError(t, err)
		defer conn.Close(ctx)
		res, err := conn.Exec(ctx, "SHOW default_transaction_read_only").ReadAll()
		require.NoError(t, err)
		v = string(res[0].Rows[0][0])
		return v
	}
	_, err := c.CreateDatabase(ctx, "spire")
	require.NoError(t, err)
	storeDir := t.TempDir()
	// what migrate down/force and slots --drop would change
	_, errOut, code := runArgs(t, "migrate", "up", "--dsn", c.DSN("spire"))
	require.Equal(t, exitOK, code, errOut)
	migrated := func() string {
		out, errOut, code := runArgs(t, "migrate", "status", "--dsn", c.DSN("spire"))
		require.Equal(t, exitOK, code, errOut)
		return out
	}
	before := migrated()
	conn, err := pgconn.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT pg_create_physical_replication_slot('keep_me')").ReadAll()
	require.NoError(t, err)
	conn.Close(ctx)
	// rekey: recipients left out can no longer open the store's backups
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	idFile := filepath.Join(t.TempDir(), "identity")
	require.NoError(t, os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600))
	t.Setenv("SPIREDB_DSN", c.DSN("spire"))
	t.Setenv("SPIREDB_STORE", "file://"+storeDir)
	for _, args := range [][]string{
		{"backup", "rekey", "--all", "--identity", idFile, "--recipient", id.Recipient().String(), "--yes"},
		{"backup", "rekey", "--all", "--identity", idFile, "--recipient", id.Recipient().String(), "--store", "file://" + storeDir},
		{"replica", "fence"},
		{"replica", "fence", "--yes"},
		{"replica", "fence", "--dsn", c.DSN("spire")},
		{"replica", "fence", "--undo", "--dsn", c.DSN("spire")},
		{"replica", "switchover", "--primary-dsn", c.DSN("spire"), "--standby-dsn", c.DSN("spire")},
		{"replica", "rejoin", "--primary-dsn", c.DSN("spire"), "--data-dir", c.DataDir},
		{"replica", "promote", "--yes"},
		{"replica", "promote", "--dsn", c.DSN("postgres")},
		{"backup", "prune", "--keep-last", "1", "--yes"},
		{"backup", "prune", "--keep-last", "1", "--store", "file://" + storeDir},
		{"backup", "restore", "--latest", "--clean", "--target-dsn", c.DSN("postgres")},
		{"migrate", "down", "--yes"},
		{"migrate", "down", "--dsn", c.DSN("spire")},
		{"migrate", "force", "1", "--yes"},
		{"migrate", "force", "1", "--dsn", c.DSN("spire")},
		{"replica", "slots", "--drop", "keep_me", "--yes"},
		{"replica", "slots", "--drop", "keep_me", "--dsn", c.DSN("postgres")},
	} {
		out, errOut, code := runArgs(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s %s", args, out, errOut)
		require.Regexp(t, `explicitly|--yes`, errOut)
		require.NotContains(t, errOut, c.Password)
	}
	require.Equal(t, "off", readOnly(), "fenced without an explicit target and confirmation")
	require.Equal(t, before, migrated(), "migrations reverted or forced without an explicit target and confirmation")
	out, errOut, code := runArgs(t, "replica", "slots", "--dsn", c.DSN("postgres"))
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "keep_me", "a slot dropped without an explicit target and confirmation")

	// a terminal: the answer decides
	oldIn, oldTerm := stdin, stdinIsTerminal
	t.Cleanup(func() { stdin, stdinIsTerminal = oldIn, oldTerm })
	stdinIsTerminal = func() bool { return true }
	stdin = strings.NewReader("no\n")
	_, errOut, code = runArgs(t, "replica", "fence", "--dsn", c.DSN("spire"))
	require.Equal(t, exitUsage, code, errOut)
	require.Contains(t, errOut, "not confirmed")
	require.Equal(t, "off", readOnly())
	stdin = strings.NewReader("yes\n")
	_, errOut, code = runArgs(t, "replica", "fence", "--dsn", c.DSN("spire"))
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, "on", readOnly())
	_, err = pgconn.Connect(ctx, c.DSN("spire"))
	require.ErrorContains(t, err, "not currently accepting connections")
	require.NotContains(t, errOut, c.Password)
}

// TestPushGatewayThatNeverAnswers: a hung gateway neither hangs the
// command nor outlives SIGTERM (the context's end).
func TestPushGatewayThatNeverAnswers(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	t.Cleanup(func() { close(release); srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) // SIGTERM, half a second in
	defer cancel()
	done := make(chan int, 1)
	var errb strings.Builder
	go func() { done <- run(ctx, []string{"version", "--push-gateway", srv.URL}, &strings.Builder{}, &errb) }()
	select {
	case code := <-done:
		require.Equal(t, exitOK, code, "the command itself succeeded")
		require.Contains(t, errb.String(), "pushing metrics")
	case <-time.After(20 * time.Second):
		t.Fatal("spiredb hung on a Pushgateway that never answers")
	}
}

// TestScheduleFileFaults: a bad cron spec is an error naming file:line,
// never a panic; a password in any form is refused.
func TestScheduleFileFaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"tz":          "jobs:\n  - name: a\n    command: doctor\n    schedule: \"TZ=UTC\"\n",
		"crontz":      "jobs:\n  - name: a\n    command: doctor\n    schedule: \"CRON_TZ=Nowhere/Land 0 * * * *\"\n",
		"slash-pw":    "dsn: postgres://u:pa/ss@db/spire\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"at-pw":       "dsn: postgres://u:p@ss@db/spire\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"query-pw":    "dsn: postgres://db/spire?password=x\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"kv-quoted":   "dsn: \"host=db password = 'a b'\"\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"sslpassword": "dsn: host=db sslpassword=x\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"arg-pw":      "jobs:\n  - name: a\n    command: backup verify\n    schedule: '@hourly'\n    args: [--scratch-dsn, 'postgres://u:pa/ss@db/x']\n",
	} {
		path := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		_, errOut, code := runArgs(t, "schedule", "--config", path, "--check")
		require.Equal(t, exitUsage, code, "%s: %s", name, errOut)
		require.Contains(t, errOut, path+":", name)
		require.NotContains(t, errOut, "pa/ss", name)
		require.NotContains(t, errOut, "p@ss", name)
	}
}

// FuzzSecretsNeverPrinted: whatever the password's bytes, in URL
// (encoded or not) and key=value forms, no output path prints it: the
// CLI's error line, debug logs, connection errors, the push URL.
func FuzzSecretsNeverPrinted(f *testing.F) {
	for _, s := range []string{"s3cr/et", "p@ss:word/?#", "with space", `back\slash'quote`, "päss", "%41%42", "$$dollar$$", "hunter22"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, password string) {
		if len(password) < dsn.MinSecretLen || strings.ContainsAny(password, "\x00\r\n") || strings.TrimSpace(password) != password {
			t.Skip()
		}
		forms := []string{
			(&url.URL{Scheme: "postgres", User: url.UserPassword("spire", password), Host: "127.0.0.1:1", Path: "/spire", RawQuery: "connect_timeout=1"}).String(),
			"postgres://spire:" + password + "@127.0.0.1:1/spire?connect_timeout=1", // written unencoded
			"postgres://127.0.0.1:1/spire?connect_timeout=1&password=" + url.QueryEscape(password),
			"host=127.0.0.1 port=1 connect_timeout=1 user=spire password=" + dsn.QuoteValue(password) + " dbname=spire",
			"host=127.0.0.1 port=1 connect_timeout=1 sslpassword=" + dsn.QuoteValue(password),
		}
		if strings.Contains(dsn.Mask, password) || strings.Contains(password, dsn.Mask) {
			t.Skip()
		}
		for _, form := range forms {
			var out, errb strings.Builder
			code := run(context.Background(), []string{"doctor", "--dsn", form, "--log-level", "debug"}, &out, &errb)
			require.NotEqual(t, exitOK, code)
			printed := out.String() + errb.String()
			for _, leak := range []string{password, url.QueryEscape(password), url.PathEscape(password)} {
				if len(leak) >= dsn.MinSecretLen && strings.Contains(printed, leak) {
					t.Fatalf("password %q printed for %q: %s", password, form, printed)
				}
			}
		}
		var errb strings.Builder
		gw := "http://spiredb:" + url.PathEscape(password) + "@127.0.0.1:1"
		_ = run(context.Background(), []string{"version", "--push-gateway", gw}, &strings.Builder{}, &errb)
		if strings.Contains(errb.String(), password) || strings.Contains(errb.String(), url.PathEscape(password)) {
			t.Fatalf("push-gateway password %q printed: %s", password, errb.String())
		}
	})
}

// TestNegativeLockTimeoutLeavesTheServers: --lock-timeout -1s, documented
// as "leave the server's setting", works for migrate and backfill.
func TestNegativeLockTimeoutLeavesTheServers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	_, errOut, code := runArgs(t, "migrate", "up", "--dsn", db.DSN, "--lock-timeout=-1s")
	require.Equal(t, exitOK, code, errOut)
	_, err := db.Pool.Exec(ctx, "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO t (id) SELECT generate_series(1, 50)")
	require.NoError(t, err)
	_, errOut, code = runArgs(t, "migrate", "backfill", "--dsn", db.DSN, "--lock-timeout=-1s", "--table", "t", "--name", "n", "--set", "v = 1")
	require.Equal(t, exitOK, code, errOut)
	var sum int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT sum(v) FROM t").Scan(&sum))
	require.Equal(t, 50, sum)
}

// TestNonFiniteAndNegativeFlagsAreUsageErrors: a float flag given NaN or
// Inf, and a negative timeout or age, are usage errors (exit 2, one line)
// before anything connects, not accepted and not exit 1.
func TestNonFiniteAndNegativeFlagsAreUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"migrate", "backfill", "--table", "t", "--set", "a = 1", "--rest", "NaN"},
		{"migrate", "backfill", "--table", "t", "--set", "a = 1", "--rest", "-Inf"},
		{"migrate", "backfill", "--table", "t", "--set", "a = 1", "--max-impact", "NaN"},
		{"migrate", "backfill", "--table", "t", "--set", "a = 1", "--max-impact", "nan%"},
		{"indexes", "advise", "--min-gain", "NaN"},
		{"doctor", "--statement-timeout", "-5s"},
		{"doctor", "--max-backup-age", "-1h"},
		{"doctor", "--max-unverified-age", "-1s"},
	} {
		_, errOut, code := runArgs(t, append(args, "--dsn", "postgres://u@127.0.0.1:1/db?connect_timeout=1")...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, "%v: %s", args, errOut)
		require.NotContains(t, errOut, "connect", "%v: refused before connecting", args)
	}
}
