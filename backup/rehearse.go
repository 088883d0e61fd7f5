package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// RehearseOptions configure Rehearse.
type RehearseOptions struct {
	Store Store
	// ID names the backup; empty: the newest verified logical backup (of
	// Source, when set).
	ID     string
	Source *Source
	// Scratch is the server the backup is restored on (the role needs
	// CREATEDB).
	Scratch pg.Options
	// SpireServer is the spire-server binary to rehearse with.
	SpireServer string
	// TrustDomain is the server's trust domain (default: the one most
	// registration entries are in).
	TrustDomain string
	// Timeout bounds the server's start-up, migration included (default
	// 15m).
	Timeout time.Duration
	Jobs    int
	TempDir string
	Tools   Tools
	Keys    Keys
	Logger  *slog.Logger
}

// Rehearsal is what a spire-server did when it started on a restored copy
// of the datastore: its migration's duration and the locks it took.
type Rehearsal struct {
	ID            string        `json:"id"`
	ServerVersion string        `json:"server_version"`
	Before        spire.Schema  `json:"schema_before"`
	After         spire.Schema  `json:"schema_after"`
	Duration      time.Duration `json:"duration_ns"`
	// Locks are the table locks the server's sessions held while it
	// started (sampled every millisecond), strongest mode per table.
	Locks []RehearsalLock `json:"locks"`
}

// RehearsalLock is a relation and the strongest lock mode seen on it.
type RehearsalLock struct {
	Relation string `json:"relation"`
	Mode     string `json:"mode"`
}

// lockRank orders PostgreSQL's table lock modes by strength.
var lockRank = []string{"AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
	"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}

const rehearsalApp = "spiredb-rehearsal"

// RehearsalFailedError is a spire-server that did not become healthy on
// the restored copy: what the upgrade itself would do.
type RehearsalFailedError struct {
	Version string
	Reason  string
	// LogTail is the last lines of the server's log (secrets masked).
	LogTail string
}

func (e *RehearsalFailedError) Error() string {
	return fmt.Sprintf("spire-server %s %s on a restored copy of the datastore: %s", e.Version, e.Reason, e.LogTail)
}

// Rehearse restores a backup into a scratch database and starts the given
// spire-server on it, as an upgrade would: SPIRE migrates its schema at
// start-up. It reports how long the server took to become healthy, the
// schema before and after, and the locks its sessions took. The scratch
// database is dropped afterwards; the live datastore is not touched.
func Rehearse(ctx context.Context, o RehearseOptions) (*Rehearsal, error) {
	logger := orDiscard(o.Logger)
	if o.Store == nil || o.SpireServer == "" {
		return nil, errors.New("rehearse: a store and a spire-server binary are needed")
	}
	if o.Timeout <= 0 {
		o.Timeout = 15 * time.Minute
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	out, err := exec.CommandContext(ctx, o.SpireServer, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("running %s --version: %w", o.SpireServer, err)
	}
	res := &Rehearsal{ServerVersion: strings.TrimSpace(string(out)), Locks: []RehearsalLock{}}
	m, err := rehearsalBackup(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := m.Unlock(o.Keys.Identities); err != nil {
		return nil, err
	}
	res.ID = m.ID
	vo := VerifyOptions{Store: o.Store, Scratch: o.Scratch, Jobs: o.Jobs, TempDir: o.TempDir, Tools: o.Tools, Keys: o.Keys, Logger: o.Logger}
	var checks VerifyResult
	logger.Info("restoring the backup into a scratch database for the rehearsal", "id", m.ID)
	err = withScratchRestore(ctx, vo, m, "spiredb_rehearse_", &checks, logger, func(sopts pg.Options) error {
		return rehearseOn(ctx, o, sopts, res, logger)
	})
	if err != nil {
		return nil, err
	}
	if c := checks.Failed(); c != nil {
		return nil, fmt.Errorf("backup %s could not be restored for the rehearsal: %s: %s", m.ID, c.Name, c.Detail)
	}
	return res, nil
}

// rehearsalBackup picks the backup: o.ID, else the newest verified logical
// one, else the newest logical one.
func rehearsalBackup(ctx context.Context, o RehearseOptions) (*Manifest, error) {
	if o.ID != "" {
		return find(ctx, o.Store, o.ID, false, KindLogical, oneSource, o.Logger)
	}
	list, err := List(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	var newest, verified *Manifest
	for i := range list {
		b := &list[i]
		if b.Kind != "" && b.Kind != KindLogical || o.Source != nil && !o.Source.Restores(b) {
			continue
		}
		if newest == nil || b.FinishedAt.After(newest.FinishedAt) {
			newest = b
		}
		if b.Verified() && (verified == nil || b.FinishedAt.After(verified.FinishedAt)) {
			verified = b
		}
	}
	if verified != nil {
		return verified, nil
	}
	if newest == nil {
		return nil, fmt.Errorf("no logical backup in %s to rehearse on: spiredb backup run first", o.Store)
	}
	return newest, nil
}

func rehearseOn(ctx context.Context, o RehearseOptions, sopts pg.Options, res *Rehearsal, logger *slog.Logger) error {
	admin, err := pg.Connect(ctx, sopts)
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if res.Before, err = spire.ReadSchema(ctx, admin); err != nil {
		return err
	}
	if !res.Before.Present {
		return fmt.Errorf("backup %s has no SPIRE schema to migrate", res.ID)
	}
	td := o.TrustDomain
	if td == "" {
		if td, err = trustDomainOf(ctx, admin, res.Before.Schema); err != nil {
			return err
		}
	}
	conninfo, err := spireConnString(ctx, admin, sopts)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(o.TempDir, "spiredb-rehearse-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	port, err := freePort()
	if err != nil {
		return err
	}
	socket := filepath.Join(dir, "api.sock")
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "postgres"
      connection_string = %q
    }
  }
  KeyManager "memory" { plugin_data {} }
  NodeAttestor "join_token" { plugin_data {} }
}
`, port, socket, td, filepath.Join(dir, "data"), conninfo)
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	cmd := exec.Command(o.SpireServer, "run", "-config", confPath)
	cmd.Dir = dir
	// the server's log: at debug, redacted, the last lines kept for a
	// failure
	log := pgprog.NewOutput(logger, "spire-server")
	log.Level = slog.LevelDebug
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	// the server's sessions' relation locks, sampled until it is healthy
	// (connected before the server starts: its start-up reads take
	// milliseconds, and a monitor still connecting would miss them)
	locks := map[string]string{}
	mon := sopts
	mon.ApplicationName = "spiredb-rehearsal-monitor"
	monitor, err := pg.Connect(sctx, mon)
	if err != nil {
		return err
	}
	defer monitor.Close(context.WithoutCancel(ctx))
	sampled := make(chan error, 1)
	stopSampling := make(chan struct{})
	go func() { sampled <- sampleLocks(sctx, monitor, locks, stopSampling) }()

	start := time.Now()
	logger.Info("starting spire-server on the restored copy", "version", res.ServerVersion, "trust_domain", td)
	if err := cmd.Start(); err != nil {
		close(stopSampling)
		if err := <-sampled; err != nil {
			logger.Debug("sampling locks", "err", err) // the start failure is what matters
		}
		return fmt.Errorf("starting %s: %w", o.SpireServer, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		// the server is stopped on purpose: its exit status says little
		var err error
		select {
		case err = <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			err = <-exited
		}
		logger.Debug("rehearsal server stopped", "err", err)
	}
	healthy := false
	for !healthy {
		select {
		case err := <-exited:
			close(stopSampling)
			if err := <-sampled; err != nil {
				logger.Debug("sampling locks", "err", err)
			}
			return &RehearsalFailedError{Version: res.ServerVersion, Reason: fmt.Sprintf("exited (%v)", err), LogTail: log.Tail()}
		case <-sctx.Done():
			close(stopSampling)
			if err := <-sampled; err != nil {
				logger.Debug("sampling locks", "err", err)
			}
			stop()
			return &RehearsalFailedError{Version: res.ServerVersion, Reason: fmt.Sprintf("was not healthy after %s", o.Timeout), LogTail: log.Tail()}
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := os.Stat(socket); err == nil {
			hc := exec.CommandContext(sctx, o.SpireServer, "healthcheck", "-shallow", "-socketPath", socket)
			healthy = hc.Run() == nil
		}
	}
	res.Duration = time.Since(start)
	close(stopSampling)
	serr := <-sampled
	stop()
	if serr != nil {
		return fmt.Errorf("sampling the server's locks: %w", serr)
	}
	for rel, mode := range locks {
		res.Locks = append(res.Locks, RehearsalLock{Relation: rel, Mode: mode})
	}
	slices.SortFunc(res.Locks, func(a, b RehearsalLock) int {
		if d := slices.Index(lockRank, b.Mode) - slices.Index(lockRank, a.Mode); d != 0 {
			return d
		}
		return strings.Compare(a.Relation, b.Relation)
	})
	if res.After, err = spire.ReadSchema(ctx, admin); err != nil {
		return err
	}
	logger.Info("rehearsal done", "duration", res.Duration.Round(time.Millisecond), "schema_before", res.Before.Version, "schema_after", res.After.Version)
	return nil
}

// sampleLocks records, every millisecond, the relation locks granted to the
// rehearsal server's sessions, keeping the strongest mode per relation.
func sampleLocks(ctx context.Context, conn *pgx.Conn, locks map[string]string, stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-time.After(time.Millisecond):
		}
		rows, err := conn.Query(ctx, pg.Marker+`SELECT l.relation::regclass::text, l.mode FROM pg_catalog.pg_locks l
			JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
			JOIN pg_catalog.pg_class c ON c.oid = l.relation AND c.relkind IN ('r', 'p', 'm')
			WHERE a.application_name = $1 AND l.locktype = 'relation' AND l.granted
			  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())`, rehearsalApp)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var rel, mode string
		_, err = pgx.ForEachRow(rows, []any{&rel, &mode}, func() error {
			if strings.HasPrefix(rel, "pg_") {
				return nil
			}
			if slices.Index(lockRank, mode) > slices.Index(lockRank, locks[rel]) {
				locks[rel] = mode
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
}

// trustDomainOf is the trust domain most registration entries are in
// (of the first thousand), else the first bundle's.
func trustDomainOf(ctx context.Context, conn *pgx.Conn, nsp string) (string, error) {
	q := pgx.Identifier{nsp}.Sanitize()
	var td string
	err := conn.QueryRow(ctx, pg.Marker+`SELECT split_part(spiffe_id, '/', 3) FROM (SELECT spiffe_id FROM `+q+`.registered_entries
		WHERE spiffe_id LIKE 'spiffe://%' LIMIT 1000) s GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1`).Scan(&td)
	if err == nil && td != "" {
		return td, nil
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("finding the trust domain: %w", err)
	}
	var bundle string
	err = conn.QueryRow(ctx, pg.Marker+"SELECT trust_domain FROM "+q+".bundles ORDER BY id LIMIT 1").Scan(&bundle)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", errors.New("no entry or bundle names a trust domain: pass --trust-domain")
	}
	if err != nil {
		return "", fmt.Errorf("finding the trust domain: %w", err)
	}
	u, err := url.Parse(bundle)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("cannot read a trust domain from bundle %q: pass --trust-domain", bundle)
	}
	return u.Host, nil
}

// spireConnString is a lib/pq connection string to the scratch database:
// sopts' parameters, its database, the rehearsal's application_name, and
// an sslmode lib/pq accepts (it has no "prefer": the session's own TLS
// state decides).
func spireConnString(ctx context.Context, conn *pgx.Conn, sopts pg.Options) (string, error) {
	p, err := dsn.Parse(sopts.DSN)
	if err != nil {
		return "", err
	}
	p["dbname"] = sopts.Database
	p["application_name"] = rehearsalApp
	switch p["sslmode"] {
	case "disable", "require", "verify-ca", "verify-full":
	default:
		var ssl bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT coalesce((SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()), false)").Scan(&ssl); err != nil {
			return "", err
		}
		p["sslmode"] = "disable"
		if ssl {
			p["sslmode"] = "require"
		}
	}
	s := p.String()
	dsn.RememberDSN(s)
	return s, nil
}

func freePort() (int, error) {
	// spire-server wants a port outside the ephemeral range; ask the
	// kernel for one there by trying a few
	for p := 20000 + os.Getpid()%10000; p < 32000; p += 7 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			_ = l.Close()
			return p, nil
		}
	}
	return 0, errors.New("no free port for the rehearsal server")
}
