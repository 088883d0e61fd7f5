package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/pgtest/pgmajor"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

const imageTag = "localhost/spiredb:test"

var (
	imageOnce sync.Once
	imageSize int64
	imageErr  error
)

// spiredbImage builds the image from deploy/Dockerfile (target prebuilt,
// with this run's binary) once per test run, with podman and no registry
// (scripts/image.sh), and returns its size in bytes.
func spiredbImage(t *testing.T) int64 {
	t.Helper()
	bin := spiredbCLI(t)
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "../scripts/image.sh", bin, imageTag)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			imageErr = errors.New("scripts/image.sh: " + err.Error() + ": " + stderr.String())
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		imageSize, imageErr = strconv.ParseInt(lines[len(lines)-1], 10, 64)
	})
	require.NoError(t, imageErr)
	return imageSize
}

// runImage runs the image as a Kubernetes Job would (read-only root, no
// capabilities, uid 10001, an emptyDir on /tmp), on the host's network so
// that it reaches the harness's servers on 127.0.0.1. env entries are
// passed by name (--env NAME) so that no secret is on podman's argv.
func runImage(t *testing.T, env []string, volumes []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	argv := []string{"run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp:mode=1777", "--cap-drop", "ALL", "--user", "10001:10001"}
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		argv = append(argv, "--env", name)
	}
	for _, v := range volumes {
		argv = append(argv, "--volume", v)
	}
	argv = append(argv, imageTag)
	cmd := exec.CommandContext(ctx, "podman", append(argv, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "CONTAINERS_CONF="+filepath.Join(harness.CacheDir(), "image", "containers.conf"))
	return runCmd(t, cmd)
}

// The image operators run, built and run here: version, doctor, a backup
// to S3 (versitygw), a verification by real restore, a restore and a standby
// bootstrap, on PostgreSQL 15 (the machine's) and 17 (the newest the
// image's client tools dump), as uid 10001 on a read-only root.
func TestImage(t *testing.T) {
	size := spiredbImage(t)
	t.Logf("image size: %d MB", size/1e6)
	assert.LessOrEqual(t, size, int64(150e6), "image size goal")

	out, stderr, code := runImage(t, nil, nil, "version")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "spiredb")
	out, _, code = runImage(t, nil, nil, "--help")
	require.Equal(t, 0, code)
	require.Contains(t, out, "backup")

	// doctor with nothing listening: exit 3 (unreachable)
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	_, stderr, code = runImage(t, nil, nil, "doctor", "--dsn", "postgres://spire@127.0.0.1:"+strconv.Itoa(port)+"/spire?sslmode=disable&connect_timeout=2")
	require.Equal(t, 3, code, stderr)

	for _, tc := range []struct {
		name string
		db   func(t *testing.T) *pgtest.DB
	}{
		{"pg15", func(t *testing.T) *pgtest.DB { return pgtest.NewDB(t) }},
		{"pg17", func(t *testing.T) *pgtest.DB {
			return pgtest.NewDBOn(t, pgtest.NewCluster(t, pgcluster.Options{BinDir: pgmajor.BinDir(t, 17)}))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := tc.db(t)
			loadFixture(t, db, spirefixture.Spec{Entries: 500})
			b := s3test.NewBucket(t)
			env, store := s3CLI(b, "img")
			out, stderr, code := runImage(t, env, nil, append([]string{"backup", "run", "--dsn", db.DSN, "-o", "json"}, store...)...)
			require.Equal(t, 0, code, stderr)
			var m backup.Manifest
			require.NoError(t, json.Unmarshal([]byte(out), &m), out)
			require.EqualValues(t, 500, m.RowCounts["registered_entries"])
			assert.NotContains(t, out+stderr, b.SecretKey)
			assert.NotContains(t, out+stderr, db.Cluster.Password)

			out, stderr, code = runImage(t, env, nil, append([]string{"backup", "verify", "--dsn", db.DSN, "--id", m.ID, "--level", "restore"}, store...)...)
			require.Equal(t, 0, code, out+stderr)
			assert.NotContains(t, out+stderr, db.Cluster.Password)

			dst := pgtest.NewDBOn(t, db.Cluster)
			out, stderr, code = runImage(t, env, nil, append([]string{"backup", "restore", "--latest", "--target-dsn", dst.DSN}, store...)...)
			require.Equal(t, 0, code, out+stderr)
			var n int
			require.NoError(t, dst.Pool.QueryRow(context.Background(), "SELECT count(*) FROM registered_entries").Scan(&n))
			require.Equal(t, 500, n)

			if tc.name == "pg17" {
				// this machine's pg_restore 15 cannot read pg_dump 17's
				// archive: one line naming the fix, nothing restored
				_, stderr, code := runCLI(t, env, append([]string{"backup", "verify", "--dsn", db.DSN, "--id", m.ID, "--level", "restore"}, store...)...)
				require.NotEqual(t, 0, code)
				assert.Contains(t, stderr, "was made by pg_dump 17, and pg_restore 15 cannot read its archive: install postgresql-client-17")

				// and no pg_restore both reads it and restores into a 15 server
				old := pgtest.NewDB(t)
				_, stderr, code = runImage(t, env, nil, append([]string{"backup", "restore", "--latest", "--target-dsn", old.DSN}, store...)...)
				require.NotEqual(t, 0, code)
				assert.Contains(t, stderr, "cannot restore into PostgreSQL 15 (they set transaction_timeout): restore into a PostgreSQL 17 or newer server")
				var rels int
				require.NoError(t, old.Pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").Scan(&rels))
				assert.Zero(t, rels, "nothing restored")
			}
			if tc.name == "pg15" {
				// the newest pg_restore cannot restore into an older server:
				// one line naming the fix, before anything is restored
				out, stderr, code = runImage(t, env, nil, append([]string{"backup", "verify", "--dsn", db.DSN, "--id", m.ID, "--level", "restore", "--pg-bin", "/usr/lib/postgresql/17/bin"}, store...)...)
				require.NotEqual(t, 0, code, out+stderr)
				assert.Contains(t, out+stderr, "pg_restore 17 cannot restore into PostgreSQL 15 (it sets transaction_timeout, new in 17): install postgresql-client-15")
			}

			// a standby's data directory on a volume the image's user owns
			dir := filepath.Join(t.TempDir(), "standby")
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, os.Chown(dir, 10001, 10001))
			_, stderr, code = runImage(t, nil, []string{dir + ":/data"}, "replica", "bootstrap",
				"--primary-dsn", db.Cluster.DSN("postgres"), "--data-dir", "/data/pgdata")
			require.Equal(t, 0, code, stderr)
			// the standby's slot stays on the primary until dropped: drop
			// it, other tests read the shared cluster's replication state
			var slot string
			require.NoError(t, db.Pool.QueryRow(context.Background(),
				"SELECT pg_drop_replication_slot(slot_name)::text || slot_name FROM pg_replication_slots WHERE slot_name = 'spiredb_pgdata'").Scan(&slot))
			assert.FileExists(t, filepath.Join(dir, "pgdata", "standby.signal"))
			auto, err := os.ReadFile(filepath.Join(dir, "pgdata", "postgresql.auto.conf"))
			require.NoError(t, err)
			assert.Contains(t, string(auto), "primary_conninfo")
			assert.NotContains(t, string(auto), db.Cluster.Password)
		})
	}
}
