package pgcluster_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
)

func TestStartQueryStop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := testRoot(t)
	c, err := pgcluster.Start(ctx, pgcluster.Options{Root: root, BinDir: os.Getenv("SPIREDB_PG_BIN")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })

	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	var preload, walLevel, listen string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('shared_preload_libraries'), current_setting('wal_level'), current_setting('listen_addresses')").Scan(&preload, &walLevel, &listen))
	require.Equal(t, "pg_stat_statements", preload)
	require.Equal(t, "replica", walLevel)
	require.Equal(t, "127.0.0.1", listen)
	require.NoError(t, conn.Close(ctx))

	// password auth is real: a wrong password is refused
	bad := *c
	bad.Password = "wrong"
	_, err = pgx.Connect(ctx, bad.DSN("postgres"))
	require.Error(t, err)

	pid := c.PID()
	require.NoError(t, c.Stop())
	require.Error(t, syscall.Kill(pid, 0), "postmaster still alive after Stop")
	_, err = os.Stat(c.Dir)
	require.True(t, os.IsNotExist(err), "cluster dir left behind")
}

// A cluster whose owner died (a killed `go test`) is found by its pidfile and
// stopped by the next Start in the same root.
func TestCleanStaleStopsOrphanedCluster(t *testing.T) {
	t.Parallel()
	if os.Getenv("PGCLUSTER_CHILD") == "1" {
		t.Skip("child mode runs only TestOrphanChild")
	}
	root := testRoot(t)
	// A child test process starts a cluster and is SIGKILLed before it can
	// stop it. Pdeathsig would stop the postmaster on its own, so the child
	// is told to disable it: we are testing the pidfile path.
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run", "^TestOrphanChild$", "-test.v")
	cmd.Env = append(os.Environ(), "PGCLUSTER_CHILD=1", "PGCLUSTER_ROOT="+root)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))

	pidfiles, _ := filepath.Glob(filepath.Join(root, "*", "data", "postmaster.pid"))
	require.Len(t, pidfiles, 1, "the orphan should still be running")
	pid := readPID(t, pidfiles[0])
	require.NoError(t, syscall.Kill(pid, 0), "orphan postmaster should be alive")

	pgcluster.CleanStale(root, nil)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	require.Error(t, syscall.Kill(pid, 0), "CleanStale left the orphan running")
	entries, _ := os.ReadDir(root)
	require.Empty(t, entries)
}

// TestOrphanChild starts a cluster and exits without stopping it, as a killed
// test would. It only does so when run by TestCleanStaleStopsOrphanedCluster.
func TestOrphanChild(t *testing.T) {
	if os.Getenv("PGCLUSTER_CHILD") != "1" {
		t.Skip("helper for TestCleanStaleStopsOrphanedCluster")
	}
	// Without the parent-death signal the postmaster outlives us, as it
	// would if the owner were killed in a way the kernel signal misses.
	pgcluster.DisableParentDeathSignal()
	_, err := pgcluster.Start(context.Background(), pgcluster.Options{Root: os.Getenv("PGCLUSTER_ROOT"), BinDir: os.Getenv("SPIREDB_PG_BIN")})
	require.NoError(t, err)
	os.Exit(0)
}

func readPID(t *testing.T, pidfile string) int {
	b, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	return pid
}

// testRoot is a cluster root the postgres OS user can enter (t.TempDir is
// 0700 root-owned).
func testRoot(t *testing.T) string {
	root, err := os.MkdirTemp("", "pgcluster-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(root, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	return root
}
