package integration_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/spire"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var (
	buildOnce sync.Once
	cliPath   string
	buildErr  error
)

// spiredbCLI builds the real spiredb binary once per test run.
func spiredbCLI(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "spiredb-cli-")
		if err != nil {
			buildErr = err
			return
		}
		// the server's OS user runs it too (archive_command, restore_command)
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		cliPath = filepath.Join(dir, "spiredb")
		out, err := exec.Command("go", "build", "-o", cliPath, "github.com/spiredb/spiredb/cmd/spiredb").CombinedOutput()
		if err != nil {
			buildErr = &buildError{out: string(out), err: err}
		}
	})
	require.NoError(t, buildErr)
	return cliPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// runCLI runs spiredb with args and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runCLIAs(t, nil, env, args...)
}

// runCLIAs is runCLI as another OS user (cred nil: this process's).
func runCLIAs(t *testing.T, cred *syscall.Credential, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, spiredbCLI(t), args...)
	cmd.Env = append(os.Environ(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
	}
	return runCmd(t, cmd)
}

// runCmd runs cmd and returns stdout, stderr and the exit code; the test
// fails when it cannot be run at all.
func runCmd(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return stdout.String(), stderr.String(), code
}

// startSpire starts a real spire-server on db, stopped when the test ends.
func startSpire(t *testing.T, db *pgtest.DB, opts spiretest.Options) *spiretest.Server {
	t.Helper()
	if opts.ConnectionString == "" {
		opts.ConnectionString = db.Cluster.KVDSN(db.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := spiretest.Start(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-server log:\n%s", srv.LogTail(30))
		}
		srv.Stop()
	})
	return srv
}

// loadFixture fills db with n SPIRE entries through the COPY loader.
func loadFixture(t *testing.T, db *pgtest.DB, spec spirefixture.Spec) spirefixture.Summary {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	sum, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spec)
	require.NoError(t, err)
	return sum
}
