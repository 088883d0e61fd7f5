// Package pgbouncertest starts a real PgBouncer (Debian's) in front of a
// test cluster, in session or transaction pooling, stopped when the test
// ends.
package pgbouncertest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
)

// Bouncer is a running PgBouncer.
type Bouncer struct {
	Port    int
	cluster *pgcluster.Cluster
}

// DSN is a URL to database db through the bouncer, as the cluster's user.
func (b *Bouncer) DSN(db string) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", b.cluster.User, b.cluster.Password, b.Port, db)
}

// Start runs pgbouncer with pool_mode mode ("session" or "transaction") in
// front of c. It skips the test when pgbouncer is not installed.
func Start(t testing.TB, c *pgcluster.Cluster, mode string) *Bouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = "/usr/sbin/pgbouncer"
		if _, serr := os.Stat(bin); serr != nil {
			t.Skip("pgbouncer is not installed (apt install pgbouncer; scripts/setup.sh apt does)")
		}
	}
	// not t.TempDir: its parent is private to root, and pgbouncer runs as
	// the postgres user
	dir, err := os.MkdirTemp("", "spiredb-pgbouncer-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = plain
auth_file = %s
pool_mode = %s
max_client_conn = 200
default_pool_size = 4
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
`, c.Host, c.Port, port, filepath.Join(dir, "userlist.txt"), mode, filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(fmt.Sprintf("%q %q\n", c.User, c.Password)), 0o644))

	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 { // pgbouncer refuses to run as root
		u, err := user.Lookup("postgres")
		require.NoError(t, err)
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		require.NoError(t, os.Chown(dir, uid, gid))
		for _, f := range []string{"pgbouncer.ini", "userlist.txt"} {
			require.NoError(t, os.Chown(filepath.Join(dir, f), uid, gid))
		}
		require.NoError(t, os.Chmod(filepath.Join(dir, "userlist.txt"), 0o600))
	}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			_ = conn.Close()
			break
		}
		if ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer did not listen on %d: %s %s", port, log, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &Bouncer{Port: port, cluster: c}
}
