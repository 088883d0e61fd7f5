// Package pg is spiredb's connection contract: how every spiredb module,
// and any program that uses spiredb as a library, says which database to
// work on, and how spiredb opens its sessions there.
//
// A caller describes the target with Options: a DSN (libpq URL or
// key=value; empty means libpq's PG* variables, as pgx reads them), or its
// own parsed pgx config (Options.Config), or its own pool (Options.Pool).
// Every session spiredb opens is tagged application_name=spiredb and gets a
// lock_timeout (2s by default), an optional statement_timeout and an
// idle_in_transaction_session_timeout, unless the caller already set them
// (in the DSN, as a key or inside options=-c ..., or in the config's
// RuntimeParams). A session from a caller's pool is taken out of the pool
// (pgxpool's Hijack) and closed when spiredb is done with it, so nothing
// spiredb sets on a session ever reaches the caller's other users of the
// pool.
//
// Errors that callers match: *ConnectError (a session could not be
// opened), SQLState for PostgreSQL's codes, Retryable for lock timeouts and
// deadlocks that Retry runs again.
package pg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/internal/dsn"
)

// Marker begins every statement spiredb sends, so that pg_stat_statements
// (which records neither application_name nor the session; comments survive
// into its query text) can tell spiredb's own statements from SPIRE's.
const Marker = "/* spiredb */ "

// Defaults for the session settings spiredb applies.
const (
	DefaultApplicationName = "spiredb"
	DefaultLockTimeout     = 2 * time.Second
	DefaultIdleInTxTimeout = 5 * time.Minute
	DefaultConnectTimeout  = 10 * time.Second
)

// Options describe how to open sessions. The zero value is usable: DSN from
// PG* variables and the defaults above. At most one of DSN, Config and Pool
// is set.
type Options struct {
	// DSN is a libpq URL or key=value string; empty means PG* variables.
	DSN string
	// Config is the caller's own pgx config (from pgx.ParseConfig, then
	// changed as the caller likes): spiredb copies it, never changes it.
	Config *pgx.ConnConfig
	// Pool is the caller's own pool: spiredb takes sessions out of it (they
	// count against the pool's MaxConns while taken) and closes them when
	// done; programs (pg_dump, …) connect with the pool's config.
	Pool *pgxpool.Pool
	// ApplicationName tags the session (pg_stat_activity); default "spiredb".
	ApplicationName string
	// LockTimeout bounds every lock wait; 0 means DefaultLockTimeout, a
	// negative value leaves the server's setting alone.
	LockTimeout time.Duration
	// StatementTimeout bounds each statement; 0 leaves the server's setting.
	StatementTimeout time.Duration
	// IdleInTxTimeout ends sessions idle inside a transaction; 0 means
	// DefaultIdleInTxTimeout, negative leaves the server's setting.
	IdleInTxTimeout time.Duration
	// ConnectTimeout bounds connection set-up when the DSN has none.
	ConnectTimeout time.Duration
	// MaxConns sizes a pool; 0 means 4.
	MaxConns int32
	// Database, when set, replaces the DSN's database (scratch and restore
	// targets on the same server).
	Database string
	// TrustSearchPath skips the check that refuses a session whose
	// search_path holds another role's functions or operators named like
	// pg_catalog's (ShadowError); doctor sets it, to report them.
	TrustSearchPath bool
}

// Validate reports options that cannot work, in one line.
func (o Options) Validate() error {
	set := 0
	for _, b := range []bool{o.DSN != "", o.Config != nil, o.Pool != nil} {
		if b {
			set++
		}
	}
	if set > 1 {
		return errors.New("connection options: set one of DSN, Config and Pool")
	}
	if o.MaxConns < 0 {
		return errors.New("connection options: MaxConns must not be negative")
	}
	if o.StatementTimeout < 0 {
		return errors.New("connection options: StatementTimeout must not be negative (0 leaves the server's setting)")
	}
	return nil
}

// baseConfig is a fresh copy of the caller's connection settings, before
// spiredb's session settings.
func baseConfig(opts Options) (*pgx.ConnConfig, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	switch {
	case opts.Config != nil:
		cfg := opts.Config.Copy()
		dsn.Remember(cfg.Password)
		return cfg, nil
	case opts.Pool != nil:
		cfg := opts.Pool.Config().ConnConfig.Copy()
		dsn.Remember(cfg.Password)
		return cfg, nil
	}
	dsn.RememberDSN(opts.DSN)
	cfg, err := pgx.ParseConfig(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("parsing DSN %s: %s", dsn.Redact(opts.DSN), redactErr(err))
	}
	dsn.Remember(cfg.Password)
	if dsn.Misread(opts.DSN, cfg.Password) {
		return nil, errMisread
	}
	return cfg, nil
}

// ParseConfig builds a pgx connection config with spiredb's session settings.
func ParseConfig(opts Options) (*pgx.ConnConfig, error) {
	cfg, err := baseConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := checkHosts(&cfg.Config); err != nil {
		return nil, err
	}
	applySession(cfg.RuntimeParams, opts)
	if opts.Database != "" {
		cfg.Database = opts.Database
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = orDefault(opts.ConnectTimeout, DefaultConnectTimeout)
	}
	return cfg, nil
}

// Connect opens one session; the caller closes it. With Options.Pool (and
// no Options.Database) the session is taken out of the caller's pool and
// given spiredb's session settings with SET. A session whose search_path
// holds another, less privileged role's functions or operators named like
// pg_catalog's is refused with ShadowError (unless TrustSearchPath).
func Connect(ctx context.Context, opts Options) (*pgx.Conn, error) {
	var conn *pgx.Conn
	var err error
	if opts.Pool != nil && opts.Database == "" {
		conn, err = hijack(ctx, opts)
	} else {
		var cfg *pgx.ConnConfig
		if cfg, err = ParseConfig(opts); err != nil {
			return nil, err
		}
		conn, err = connectConfig(ctx, cfg)
	}
	if err != nil || opts.TrustSearchPath {
		return conn, err
	}
	if err := checkShadowing(ctx, conn); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// connectConfig opens a session with cfg; a pooler that refuses spiredb's
// startup settings gets them once connected.
func connectConfig(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil && unsupportedStartup(err) {
		conn, err = pgx.ConnectConfig(ctx, settingsAfterConnect(cfg))
	}
	if err != nil {
		return nil, &ConnectError{Target: Describe(cfg), Err: err}
	}
	return conn, nil
}

// sessionSettings are the startup parameters spiredb adds; a pooler that
// refuses them at start-up (PgBouncer: "unsupported startup parameter")
// gets them with set_config once connected.
var sessionSettings = []string{"lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"}

func unsupportedStartup(err error) bool {
	return strings.Contains(err.Error(), "unsupported startup parameter")
}

// settingsAfterConnect moves spiredb's session settings from the startup
// packet to set_config calls after connecting. It is for PgBouncer, which
// may pool transactions: statements go as one round trip each (unnamed,
// QueryExecModeExec), never as prepared statements a server session keeps.
func settingsAfterConnect(cfg *pgx.ConnConfig) *pgx.ConnConfig {
	c := cfg.Copy()
	c.DefaultQueryExecMode = pgx.QueryExecModeExec
	var keys, values []string
	for _, k := range sessionSettings {
		if v, ok := c.RuntimeParams[k]; ok {
			keys, values = append(keys, k), append(values, v)
			delete(c.RuntimeParams, k)
		}
	}
	after := c.AfterConnect
	c.AfterConnect = func(ctx context.Context, conn *pgconn.PgConn) error {
		for i, k := range keys {
			if _, err := conn.ExecParams(ctx, Marker+"SELECT pg_catalog.set_config($1, $2, false)",
				[][]byte{[]byte(k), []byte(values[i])}, nil, nil, nil).Close(); err != nil {
				return fmt.Errorf("setting %s: %w", k, err)
			}
		}
		if after != nil {
			return after(ctx, conn)
		}
		return nil
	}
	return c
}

// hijack takes a session out of the caller's pool, so that what spiredb
// sets on it never returns to the pool, and applies spiredb's session
// settings the caller's config does not set.
func hijack(ctx context.Context, opts Options) (*pgx.Conn, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	cfg := opts.Pool.Config().ConnConfig
	pc, err := opts.Pool.Acquire(ctx)
	if err != nil {
		return nil, &ConnectError{Target: Describe(cfg), Err: err}
	}
	conn := pc.Hijack()
	params := map[string]string{}
	for k, v := range cfg.RuntimeParams {
		params[k] = v
	}
	before := maps.Clone(params)
	applySession(params, opts)
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if _, had := before[k]; had && before[k] == params[k] {
			continue
		}
		if _, err := conn.Exec(ctx, Marker+"SELECT pg_catalog.set_config($1, $2, false)", k, params[k]); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("setting %s on a session of the caller's pool: %w", k, err)
		}
	}
	return conn, nil
}

// WithConn opens a session, runs fn with it and closes it: the one
// preamble every spiredb operation that needs a single session uses.
func WithConn(ctx context.Context, opts Options, fn func(*pgx.Conn) error) error {
	conn, err := Connect(ctx, opts)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

// NewPool opens a pool whose sessions all carry spiredb's settings (with
// Options.Pool: a new pool with the caller's pool's connection config).
func NewPool(ctx context.Context, opts Options) (*pgxpool.Pool, error) {
	cfg, err := ParseConfig(opts)
	if err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pcfg.ConnConfig = cfg
	pcfg.MaxConns = 4
	if opts.MaxConns > 0 {
		pcfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, &ConnectError{Target: Describe(pcfg.ConnConfig), Err: err}
	}
	if err := pool.Ping(ctx); err != nil && unsupportedStartup(err) {
		pool.Close()
		pcfg.ConnConfig = settingsAfterConnect(pcfg.ConnConfig)
		if pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
			return nil, &ConnectError{Target: Describe(pcfg.ConnConfig), Err: err}
		}
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
		if err != nil {
			return nil, &ConnectError{Target: Describe(pcfg.ConnConfig), Err: err}
		}
		return pool, nil
	} else if err != nil {
		pool.Close()
		return nil, &ConnectError{Target: Describe(pcfg.ConnConfig), Err: err}
	}
	return pool, nil
}

var errMisread = errors.New("invalid DSN: in a postgres:// URL a password with @ / ? # or : must be percent-encoded (%40 %2F %3F %23 %3A), and so must an @ in the query")

// checkHosts refuses a host name holding '@': it is the tail of an
// unencoded password (postgres://u:p@ss@host), and would be shown in
// messages and sent to DNS.
func checkHosts(cfg *pgconn.Config) error {
	hosts := []string{cfg.Host}
	for _, f := range cfg.Fallbacks {
		hosts = append(hosts, f.Host)
	}
	for _, h := range hosts {
		if strings.Contains(h, "@") {
			return errors.New("invalid DSN: the host name holds '@'; in a postgres:// URL a password with @ / ? # or : must be percent-encoded (%40 %2F %3F %23 %3A)")
		}
	}
	return nil
}

// Describe names a connection target without its password:
// "user@host:port/dbname".
func Describe(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// ConnectError is returned when a session cannot be opened.
type ConnectError struct {
	Target string
	Err    error
}

func (e *ConnectError) Error() string {
	msg := fmt.Sprintf("connecting to %s: %s", e.Target, redactErr(e.Err))
	if SQLState(e.Err) == "55000" && strings.Contains(e.Err.Error(), "not currently accepting connections") {
		msg += " (a database closed by `spiredb replica fence`: this is a fenced old primary, or a standby that replayed the fence; connect to the current primary, or lift it with `spiredb replica fence --undo` on the primary; a standby that replayed it reopens it when promoted)"
	}
	return msg
}

func (e *ConnectError) Unwrap() error { return e.Err }

func redactErr(err error) string { return dsn.RedactText(err.Error()) }

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// applySession sets spiredb's session parameters on params unless the user
// set them in the DSN.
func applySession(params map[string]string, opts Options) {
	userSet := func(name string) bool {
		if _, ok := params[name]; ok {
			return true
		}
		return strings.Contains(params["options"], name)
	}
	if !userSet("application_name") || params["application_name"] == "" {
		params["application_name"] = cmp(opts.ApplicationName, DefaultApplicationName)
	}
	if opts.LockTimeout >= 0 && !userSet("lock_timeout") {
		params["lock_timeout"] = millis(orDefault(opts.LockTimeout, DefaultLockTimeout))
	}
	if opts.StatementTimeout > 0 && !userSet("statement_timeout") {
		params["statement_timeout"] = millis(opts.StatementTimeout)
	}
	if opts.IdleInTxTimeout >= 0 && !userSet("idle_in_transaction_session_timeout") {
		params["idle_in_transaction_session_timeout"] = millis(orDefault(opts.IdleInTxTimeout, DefaultIdleInTxTimeout))
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// SQLState returns the SQLSTATE of a PostgreSQL error, or "".
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// AdvisoryLock is a session-level advisory lock spiredb holds.
type AdvisoryLock struct {
	conn *pgx.Conn
	key  int64
}

// TryAdvisoryLock takes the session-level advisory lock for a named
// resource (AdvisoryKey) without waiting; ok is false when another session
// holds it. Unlock releases it; closing the session does too.
func TryAdvisoryLock(ctx context.Context, conn *pgx.Conn, name string) (lock *AdvisoryLock, ok bool, err error) {
	key := AdvisoryKey(name)
	if err := conn.QueryRow(ctx, Marker+"SELECT pg_catalog.pg_try_advisory_lock($1)", key).Scan(&ok); err != nil {
		return nil, false, fmt.Errorf("taking the advisory lock for %s: %w", name, err)
	}
	if !ok {
		return nil, false, nil
	}
	return &AdvisoryLock{conn: conn, key: key}, true, nil
}

// Unlock releases the lock, even when ctx has ended.
func (l *AdvisoryLock) Unlock(ctx context.Context) {
	if l == nil {
		return
	}
	_, _ = l.conn.Exec(context.WithoutCancel(ctx), Marker+"SELECT pg_catalog.pg_advisory_unlock($1)", l.key)
}

// LockHolder is the session holding an advisory lock.
type LockHolder struct {
	PID             int32
	ApplicationName string
	BackendStart    time.Time
	State           string
}

// AdvisoryLockHolder finds the session that holds the session-level
// advisory lock of a named resource in the current database
// (pgx.ErrNoRows when none does).
func AdvisoryLockHolder(ctx context.Context, conn *pgx.Conn, name string) (LockHolder, error) {
	var h LockHolder
	err := conn.QueryRow(ctx, Marker+`SELECT a.pid, coalesce(a.application_name, ''), a.backend_start, coalesce(a.state, '')
		FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted
		  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
		  AND ((l.classid::int8 << 32) | l.objid::int8) = $1 AND l.objsubid = 1`, AdvisoryKey(name)).
		Scan(&h.PID, &h.ApplicationName, &h.BackendStart, &h.State)
	return h, err
}

// AdvisoryXactLock waits for the transaction-level advisory lock of a named
// resource; the transaction's end releases it.
func AdvisoryXactLock(ctx context.Context, tx pgx.Tx, name string) error {
	if _, err := tx.Exec(ctx, Marker+"SELECT pg_catalog.pg_advisory_xact_lock($1)", AdvisoryKey(name)); err != nil {
		return fmt.Errorf("waiting for the advisory lock for %s: %w", name, err)
	}
	return nil
}

// CreateDatabase creates database name through an administrative session.
func CreateDatabase(ctx context.Context, admin Options, name string) error {
	conn, err := Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, Marker+"CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name if it exists, ending its sessions.
func DropDatabase(ctx context.Context, admin Options, name string) error {
	conn, err := Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, Marker+"DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// AdvisoryKey is the advisory lock key spiredb uses for a named resource
// ("views.entry_selectors", "backfill.JOB", "migrate.TABLE"): a stable
// 64-bit hash, so every spiredb process agrees on it.
func AdvisoryKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("spiredb." + name))
	return int64(h.Sum64())
}
