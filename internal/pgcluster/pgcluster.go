// Package pgcluster starts and stops throwaway PostgreSQL clusters from the
// local server binaries. The test harness (internal/pgtest), the demo and the
// benchmarks use it.
//
// A cluster lives in its own directory under a root that only this package
// writes to. The directory holds an "owner" file naming the process that
// started it (pid and start time). CleanStale finds clusters whose owner is
// gone (a killed `go test`, an interrupted `make demo`) and stops their
// postmaster by the pid in postmaster.pid, after checking that the pid really
// is that cluster's postmaster. Nothing is ever stopped by process name.
//
// Running as root, the server binaries run as the "postgres" OS user, since
// initdb and postgres refuse root.
package pgcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// Options configure a cluster.
type Options struct {
	// BinDir holds initdb and postgres; empty means discover (FindBinDir).
	BinDir string
	// Root is the directory clusters are created in; empty means
	// DefaultRoot().
	Root string
	// Durable keeps fsync and full_page_writes on (benchmarks); tests run
	// without them.
	Durable bool
	// Settings are extra postgresql.conf lines (name → value, quoted as
	// needed by the caller).
	Settings map[string]string
	// Logger receives progress lines; nil discards.
	Logger *slog.Logger
}

// Cluster is a running throwaway PostgreSQL server listening on 127.0.0.1.
type Cluster struct {
	Dir      string // the cluster's own directory (data/, log, owner)
	DataDir  string
	BinDir   string
	Host     string
	Port     int
	User     string
	Password string

	cmd     *exec.Cmd
	exited  chan struct{}
	cred    *syscall.Credential
	logger  *slog.Logger
	logPath string
}

// pdeathsig is sent to the postmaster when the process that started it dies.
var pdeathsig = syscall.SIGQUIT

// DefaultRoot is the directory all spiredb throwaway clusters live under.
func DefaultRoot() string { return filepath.Join(os.TempDir(), "spiredb-clusters") }

// FindBinDir returns the first of: explicit, `pg_config --bindir`, the
// newest /usr/lib/postgresql/*/bin that holds initdb.
func FindBinDir(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(filepath.Join(explicit, "initdb")); err != nil {
			return "", fmt.Errorf("PostgreSQL bin dir %s has no initdb: %w", explicit, err)
		}
		return explicit, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	return "", errors.New("no PostgreSQL server binaries found: install postgresql (scripts/setup.sh) or set SPIREDB_PG_BIN")
}

func versionOf(initdbPath string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdbPath))))
	return v
}

// Start creates and starts a new cluster. The caller must Stop it.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bin, err := FindBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	root := opts.Root
	if root == "" {
		root = DefaultRoot()
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("creating cluster root: %w", err)
	}
	CleanStale(root, logger)

	dir, err := os.MkdirTemp(root, "cluster-")
	if err != nil {
		return nil, fmt.Errorf("creating cluster dir: %w", err)
	}
	c := &Cluster{Dir: dir, DataDir: filepath.Join(dir, "data"), BinDir: bin, Host: "127.0.0.1",
		User: "postgres", Password: randomHex(16), logger: logger, logPath: filepath.Join(dir, "postgres.log")}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	if err := WriteOwner(dir); err != nil {
		return nil, err
	}
	if c.cred, err = serverCredential(); err != nil {
		return nil, err
	}
	// 0755 so the postgres user can reach the data dir and socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := c.chown(pwfile); err != nil {
		return nil, err
	}
	if err := c.chown(dir); err != nil {
		return nil, err
	}
	args := []string{"-D", c.DataDir, "-U", c.User, "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"}
	major, err := pgprog.Version(ctx, filepath.Join(bin, "initdb"))
	if err != nil {
		return nil, err
	}
	if major >= 14 { // --no-instructions came in 14
		args = append(args, "--no-instructions")
	}
	initdb := c.command(ctx, "initdb", args...)
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, lastLines(string(out), 5))
	}
	_ = os.Remove(pwfile)

	port, err := FreePort(0, 0)
	if err != nil {
		return nil, err
	}
	c.Port = port
	conf := map[string]string{
		"listen_addresses":         "'127.0.0.1'",
		"port":                     strconv.Itoa(port),
		"unix_socket_directories":  "'" + dir + "'",
		"shared_preload_libraries": "'pg_stat_statements'",
		"pg_stat_statements.track": "all",
		"wal_level":                "replica",
		"max_wal_senders":          "10",
		"max_replication_slots":    "10",
		"hot_standby":              "on",
		"wal_log_hints":            "on", // replica rejoin (pg_rewind) needs it, as operators should have it
		"max_connections":          "200",
		"shared_buffers":           "128MB",
		"log_min_messages":         "warning",
		"log_line_prefix":          "'%m [%p] %q%a '",
	}
	if !opts.Durable {
		conf["fsync"] = "off"
		conf["full_page_writes"] = "off"
		conf["synchronous_commit"] = "off"
	}
	for k, v := range opts.Settings {
		conf[k] = v
	}
	if err := appendConf(filepath.Join(c.DataDir, "postgresql.conf"), conf); err != nil {
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	logger.Debug("cluster started", "dir", dir, "port", port)
	return c, nil
}

// StartExisting starts a server on a data directory that already exists
// inside a harness directory (a standby made by pg_basebackup, say). dir must
// be under a harness root; the cluster takes over its owner file. password
// is the "postgres" role's (the cluster the directory came from).
func StartExisting(ctx context.Context, dir, dataDir, binDir string, port int, password string, logger *slog.Logger) (*Cluster, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, DataDir: dataDir, BinDir: binDir, Host: "127.0.0.1", Port: port, User: "postgres", Password: password,
		cred: cred, logger: logger, logPath: filepath.Join(dir, "postgres-"+strconv.Itoa(port)+".log")}
	if err := WriteOwner(dir); err != nil {
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Not CommandContext: the server must outlive the start-up context.
	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), "-D", c.DataDir, "-p", strconv.Itoa(c.Port))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,      // a ^C to `make test` must not fast-stop it before we do
		Pdeathsig:  pdeathsig, // our process died: immediate shutdown
		Credential: c.cred,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(c.exited) }()
	return c.waitReady(ctx)
}

func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			return fmt.Errorf("postgres exited during start-up: %s", c.LogTail(10))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.DSN("postgres"))
		cancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres not ready after 60s: %w: %s", lastErr, c.LogTail(10))
}

// DSN returns a URL DSN for database db on this cluster.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", c.User, c.Password, c.Host, c.Port, db)
}

// KVDSN returns a key=value DSN (the form SPIRE's config and libpq tools take).
func (c *Cluster) KVDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", c.Host, c.Port, c.User, c.Password, db)
}

// PID returns the postmaster's pid, or 0 when stopped.
func (c *Cluster) PID() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// CreateDatabase creates a database and returns its DSN.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := pg.CreateDatabase(ctx, pg.Options{DSN: c.DSN("postgres")}, name); err != nil {
		return "", err
	}
	return c.DSN(name), nil
}

// DropDatabase drops a database, ending its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	return pg.DropDatabase(ctx, pg.Options{DSN: c.DSN("postgres")}, name)
}

// Stop shuts the server down (fast, then immediate after 10s) and removes
// the cluster directory.
func (c *Cluster) Stop() error {
	err := c.Halt()
	if rmErr := os.RemoveAll(c.Dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// Halt shuts the server down but keeps its directory.
func (c *Cluster) Halt() error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	select {
	case <-c.exited:
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = c.cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown
	select {
	case <-c.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
	return errors.New("postgres did not stop; killed")
}

// Restart starts a halted server again on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Halt(); err != nil {
		return err
	}
	return c.start(ctx)
}

// Crash stops the server without a shutdown checkpoint (SIGQUIT), as a
// power loss or OOM kill would.
func (c *Cluster) Crash() {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGQUIT)
		<-c.exited
	}
}

// LogFile is the server log's path (the server's stderr).
func (c *Cluster) LogFile() string { return c.logPath }

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	return lastLines(string(b), n)
}

// Command returns a command for a server binary (pg_basebackup, pg_ctl, …)
// that runs as the server's OS user.
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return c.command(ctx, name, args...)
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = c.Dir
	return cmd
}

// Chown gives path to the server's OS user (no-op unless running as root).
func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(c.cred.Uid), int(c.cred.Gid))
	})
}

// ServerCredential is what server binaries run as: nil when not root, the
// postgres OS user when root.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a 'postgres' OS user for the server binaries: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// ServerCredential exposes serverCredential to packages that run server
// binaries themselves (replication bootstrap).
func ServerCredential() (*syscall.Credential, error) { return serverCredential() }

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on. With
// lo > 0 it picks from [lo, hi] (spire-server wants ports outside the
// ephemeral range); otherwise the kernel chooses.
func FreePort(lo, hi int) (int, error) {
	if lo <= 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	for range 200 {
		p := lo + int(randUint32()%uint32(hi-lo+1))
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			_ = l.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d", lo, hi)
}

func randUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func appendConf(path string, conf map[string]string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "\n# spiredb harness")
	for _, k := range keys {
		fmt.Fprintf(w, "%s = %s\n", k, conf[k])
	}
	return w.Flush()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
