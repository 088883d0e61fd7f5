package pgprog

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
)

// pgxOnlyKeys are connection string keys pgx understands and libpq
// programs reject ("invalid connection option").
var pgxOnlyKeys = []string{
	"pool_max_conns", "pool_min_conns", "pool_min_idle_conns", "pool_max_conn_lifetime", "pool_max_conn_lifetime_jitter",
	"pool_max_conn_idle_time", "pool_health_check_period", "statement_cache_capacity", "description_cache_capacity",
	"default_query_exec_mode", "min_read_buffer_size",
}

// keepalives are the TCP keepalive settings programs get unless the DSN
// sets its own.
var keepalives = map[string]string{"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "6"}

// Libpq is how a libpq program (pg_dump, pg_restore, pg_basebackup)
// reaches the server spiredb's own sessions reach: a connection string
// rebuilt from the parsed DSN, with Options.Database applied and no secret
// in it (argv is world-readable in /proc), and an environment that
// carries the password (PGPASSWORD) and, when there is one, the
// sslpassword (in a private service file: libpq has no variable for it).
type Libpq struct {
	// Conninfo goes to --dbname / -d; what it leaves out, libpq takes from
	// its PG* variables.
	Conninfo string
	// Params are the parsed parameters, secrets included.
	Params dsn.Params
	// Env is the program's environment.
	Env []string
	dir string
}

// Close removes the private service file, if any.
func (l *Libpq) Close() {
	if l.dir != "" {
		_ = os.RemoveAll(l.dir)
	}
}

// NewLibpq builds the target of a libpq program from opts, naming the
// session appName.
//
// With a caller's own pgx config or pool (Options.Config, Options.Pool)
// the program gets that config's connection string with the config's host,
// port, user, database and password applied: a config changed after
// parsing (a password from a secret manager) reaches the program too.
func NewLibpq(opts pg.Options, appName string) (*Libpq, error) {
	// pgx must accept the DSN too: spiredb's own sessions use it
	cfg, err := pg.ParseConfig(opts)
	if err != nil {
		return nil, err
	}
	own := opts.Config != nil || opts.Pool != nil
	src := opts.DSN
	if own {
		src = cfg.ConnString()
	}
	params, err := dsn.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("parsing DSN: %w", err)
	}
	if own {
		params["host"], params["port"], params["user"], params["dbname"] = cfg.Host, fmt.Sprint(cfg.Port), cfg.User, cfg.Database
		delete(params, "hostaddr")
		if cfg.Password != "" {
			params["password"] = cfg.Password
		}
	}
	dsn.Remember(params.Secrets()...)
	for _, k := range pgxOnlyKeys {
		delete(params, k)
	}
	if opts.Database != "" {
		params["dbname"] = opts.Database
	}
	l := &Libpq{Params: params}
	args := params.WithoutSecrets()
	// libpq's keepalives wait for the OS's idle time (2 hours on Linux)
	// before the first probe: a pg_dump whose server vanished would hang
	// that long. About 90 s here, as for spiredb's own sessions (Go's).
	for k, v := range keepalives {
		if _, ok := args[k]; !ok {
			args[k] = v
		}
	}
	l.Conninfo = args.String()
	l.Env = append(os.Environ(), "PGAPPNAME="+appName)
	if _, ok := params["connect_timeout"]; !ok {
		l.Env = append(l.Env, fmt.Sprintf("PGCONNECT_TIMEOUT=%d", int(cmp.Or(opts.ConnectTimeout, pg.DefaultConnectTimeout).Seconds())))
	}
	if pw, ok := params["password"]; ok {
		l.Env = append(l.Env, "PGPASSWORD="+pw)
	}
	if sp, ok := params["sslpassword"]; ok {
		if _, ok := params["service"]; ok {
			return nil, errors.New("a DSN with both service= and sslpassword= is not supported: put sslpassword in the service file")
		}
		dir, err := os.MkdirTemp("", "spiredb-libpq-")
		if err != nil {
			return nil, err
		}
		l.dir = dir
		file := filepath.Join(dir, "pg_service.conf")
		body := "[spiredb]\nsslpassword=" + strings.ReplaceAll(sp, "\n", "") + "\n"
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			l.Close()
			return nil, err
		}
		l.Env = append(l.Env, "PGSERVICEFILE="+file, "PGSERVICE=spiredb")
	}
	return l, nil
}

// Chown hands the private files to the uid a program runs as.
func (l *Libpq) Chown(uid, gid int) error {
	if l.dir == "" {
		return nil
	}
	return filepath.Walk(l.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
}
