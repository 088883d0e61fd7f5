// Command demo is `make demo`: the whole spiredb story on a throwaway
// cluster, with nothing to configure. It starts a PostgreSQL cluster, loads
// a SPIRE fixture (the schema a real spire-server created, plus 10,000
// entries), runs the real spiredb CLI against it step by step, and cleans up,
// also on ^C.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
)

func main() {
	bin := flag.String("spiredb", "bin/spiredb", "the spiredb binary to demonstrate")
	entries := flag.Int("entries", 10000, "registration entries in the fixture")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *bin, *entries)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, entries int) error {
	start := time.Now()
	step("Start a throwaway PostgreSQL cluster")
	// full_page_writes, which the harness turns off for speed, is on in
	// production and pg_rewind (replica rejoin) needs it
	c, err := pgcluster.Start(ctx, pgcluster.Options{BinDir: os.Getenv("SPIREDB_PG_BIN"), Settings: map[string]string{"full_page_writes": "on"}})
	if err != nil {
		return err
	}
	defer func() {
		step("Clean up")
		if err := c.Stop(); err != nil {
			fmt.Println("  stopping cluster:", err)
		}
		fmt.Printf("  cluster stopped and removed; demo took %s\n", time.Since(start).Round(100*time.Millisecond))
	}()
	fmt.Printf("  PostgreSQL on 127.0.0.1:%d, data in %s\n", c.Port, c.DataDir)

	step(fmt.Sprintf("Load a SPIRE datastore: spire-server v1.13.3's schema and %d entries (COPY)", entries))
	spireDSN, err := c.CreateDatabase(ctx, "spire")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, spireDSN)
	if err != nil {
		return err
	}
	sum, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: entries})
	_ = conn.Close(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("  %d entries, %d selectors, %d DNS names, %d federated bundles, %d agents, %d events in %s\n",
		sum.Entries, sum.Selectors, sum.DNSNames, sum.Bundles, sum.Agents, sum.Events, sum.Duration.Round(time.Millisecond))

	// The DSN goes through the environment, as in a Kubernetes Job: it
	// carries a password, and spiredb never prints it.
	env := []string{"SPIREDB_DSN=" + spireDSN}

	step("spiredb doctor")
	if err := spiredb(ctx, bin, env, "doctor"); err != nil {
		return err
	}

	if err := spireWorkload(ctx, bin, env, c.KVDSN("spire"), spireDSN); err != nil {
		return err
	}

	step("Settings for a SPIRE workload, and how this server differs (exit 1: something to change)")
	if err := spiredb(ctx, bin, env, "tune", "check", "--ram", "4GB", "--cpus", "2", "--spire-servers", "2"); err != nil {
		return err
	}

	step("spiredb's own schema, migrated (never dirty), and a batched backfill of SPIRE's entries")
	for _, args := range [][]string{
		{"migrate", "up"},
		{"migrate", "status"},
		{"migrate", "backfill", "--table", "registered_entries", "--set", "hint = lower(hint)", "--name", "demo-lower-hints", "--log-level", "info"},
		{"migrate", "backfill", "--status"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}

	step("Lint a migration written the way guides for SPIRE write it (exit 1: errors found)")
	migration := filepath.Join(c.Dir, "0001_guide_advice.up.sql")
	if err := os.WriteFile(migration, []byte(guideMigration), 0o644); err != nil {
		return err
	}
	if err := spiredb(ctx, bin, env, "migrate", "lint", migration); err != nil {
		return err
	}

	step("Lint migrations written as docs/migrations.md says: a column added, then used; concurrent builds in a -- spiredb:no-transaction file (exit 0: clean)")
	safeDir := filepath.Join(c.Dir, "safe-migrations")
	if err := os.MkdirAll(safeDir, 0o755); err != nil {
		return err
	}
	for name, body := range safeMigrations {
		if err := os.WriteFile(filepath.Join(safeDir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	if err := spiredb(ctx, bin, env, "migrate", "lint", safeDir); err != nil {
		return err
	}

	step("SPIRE's index set: plan, build concurrently, then check index health")
	for _, args := range [][]string{
		{"indexes", "plan"},
		{"indexes", "apply"},
		{"indexes", "check"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}

	step("A read model for audits: spiredb.entry_selectors, created, refreshed concurrently")
	for _, args := range [][]string{
		{"views", "create"},
		{"views", "refresh"},
		{"views", "status"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}

	storeDir, err := os.MkdirTemp("", "spiredb-demo-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(storeDir)
	store := "file://" + storeDir
	step("Back up to a local store, list, and verify by a real restore")
	for _, args := range [][]string{
		{"backup", "run", "--store", store, "--label", "demo"},
		{"backup", "list", "--store", store},
		{"backup", "verify", "--store", store, "--latest", "--level", "restore"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}

	step("As a managed service's role (no superuser; CREATEDB, pg_monitor): verify by real restore, and what doctor says it lacks")
	managed := *c
	managed.User, managed.Password = "spiredb_managed", randomPassword()
	if err := execSQL(ctx, spireDSN, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' NOSUPERUSER CREATEDB IN ROLE pg_monitor",
		managed.User, managed.Password)); err != nil {
		return err
	}
	menv := append(append([]string{}, env...), "SPIREDB_MANAGED="+managed.DSN("spire"))
	for _, args := range [][]string{
		{"backup", "verify", "--store", store, "--latest", "--level", "restore", "--dsn", "$SPIREDB_MANAGED"},
		{"doctor", "--dsn", "$SPIREDB_MANAGED"},
	} {
		if err := spiredb(ctx, bin, menv, args...); err != nil {
			return err
		}
	}

	if err := encryptionDemo(ctx, bin, env, store, storeDir); err != nil {
		return err
	}

	if err := pitrDemo(ctx, bin); err != nil {
		return err
	}

	step("Prune deletes only what spiredb wrote: another application's file and a pinned copy are left alone")
	if err := os.WriteFile(filepath.Join(storeDir, "notes.txt"), []byte("not a backup\n"), 0o600); err != nil {
		return err
	}
	if err := copyTree(filepath.Join(storeDir, newestEntry(storeDir)), filepath.Join(storeDir, "pinned-before-upgrade")); err != nil {
		return err
	}
	if err := spiredb(ctx, bin, env, "backup", "prune", "--store", store, "--keep-last", "1", "--yes"); err != nil {
		return err
	}

	step("Another role's code never runs with spiredb's privileges: a spiredb schema SPIRE's role made first, with a trigger in it, is refused (exit 1), and doctor names it")
	app := *c
	app.User, app.Password = "spire_app", randomPassword()
	if err := execSQL(ctx, spireDSN, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' NOSUPERUSER", app.User, app.Password)); err != nil {
		return err
	}
	if err := execSQL(ctx, spireDSN, "CREATE DATABASE spire_app OWNER "+app.User); err != nil {
		return err
	}
	if err := execSQL(ctx, app.DSN("spire_app"), `CREATE SCHEMA spiredb;
CREATE FUNCTION spiredb.grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE spire_app SUPERUSER'; RETURN NULL; END $$;
CREATE TABLE spiredb.schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
CREATE TRIGGER grab AFTER INSERT OR TRUNCATE ON spiredb.schema_migrations FOR EACH STATEMENT EXECUTE FUNCTION spiredb.grab()`); err != nil {
		return err
	}
	aenv := append(append([]string{}, env...), "SPIREDB_APP="+c.DSN("spire_app"))
	if err := spiredbExpect(ctx, bin, aenv, 1, "migrate", "up", "--dsn", "$SPIREDB_APP"); err != nil {
		return err
	}
	if err := spiredbExpect(ctx, bin, aenv, 1, "doctor", "--dsn", "$SPIREDB_APP"); err != nil {
		return err
	}

	step("A store two deployments share by mistake: retention keeps each database's newest, doctor counts only its own, restore --latest refuses to choose (exit 2)")
	sharedDir, err := os.MkdirTemp("", "spiredb-demo-shared-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sharedDir)
	shared := "file://" + sharedDir
	stagingDSN, err := c.CreateDatabase(ctx, "spire_staging")
	if err != nil {
		return err
	}
	if err := execSQL(ctx, stagingDSN, "CREATE TABLE registered_entries (id bigint PRIMARY KEY)"); err != nil {
		return err
	}
	senv := append(append([]string{}, env...), "SPIREDB_STAGING="+stagingDSN)
	for _, args := range [][]string{
		{"backup", "run", "--store", shared, "--label", "prod"},
		{"backup", "run", "--store", shared, "--dsn", "$SPIREDB_STAGING", "--label", "staging"},
		{"backup", "run", "--store", shared, "--dsn", "$SPIREDB_STAGING", "--label", "staging"},
		{"backup", "prune", "--store", shared, "--keep-last", "1", "--yes"},
		{"doctor", "--store", shared, "--dsn", "$SPIREDB_STAGING"},
	} {
		if err := spiredb(ctx, bin, senv, args...); err != nil {
			return err
		}
	}
	if err := spiredbExpect(ctx, bin, senv, 2, "backup", "restore", "--store", shared, "--latest", "--target-dsn", "$SPIREDB_STAGING", "--clean", "--yes"); err != nil {
		return err
	}

	step("Bootstrap a streaming standby and check it")
	port, err := pgcluster.FreePort(0, 0)
	if err != nil {
		return err
	}
	standbyDir := filepath.Join(c.Dir, "standby")
	defer func() { _ = replication.StopStandby(context.WithoutCancel(ctx), "", standbyDir) }()
	standby := *c
	standby.Port = port
	for _, args := range [][]string{
		{"replica", "bootstrap", "--primary-dsn", c.DSN("postgres"), "--data-dir", standbyDir, "--standby-passfile", standbyDir + ".pgpass", "--start", "--port", strconv.Itoa(port)},
		{"replica", "status"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}

	if err := spireAwareDemo(ctx, bin, env, store, c, &standby); err != nil {
		return err
	}

	step("doctor over everything: server, SPIRE schema, replication, the standby, indexes, backups")
	if err := spiredb(ctx, bin, append(env, "SPIREDB_STANDBY="+standby.DSN("spire")), "doctor", "--store", store, "--replica-dsn", "$SPIREDB_STANDBY"); err != nil {
		return err
	}

	step("Planned switchover: fence the primary (SPIRE's database refuses connections), let the standby replay its last write, promote it")
	if err := spiredb(ctx, bin, nil, "replica", "switchover", "--primary-dsn", c.DSN("spire"), "--standby-dsn", standby.DSN("spire"), "--yes"); err != nil {
		return err
	}

	step("Rejoin the old primary as a standby of the new one (pg_rewind, no full copy), and check replication")
	// after the rewind the old primary runs under pg_ctl, not the harness
	defer func() { _ = replication.StopStandby(context.WithoutCancel(ctx), "", c.DataDir) }()
	for _, args := range [][]string{
		{"replica", "rejoin", "--dsn", c.DSN("spire"), "--primary-dsn", standby.DSN("spire"), "--data-dir", c.DataDir,
			"--standby-passfile", c.DataDir + ".pgpass", "--start", "--port", strconv.Itoa(c.Port), "--yes"},
		{"replica", "status", "--dsn", standby.DSN("spire")},
	} {
		if err := spiredb(ctx, bin, nil, args...); err != nil {
			return err
		}
	}
	printSummary()
	return nil
}

type stepRecord struct {
	title string
	start time.Time
	took  time.Duration
}

var steps []stepRecord

// printSummary lists the steps with their durations.
func printSummary() {
	if n := len(steps); n > 0 && steps[n-1].took == 0 {
		steps[n-1].took = time.Since(steps[n-1].start)
	}
	fmt.Printf("\n==> Summary\n")
	var total time.Duration
	for _, s := range steps {
		total += s.took
		fmt.Printf("  %7s  %s\n", s.took.Round(100*time.Millisecond), s.title)
	}
	fmt.Printf("  %7s  in all; every command above is the real spiredb binary against a real PostgreSQL 15 and spire-server %s\n",
		total.Round(100*time.Millisecond), spiretest.Version)
}

// spireWorkload runs a real spire-server on the fixture for a few reloads
// and some entry creations, and shows what pg_stat_statements saw, by SPIRE
// operation.
func spireWorkload(ctx context.Context, bin string, env []string, kvDSN, spireDSN string) error {
	step("Run a real spire-server on it for 12 s (cache reload every 5 s) and create 50 entries")
	conn, err := pgx.Connect(ctx, spireDSN)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	_ = conn.Close(ctx)
	if err != nil {
		return err
	}
	if err := spiredb(ctx, bin, env, "stats", "reset"); err != nil {
		return err
	}
	srv, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: kvDSN})
	if err != nil {
		return err
	}
	defer srv.Stop()
	fmt.Printf("  spire-server %s on 127.0.0.1:%d\n", spiretest.Version, srv.Port)
	snapshot := filepath.Join(srv.Dir, "before.json")
	if err := spiredb(ctx, bin, env, "stats", "snapshot", "--out", snapshot); err != nil {
		return err
	}
	began := time.Now()
	entries := spirefixture.GenerateEntries(50, 2026, nil)
	for i := range entries {
		entries[i].SpiffeID += "-demo"
	}
	if err := srv.CreateEntries(ctx, entries); err != nil {
		return err
	}
	select {
	case <-time.After(12*time.Second - time.Since(began)):
	case <-ctx.Done():
		return ctx.Err()
	}

	step("Where SPIRE's database time goes: statement shapes, labelled with SPIRE's operations")
	if err := spiredb(ctx, bin, env, "stats", "top", "--limit", "8"); err != nil {
		return err
	}
	step("What changed since the snapshot taken before the 50 entries")
	return spiredb(ctx, bin, env, "stats", "diff", "--since", snapshot, "--by", "calls", "--limit", "6")
}

// guideMigration is the kind of advice published for SPIRE on PostgreSQL.
const guideMigration = `CREATE INDEX idx_entries_selectors ON registered_entries USING gin (selectors);
CREATE INDEX idx_entries_spiffe_id ON registered_entries (spiffe_id);
CREATE INDEX idx_entries_live ON registered_entries (expiry) WHERE expiry > NOW();
DO $$
DECLARE n int := 0;
BEGIN
  LOOP
    UPDATE registered_entries SET hint = ''
    WHERE id IN (SELECT id FROM registered_entries ORDER BY id OFFSET n LIMIT 1000);
    EXIT WHEN NOT FOUND;
    n := n + 1000;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
`

func step(title string) {
	if n := len(steps); n > 0 && steps[n-1].took == 0 {
		steps[n-1].took = time.Since(steps[n-1].start)
	}
	steps = append(steps, stepRecord{title: title, start: time.Now()})
	fmt.Printf("\n==> %s\n", title)
}

// spiredb runs the CLI, showing the command (DSNs come from the
// environment so that the shown commands carry no password). Findings (exit
// 1 from checks, 4 from doctor's warnings) are normal outcomes on a fresh
// throwaway cluster.
func spiredb(ctx context.Context, bin string, env []string, args ...string) error {
	err := runSpiredb(ctx, bin, env, args...)
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && (ee.ExitCode() == 4 || ee.ExitCode() == 1 && (args[0] == "tune" || args[0] == "migrate" || args[0] == "doctor")) {
		return nil
	}
	return err
}

// runSpiredb runs the CLI as spiredb does, and returns its exit as is.
func runSpiredb(ctx context.Context, bin string, env []string, args ...string) error {
	fmt.Printf("$ spiredb %s\n", dsn.RedactText(strings.Join(args, " ")))
	// "$NAME" arguments come from env, as a shell would expand them: the
	// shown command keeps the name, not the DSN
	run := make([]string, len(args))
	for i, a := range args {
		run[i] = a
		if name, ok := strings.CutPrefix(a, "$"); ok {
			for _, kv := range env {
				if v, ok := strings.CutPrefix(kv, name+"="); ok {
					run[i] = v
				}
			}
		}
	}
	cmd := exec.CommandContext(ctx, bin, run...)
	cmd.Env = append(os.Environ(), append(env, "SPIREDB_LOG_LEVEL=warn")...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// spiredbExpect runs spiredb and requires exit code want (an exit the
// step means to show, such as a refusal).
func spiredbExpect(ctx context.Context, bin string, env []string, want int, args ...string) error {
	err := runSpiredb(ctx, bin, env, args...)
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("spiredb %s: exit %d, want %d", args[0], code, want)
	}
	return nil
}

// spireAwareDemo: what a restore would lose, spire-server's configuration,
// and an upgrade's checks with a rehearsal, all against a real
// spire-server.
func spireAwareDemo(ctx context.Context, bin string, env []string, store string, c, standby *pgcluster.Cluster) error {
	step("What a restore would lose, in SPIRE's terms: a backup, changes through a real spire-server, backup diff, and a restore refused without --accept-loss (exit 1)")
	if err := spiredb(ctx, bin, env, "backup", "run", "--store", store, "--label", "before-changes"); err != nil {
		return err
	}
	srv, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: c.KVDSN("spire")})
	if err != nil {
		return err
	}
	defer srv.Stop()
	entries := spirefixture.GenerateEntries(20, 7, nil)
	for i := range entries {
		entries[i].SpiffeID += "-after-backup"
	}
	if err := srv.CreateEntries(ctx, entries); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DSN("spire"))
	if err != nil {
		return err
	}
	var agent string
	err = conn.QueryRow(ctx, "SELECT spiffe_id FROM attested_node_entries ORDER BY id LIMIT 1").Scan(&agent)
	_ = conn.Close(ctx)
	if err != nil {
		return err
	}
	for _, args := range [][]string{{"agent", "ban", "-spiffeID", agent}, {"token", "generate", "-ttl", "600"}} {
		if _, err := srv.CLI(ctx, args...); err != nil {
			return err
		}
	}
	fmt.Printf("  through spire-server: 20 entries created, agent %s banned, a join token generated\n", agent)
	if err := spiredb(ctx, bin, env, "backup", "diff", "--store", store, "--latest", "--sample", "2"); err != nil {
		return err
	}
	if err := spiredbExpect(ctx, bin, env, 1, "backup", "restore", "--store", store, "--latest", "--target-dsn", "$SPIREDB_DSN", "--clean", "--yes"); err != nil {
		return err
	}

	step("spire-server's configuration as SPIRE and lib/pq read it: this server's own (--connect), then with the standby and two common mistakes (exit 1)")
	good, err := os.ReadFile(filepath.Join(srv.Dir, "server.conf"))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "spiredb-demo-conf-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	goodPath, badPath := filepath.Join(dir, "server.conf"), filepath.Join(dir, "server-with-mistakes.conf")
	kv := c.KVDSN("spire")
	line := fmt.Sprintf("connection_string = %q", kv)
	withStandby := strings.Replace(string(good), line,
		line+fmt.Sprintf("\n      ro_connection_string = %q\n      max_open_conns = 20", standby.KVDSN("spire")), 1)
	bad := strings.Replace(withStandby, line, fmt.Sprintf("connection_string = %q", kv+" pool_max_conns=20"), 1)
	bad = strings.Replace(bad, "max_open_conns = 20", "max_open_con = 20", 1)
	if err := os.WriteFile(goodPath, []byte(withStandby), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(badPath, []byte(bad), 0o600); err != nil {
		return err
	}
	if err := spiredb(ctx, bin, env, "spire", "check-config", goodPath, "--connect", "--servers", "2"); err != nil {
		return err
	}
	if err := spiredbExpect(ctx, bin, env, 1, "spire", "check-config", badPath, "--connect", "--servers", "2"); err != nil {
		return err
	}
	srv.Stop()

	step("Before moving spire-server to another release: SPIRE's one-minor rule, views on its tables, a verified backup, a rehearsal on a scratch restore")
	if err := spiredb(ctx, bin, env, "backup", "verify", "--store", store, "--latest", "--level", "restore"); err != nil {
		return err
	}
	if err := spiredbExpect(ctx, bin, env, 1, "spire", "upgrade-check", "--to", "1.15.0", "--store", store); err != nil {
		return err
	}
	return spiredb(ctx, bin, env, "spire", "upgrade-check", "--to", strings.TrimPrefix(spiretest.Version, "v"), "--store", store, "--spire-server", srv.Bin)
}

// newestEntry names the last backup directory of a file store.
func newestEntry(dir string) string {
	ents, _ := os.ReadDir(dir)
	name := ""
	for _, e := range ents {
		if e.IsDir() && e.Name() > name && e.Name() != "pinned-before-upgrade" {
			name = e.Name()
		}
	}
	return name
}

// copyTree copies a directory of files (cp -a of a backup, as an operator
// pinning one would).
func copyTree(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// safeMigrations are the rewrite of guideMigration's intent the linter
// passes: a column added and then used, and index builds that run
// statement by statement outside a transaction.
var safeMigrations = map[string]string{
	"0002_issued_by.up.sql": "ALTER TABLE join_tokens ADD COLUMN issued_by text;\nUPDATE join_tokens SET issued_by = 'ops' WHERE token = 'x';\n",
	"0003_hint_lower.up.sql": "-- spiredb:no-transaction\nSET lock_timeout = '2s';\n" +
		"CREATE INDEX CONCURRENTLY IF NOT EXISTS spire_entries_hint_lower ON registered_entries (lower(hint));\n" +
		"REINDEX INDEX CONCURRENTLY spire_entries_hint_lower;\n",
}

// execSQL runs one statement as the cluster's superuser.
func execSQL(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// randomPassword is a throwaway role's password.
func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// pitrDemo runs point-in-time recovery on a cluster of its own that
// archives with spiredb wal push: a base backup, a mass delete by mistake,
// a restore to the second before it, and verify --level pitr.
func pitrDemo(ctx context.Context, bin string) error {
	step("Point-in-time recovery: WAL archived by spiredb wal push, a base backup, a mass delete by mistake, a restore to the second before it")
	// the server's OS user runs archive_command: the binary and the store
	// must be its to use
	dir, err := os.MkdirTemp("", "spiredb-demo-pitr-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cred, err := pgcluster.ServerCredential()
	if err != nil {
		return err
	}
	exe := filepath.Join(dir, "spiredb")
	b, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(dir, "store")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(storeDir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if cred != nil {
		if err := os.Chown(storeDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	store := "file://" + storeDir
	p, err := pgcluster.Start(ctx, pgcluster.Options{BinDir: os.Getenv("SPIREDB_PG_BIN"), Settings: map[string]string{
		"archive_mode": "on", "archive_timeout": "60s",
		"archive_command": "'" + exe + " wal push %p --store " + store + " --log-level warn'"}})
	if err != nil {
		return err
	}
	defer func() { _ = p.Stop() }()
	spireDSN, err := p.CreateDatabase(ctx, "spire")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, spireDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 2000}); err != nil {
		return err
	}
	fmt.Printf("  a second cluster (127.0.0.1:%d) with archive_command = 'spiredb wal push %%p --store %s'; 2000 entries\n", p.Port, store)
	env := []string{"SPIREDB_DSN=" + spireDSN}
	if err := spiredb(ctx, bin, env, "backup", "run", "--physical", "--store", store); err != nil {
		return err
	}
	time.Sleep(1500 * time.Millisecond)
	before := time.Now().UTC()
	time.Sleep(1500 * time.Millisecond)
	if _, err := conn.Exec(ctx, "TRUNCATE registered_entries CASCADE"); err != nil {
		return err
	}
	fmt.Printf("  %s: TRUNCATE registered_entries CASCADE (every entry gone)\n", time.Now().UTC().Format(time.RFC3339))
	var segment string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&segment); err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		var last *string
		if err := conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&last); err != nil {
			return err
		}
		if last != nil && *last >= segment {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("segment %s was not archived in a minute", segment)
		}
	}
	// the restored cluster gets a harness directory of its own (its Stop
	// removes it)
	if err := os.MkdirAll(pgcluster.DefaultRoot(), 0o755); err != nil {
		return err
	}
	rdir, err := os.MkdirTemp(pgcluster.DefaultRoot(), "demo-restored-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(rdir)
	if err := os.Chmod(rdir, 0o755); err != nil {
		return err
	}
	restored := filepath.Join(rdir, "data")
	for _, args := range [][]string{
		{"wal", "list", "--store", store},
		{"backup", "restore", "--physical", "--store", store, "--to-time", before.Format(time.RFC3339Nano), "--data-dir", restored},
		{"backup", "verify", "--store", store, "--latest", "--level", "pitr"},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}
	port, err := pgcluster.FreePort(0, 0)
	if err != nil {
		return err
	}
	r, err := pgcluster.StartExisting(ctx, rdir, restored, p.BinDir, port, p.Password, nil)
	if err != nil {
		return err
	}
	defer func() { _ = r.Stop() }()
	rconn, err := pgx.Connect(ctx, r.DSN("spire"))
	if err != nil {
		return err
	}
	defer rconn.Close(context.WithoutCancel(ctx))
	var n int
	if err := rconn.QueryRow(ctx, "SELECT count(*) FROM registered_entries").Scan(&n); err != nil {
		return err
	}
	fmt.Printf("  the restored cluster, started on 127.0.0.1:%d: %d registration entries (the original has 0)\n", port, n)
	if n != 2000 {
		return fmt.Errorf("the restore to %s has %d entries, want 2000", before.Format(time.RFC3339Nano), n)
	}
	return nil
}

// encryptionDemo: a backup encrypted on this machine to an age recipient,
// verified with the identity, then rekeyed to a new recipient by rewriting
// its manifest only.
func encryptionDemo(ctx context.Context, bin string, env []string, store, storeDir string) error {
	step("Client-side encryption: a backup encrypted to an age public key; a restore needs the identity; rotation rewrites manifests only")
	keyDir, err := os.MkdirTemp("", "spiredb-demo-keys-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(keyDir)
	var pubs, files []string
	for _, name := range []string{"old", "new"} {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return err
		}
		f := filepath.Join(keyDir, name+".key")
		if err := os.WriteFile(f, []byte(id.String()+"\n"), 0o600); err != nil {
			return err
		}
		pubs, files = append(pubs, id.Recipient().String()), append(files, f)
	}
	if err := spiredb(ctx, bin, env, "backup", "run", "--store", store, "--recipient", pubs[0], "--label", "encrypted"); err != nil {
		return err
	}
	id := newestEntry(storeDir)
	dump, err := os.ReadFile(filepath.Join(storeDir, id, "dump"))
	if err != nil {
		return err
	}
	lines := strings.SplitN(string(dump[:min(len(dump), 200)]), "\n", 3)
	fmt.Printf("  %s/dump starts with %q: an age file whose only stanza is a marker; the data key is in the manifest, wrapped to the recipient\n",
		id, strings.Join(lines[:min(2, len(lines))], "\n"))
	fmt.Println("  without --identity, verify --level restore refuses before it creates anything (exit 2):")
	if err := spiredb(ctx, bin, env, "backup", "verify", "--store", store, "--id", id, "--level", "restore"); err == nil {
		return errors.New("an encrypted backup verified without its identity")
	}
	for _, args := range [][]string{
		{"backup", "verify", "--store", store, "--id", id, "--level", "restore", "--identity", files[0]},
		{"backup", "rekey", "--store", store, "--id", id, "--identity", files[0], "--recipient", pubs[1], "--yes"},
		{"backup", "verify", "--store", store, "--id", id, "--level", "toc", "--identity", files[1]},
	} {
		if err := spiredb(ctx, bin, env, args...); err != nil {
			return err
		}
	}
	after, err := os.ReadFile(filepath.Join(storeDir, id, "dump"))
	if err != nil {
		return err
	}
	fmt.Printf("  the dump after the rekey is byte-identical: %v\n", string(after) == string(dump))
	return nil
}
