// Package pg opens the PostgreSQL sessions spiredb uses.
//
// Every session is tagged application_name=spiredb and gets a lock_timeout
// (2s by default), an optional statement_timeout and an
// idle_in_transaction_session_timeout, unless the user already set them in
// the DSN (as a key or inside options=-c ...). A DSN left empty falls back to
// libpq's PG* environment variables, as pgx reads them.
package pg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
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
// PG* variables and the defaults above.
type Options struct {
	// DSN is a libpq URL or key=value string; empty means PG* variables.
	DSN string
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
}

// ParseConfig builds a pgx connection config with spiredb's session settings.
func ParseConfig(opts Options) (*pgx.ConnConfig, error) {
	dsn.RememberDSN(opts.DSN)
	cfg, err := pgx.ParseConfig(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("parsing DSN %s: %s", dsn.Redact(opts.DSN), redactErr(err))
	}
	dsn.Remember(cfg.Password)
	if dsn.Misread(opts.DSN, cfg.Password) {
		return nil, errMisread
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

// Connect opens one session.
func Connect(ctx context.Context, opts Options) (*pgx.Conn, error) {
	cfg, err := ParseConfig(opts)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, &ConnectError{Target: Describe(cfg), Err: err}
	}
	return conn, nil
}

// NewPool opens a pool whose sessions all carry spiredb's settings.
func NewPool(ctx context.Context, opts Options) (*pgxpool.Pool, error) {
	dsn.RememberDSN(opts.DSN)
	pcfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("parsing DSN %s: %s", dsn.Redact(opts.DSN), redactErr(err))
	}
	dsn.Remember(pcfg.ConnConfig.Password)
	if dsn.Misread(opts.DSN, pcfg.ConnConfig.Password) {
		return nil, errMisread
	}
	if err := checkHosts(&pcfg.ConnConfig.Config); err != nil {
		return nil, err
	}
	applySession(pcfg.ConnConfig.RuntimeParams, opts)
	if opts.Database != "" {
		pcfg.ConnConfig.Database = opts.Database
	}
	if pcfg.ConnConfig.ConnectTimeout == 0 {
		pcfg.ConnConfig.ConnectTimeout = orDefault(opts.ConnectTimeout, DefaultConnectTimeout)
	}
	pcfg.MaxConns = 4
	if opts.MaxConns > 0 {
		pcfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, &ConnectError{Target: Describe(pcfg.ConnConfig), Err: err}
	}
	if err := pool.Ping(ctx); err != nil {
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
		msg += " (a database closed by `spiredb replica fence`: this is a fenced old primary, or a standby that replayed the fence; connect to the current primary, or lift it with `spiredb replica fence --undo`)"
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
