package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiredb/spiredb/migrations/lint"

	"github.com/golang-migrate/migrate/v4/database"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/spiredb/spiredb/pg"
)

// Schema is where spiredb keeps its objects and version tables.
const Schema = pg.OwnSchema

// NoTransaction is the first line that makes a migration file run
// statement by statement outside a transaction (CREATE INDEX CONCURRENTLY
// needs that).
const NoTransaction = lint.NoTransaction

//go:embed sql/*.sql
var own embed.FS

// Options configure a runner.
type Options struct {
	// Source is "" for spiredb's own embedded migrations, or file://DIR
	// (or a plain directory path) for an operator's.
	Source string
	// Table is the version table in the spiredb schema: default
	// schema_migrations for spiredb's own, operator_migrations for a Source.
	Table string
	// LockWait bounds the wait for another run's migration lock (default
	// 30s).
	LockWait time.Duration
	// LockTimeout is each migration's lock_timeout (default 2s; negative
	// leaves the server's setting); a
	// migration that hits it is rolled back and retried with backoff.
	LockTimeout time.Duration
	Retry       pg.RetryPolicy
	Logger      *slog.Logger
}

// Runner applies migrations over one dedicated session.
type Runner struct {
	conn  *pgx.Conn
	cfg   *pgx.ConnConfig
	src   source.Driver
	opts  Options
	table string
	log   *slog.Logger
}

// LockHeldError is returned when another run holds the migration lock
// longer than LockWait.
type LockHeldError struct {
	Waited time.Duration
	PID    int
	App    string
	Since  time.Time
	State  string
}

func (e *LockHeldError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("another migration run held the migration lock for more than %s", e.Waited)
	}
	return fmt.Sprintf("another migration run holds the migration lock (pid %d, application_name %q, connected since %s, %s); waited %s: raise --lock-wait or wait for it",
		e.PID, e.App, e.Since.UTC().Format(time.DateTime), e.State, e.Waited)
}

// Open connects and prepares a runner: the spiredb schema, the version
// table (golang-migrate's format: version, dirty) and the runs table.
func Open(ctx context.Context, po pg.Options, opts Options) (*Runner, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := po.Validate(); err != nil {
		return nil, err
	}
	if opts.LockWait == 0 {
		opts.LockWait = 30 * time.Second
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = pg.DefaultLockTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src, table, err := openSource(opts)
	if err != nil {
		return nil, err
	}
	cfg, err := pg.ParseConfig(po)
	if err != nil {
		return nil, err
	}
	conn, err := pg.Connect(ctx, po)
	if err != nil {
		return nil, err
	}
	// the migration lock is a session's
	if err := pg.RequireSession(ctx, conn, po); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	// its tables' owner's triggers would run with this session's privileges
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	r := &Runner{conn: conn, cfg: cfg, src: src, opts: opts, table: table, log: log}
	if err := r.checkVersionTable(ctx); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	// concurrent runs create these at the same time: serialize on a
	// transaction-scoped advisory lock (bounded by lock_timeout)
	if err := r.bootstrap(ctx); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("preparing spiredb's schema: %w", err)
	}
	// again: a schema another role created between the check and
	// CREATE SCHEMA IF NOT EXISTS is that role's
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	return r, nil
}

func (r *Runner) bootstrap(ctx context.Context) error {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// two runners creating the schema at once wait for each other
	if err := pg.AdvisoryXactLock(ctx, tx, "migrate.schema"); err != nil {
		return err
	}
	for _, q := range []string{
		"CREATE SCHEMA IF NOT EXISTS spiredb",
		`CREATE TABLE IF NOT EXISTS spiredb.migration_runs (
			version_table text NOT NULL,
			version bigint NOT NULL,
			direction text NOT NULL,
			statement_index int,
			statement text,
			error text NOT NULL,
			advice text NOT NULL,
			failed_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (version_table, version, direction))`,
		fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)", r.qualified()),
	} {
		if _, err := tx.Exec(ctx, pg.Marker+q); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

func openSource(opts Options) (source.Driver, string, error) {
	if opts.Source == "" {
		d, err := iofs.New(own, "sql")
		table := opts.Table
		if table == "" {
			table = ownTable
		}
		return d, table, err
	}
	dir := strings.TrimPrefix(opts.Source, "file://")
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, "", fmt.Errorf("--source: %w", err)
	}
	if !fi.IsDir() {
		return nil, "", fmt.Errorf("--source: %s is not a directory", dir)
	}
	d, err := iofs.New(os.DirFS(dir), ".")
	if err != nil {
		return nil, "", fmt.Errorf("--source %s: %w", dir, err)
	}
	table := opts.Table
	if table == "" {
		table = "operator_migrations"
	}
	return d, table, nil
}

func (r *Runner) qualified() string { return pgx.Identifier{Schema, r.table}.Sanitize() }

// VersionTableError is returned when the version table exists but is not
// one (another relation of that name in the spiredb schema): the fix is
// another --version-table.
type VersionTableError struct {
	Table string
	Shape string
}

func (e *VersionTableError) Error() string {
	return fmt.Sprintf("--version-table %s: %s.%s is not a version table (%s, not a table of version bigint and dirty boolean): give this migration set a table of its own",
		e.Table, Schema, e.Table, e.Shape)
}

// checkVersionTable refuses an existing relation of the version table's
// name that is not shaped like one, before anything is written: its rows
// would be deleted at the first version change.
func (r *Runner) checkVersionTable(ctx context.Context) error {
	var kind string
	var cols []string
	err := r.conn.QueryRow(ctx, pg.Marker+`SELECT c.relkind::text,
		coalesce((SELECT pg_catalog.array_agg(a.attname::text || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
		  FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}')
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, Schema, r.table).Scan(&kind, &cols)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking the version table: %w", err)
	}
	if kind == "r" && slices.Equal(cols, []string{"version bigint", "dirty boolean"}) {
		return nil
	}
	shape := "columns " + strings.Join(cols, ", ")
	if kind != "r" {
		shape = map[string]string{"v": "a view", "m": "a materialized view", "i": "an index", "S": "a sequence", "p": "a partitioned table", "f": "a foreign table"}[kind]
		if shape == "" {
			shape = "relkind " + kind
		}
	}
	return &VersionTableError{Table: r.table, Shape: shape}
}

// Close ends the session (and releases the lock).
func (r *Runner) Close(ctx context.Context) error {
	_ = r.src.Close()
	return r.conn.Close(ctx)
}

// lockName names the advisory lock a run holds: one per version table.
func (r *Runner) lockName() string { return "migrate." + r.table }

// lock takes the run's advisory lock, waiting at most LockWait.
func (r *Runner) lock(ctx context.Context) (func(), error) {
	start := time.Now()
	nextLog := start
	for {
		lock, ok, err := pg.TryAdvisoryLock(ctx, r.conn, r.lockName())
		if err != nil {
			return nil, err
		}
		if ok {
			return func() { lock.Unlock(ctx) }, nil
		}
		if time.Since(start) >= r.opts.LockWait {
			e := &LockHeldError{Waited: time.Since(start).Round(time.Millisecond)}
			if h, err := pg.AdvisoryLockHolder(ctx, r.conn, r.lockName()); err == nil {
				e.PID, e.App, e.Since, e.State = int(h.PID), h.ApplicationName, h.BackendStart, h.State
			}
			return nil, e
		}
		// once at first, then every 5 s: the wait polls every 200 ms
		if now := time.Now(); !now.Before(nextLog) {
			attrs := []any{"waited", now.Sub(start).Round(time.Second), "lock_wait", r.opts.LockWait}
			if h, err := pg.AdvisoryLockHolder(ctx, r.conn, r.lockName()); err == nil {
				attrs = append(attrs, "holder_pid", h.PID, "holder_application", h.ApplicationName)
			}
			r.log.Info("waiting for another migration run", attrs...)
			nextLog = now.Add(5 * time.Second)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Version is the applied version (0: none) and whether it is dirty (set
// only by tools other than spiredb; spiredb never leaves it so).
func (r *Runner) Version(ctx context.Context) (int64, bool, error) {
	var v int64
	var dirty bool
	err := r.conn.QueryRow(ctx, pg.Marker+"SELECT version, dirty FROM "+r.qualified()+" ORDER BY version DESC LIMIT 1").Scan(&v, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return v, dirty, err
}

// Versions lists the source's migration versions in order.
func (r *Runner) Versions() ([]int64, error) {
	var out []int64
	v, err := r.src.First()
	for err == nil {
		out = append(out, int64(v))
		v, err = r.src.Next(v)
	}
	if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return out, nil
}

// Applied is one migration run.
type Applied struct {
	Version    int64         `json:"version"`
	Name       string        `json:"name"`
	Direction  string        `json:"direction"`
	Duration   time.Duration `json:"duration_ns"`
	Statements int           `json:"statements,omitempty"`
}

// MigrationError is a failed migration: rolled back (or, for a
// no-transaction file, stopped at Statement), the version unchanged.
type MigrationError struct {
	Version   int64
	Name      string
	Statement int    // 1-based, for no-transaction files
	SQL       string // that statement
	Err       error
	Advice    string
}

func (e *MigrationError) Error() string {
	at := ""
	if e.Statement > 0 {
		at = fmt.Sprintf(" at statement %d (%s)", e.Statement, clip(e.SQL, 80))
	}
	return fmt.Sprintf("migration %d %s failed%s: %v; %s", e.Version, e.Name, at, e.Err, e.Advice)
}

func (e *MigrationError) Unwrap() error { return e.Err }

// prepare takes the run's lock and reads the applied version and the
// source's versions; a dirty version (left by another tool) stops the run.
func (r *Runner) prepare(ctx context.Context) (unlock func(), cur int64, versions []int64, err error) {
	unlock, err = r.lock(ctx)
	if err != nil {
		return nil, 0, nil, err
	}
	var dirty bool
	if cur, dirty, err = r.Version(ctx); err == nil && dirty {
		err = fmt.Errorf("version %d is marked dirty (by another tool): check the schema, then spiredb migrate force VERSION", cur)
	}
	if err == nil {
		versions, err = r.Versions()
	}
	if err != nil {
		unlock()
		return nil, 0, nil, err
	}
	return unlock, cur, versions, nil
}

// Up applies pending migrations (n > 0: at most n).
func (r *Runner) Up(ctx context.Context, n int) ([]Applied, error) {
	unlock, cur, versions, err := r.prepare(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var done []Applied
	for _, v := range versions {
		if v <= cur {
			continue
		}
		if n > 0 && len(done) == n {
			break
		}
		a, err := r.apply(ctx, v, v, "up")
		if err != nil {
			return done, err
		}
		done = append(done, a)
	}
	return done, nil
}

// Down reverts the last n applied migrations (n ≥ 1).
func (r *Runner) Down(ctx context.Context, n int) ([]Applied, error) {
	if n < 1 {
		n = 1
	}
	unlock, cur, versions, err := r.prepare(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var done []Applied
	for i := len(versions) - 1; i >= 0 && len(done) < n; i-- {
		v := versions[i]
		if v > cur {
			continue
		}
		prev := int64(0)
		if i > 0 {
			prev = versions[i-1]
		}
		a, err := r.apply(ctx, v, prev, "down")
		if err != nil {
			return done, err
		}
		done = append(done, a)
		cur = prev
	}
	return done, nil
}

// apply runs one migration file and sets the version to next (0: none).
func (r *Runner) apply(ctx context.Context, v, next int64, direction string) (Applied, error) {
	read := r.src.ReadUp
	if direction == "down" {
		read = r.src.ReadDown
	}
	rc, name, err := read(uint(v))
	if err != nil {
		return Applied{}, fmt.Errorf("migration %d: no %s file: %w", v, direction, err)
	}
	body, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		return Applied{}, err
	}
	a := Applied{Version: v, Name: name, Direction: direction}
	start := time.Now()
	r.log.Info("migrating", "version", v, "name", name, "direction", direction)
	sqlText := string(body)
	if lint.HasNoTransaction(sqlText) {
		a.Statements, err = r.applyNoTx(ctx, v, next, name, direction, sqlText)
	} else if err = noOwnTransaction(sqlText); err != nil {
		err = &MigrationError{Version: v, Name: name, Err: err, Advice: "nothing ran"}
	} else {
		err = r.applyTx(ctx, v, next, name, direction, sqlText)
	}
	if err != nil {
		return a, err
	}
	a.Duration = time.Since(start)
	_, _ = r.conn.Exec(ctx, pg.Marker+"DELETE FROM spiredb.migration_runs WHERE version_table = $1 AND version = $2 AND direction = $3", r.table, v, direction)
	return a, nil
}

// noOwnTransaction refuses files with their own BEGIN/COMMIT: spiredb wraps
// each migration in a transaction, and a COMMIT inside would end it early.
func noOwnTransaction(body string) error {
	res, err := pg_query.Parse(body)
	if err != nil {
		return fmt.Errorf("the file does not parse: %w", err)
	}
	for _, s := range res.Stmts {
		if s.Stmt.GetTransactionStmt() != nil {
			return fmt.Errorf("the file has its own transaction control (BEGIN/COMMIT/ROLLBACK): remove it — each migration already runs in one transaction — or start the file with %q", NoTransaction)
		}
	}
	return nil
}

func (r *Runner) setVersion(ctx context.Context, tx pgx.Tx, next int64) error {
	if _, err := tx.Exec(ctx, pg.Marker+"DELETE FROM "+r.qualified()); err != nil {
		return err
	}
	if next > 0 {
		if _, err := tx.Exec(ctx, pg.Marker+"INSERT INTO "+r.qualified()+" (version, dirty) VALUES ($1, false)", next); err != nil {
			return err
		}
	}
	return nil
}

// applyTx runs the file and the version change in one transaction under
// lock_timeout, retried on lock timeouts and deadlocks.
func (r *Runner) applyTx(ctx context.Context, v, next int64, name, direction, body string) error {
	policy := r.opts.Retry
	if policy.OnRetry == nil {
		policy.OnRetry = func(attempt int, wait time.Duration, err error) {
			r.log.Warn("migration waited too long for a lock; rolled back, retrying", "version", v, "attempt", attempt, "wait", wait, "err", err)
		}
	}
	err := pg.Retry(ctx, policy, func(ctx context.Context) error {
		tx, err := r.conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if r.opts.LockTimeout > 0 { // negative: the server's setting
			if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", r.opts.LockTimeout.Milliseconds())); err != nil {
				return err
			}
		}
		// several statements in one simple-protocol query
		if _, err := tx.Conn().PgConn().Exec(ctx, body).ReadAll(); err != nil {
			return err
		}
		if err := r.setVersion(ctx, tx, next); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		me := &MigrationError{Version: v, Name: name, Err: err,
			Advice: "it was rolled back: nothing of it applied and the version is unchanged; fix it and run again"}
		r.recordFailure(ctx, v, direction, 0, "", me)
		return me
	}
	return nil
}

// applyNoTx runs a no-transaction file statement by statement, then sets
// the version.
func (r *Runner) applyNoTx(ctx context.Context, v, next int64, name, direction, body string) (int, error) {
	stmts, err := pg_query.SplitWithParser(body, true)
	if err != nil {
		return 0, &MigrationError{Version: v, Name: name, Err: err, Advice: "the file does not parse; nothing ran"}
	}
	if r.opts.LockTimeout > 0 { // negative: the server's setting
		if _, err := r.conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", r.opts.LockTimeout.Milliseconds())); err != nil {
			return 0, err
		}
	}
	n := 0
	for i, s := range stmts {
		if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), NoTransaction)) == "" {
			continue
		}
		if _, err := r.conn.PgConn().Exec(ctx, s).ReadAll(); err != nil {
			me := &MigrationError{Version: v, Name: name, Statement: i + 1, SQL: s, Err: err,
				Advice: fmt.Sprintf("this file runs outside a transaction: statements 1 to %d were applied and stay; the version is unchanged. "+
					"Make the file safe to re-run (IF NOT EXISTS / IF EXISTS; a failed CREATE INDEX CONCURRENTLY leaves an INVALID index: DROP INDEX CONCURRENTLY it), fix the cause, run again", i)}
			if i == 0 {
				me.Advice = "this file runs outside a transaction; its first statement failed, so nothing was applied and the version is unchanged: fix it and run again"
			}
			r.recordFailure(ctx, v, direction, i+1, s, me)
			return n, me
		}
		n++
	}
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return n, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := r.setVersion(ctx, tx, next); err != nil {
		return n, err
	}
	return n, tx.Commit(ctx)
}

func (r *Runner) recordFailure(ctx context.Context, v int64, direction string, stmt int, sqlText string, me *MigrationError) {
	var idx any
	if stmt > 0 {
		idx = stmt
	}
	_, err := r.conn.Exec(context.WithoutCancel(ctx), pg.Marker+`INSERT INTO spiredb.migration_runs (version_table, version, direction, statement_index, statement, error, advice)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (version_table, version, direction) DO UPDATE SET statement_index = excluded.statement_index, statement = excluded.statement,
			error = excluded.error, advice = excluded.advice, failed_at = now()`, r.table, v, direction, idx, nullIfEmpty(sqlText), me.Err.Error(), me.Advice)
	if err != nil {
		r.log.Warn("could not record the failed run", "err", err)
	}
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Force sets the version without running anything (golang-migrate's
// force, through its driver): for a database changed by hand. version < 0
// clears it.
func (r *Runner) Force(ctx context.Context, version int) error {
	unlock, err := r.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	db := stdlib.OpenDB(*r.cfg)
	defer db.Close()
	drv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: Schema, MigrationsTable: r.table})
	if err != nil {
		return fmt.Errorf("opening the version table: %w", err)
	}
	defer func() { _ = drv.Close() }()
	v := version
	if v < 0 {
		v = database.NilVersion
	}
	if err := drv.SetVersion(v, false); err != nil {
		return err
	}
	_, _ = r.conn.Exec(ctx, pg.Marker+"DELETE FROM spiredb.migration_runs WHERE version_table = $1", r.table)
	return nil
}

// Failure is a recorded failed run.
type Failure struct {
	Version   int64     `json:"version"`
	Direction string    `json:"direction"`
	Statement *int      `json:"statement,omitempty"`
	SQL       *string   `json:"sql,omitempty"`
	Error     string    `json:"error"`
	Advice    string    `json:"advice"`
	At        time.Time `json:"at"`
}

// Status is `migrate status`.
type Status struct {
	Table    string    `json:"version_table"`
	Version  int64     `json:"version"`
	Dirty    bool      `json:"dirty"`
	Applied  []int64   `json:"applied"`
	Pending  []int64   `json:"pending"`
	Failures []Failure `json:"failures"`
}

// GetStatus reports applied and pending versions and failed runs.
func (r *Runner) GetStatus(ctx context.Context) (*Status, error) {
	st := &Status{Table: Schema + "." + r.table, Applied: []int64{}, Pending: []int64{}, Failures: []Failure{}}
	var err error
	if st.Version, st.Dirty, err = r.Version(ctx); err != nil {
		return nil, err
	}
	versions, err := r.Versions()
	if err != nil {
		return nil, err
	}
	for _, v := range versions {
		if v <= st.Version {
			st.Applied = append(st.Applied, v)
		} else {
			st.Pending = append(st.Pending, v)
		}
	}
	rows, err := r.conn.Query(ctx, pg.Marker+`SELECT version, direction, statement_index, statement, error, advice, failed_at
		FROM spiredb.migration_runs WHERE version_table = $1 ORDER BY failed_at`, r.table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var f Failure
		if err := rows.Scan(&f.Version, &f.Direction, &f.Statement, &f.SQL, &f.Error, &f.Advice, &f.At); err != nil {
			return nil, err
		}
		st.Failures = append(st.Failures, f)
	}
	return st, rows.Err()
}

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}
