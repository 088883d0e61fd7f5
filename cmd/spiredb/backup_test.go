package main

import (
	"context"
	"encoding/json"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/pg"
)

func TestBackupUsageErrors(t *testing.T) {
	t.Parallel()
	store := "file://" + t.TempDir()
	for _, args := range [][]string{
		{"backup", "run"}, // no store
		{"backup", "run", "--store", "ftp://x/y"},
		{"backup", "run", "--store", store, "--compress", "12"},
		{"backup", "verify", "--store", store},
		{"backup", "verify", "--store", store, "--latest", "--id", "x"},
		{"backup", "verify", "--store", store, "--latest", "--level", "deep"},
		{"backup", "restore", "--store", store, "--latest"},
		{"backup", "restore", "--store", store, "--latest", "--target-dsn", "x", "--jobs", "0"},
		{"backup", "prune", "--store", store},
		{"backup", "prune", "--store", store, "--keep-within", "30 days"},
		{"backup", "prune", "--store", store, "--keep-last", "-2"},
		{"backup", "run", "--store", "s3://b/p", "--sse", "DES"},
	} {
		out, errOut, code := runArgs(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.Empty(t, out, "%v", args)
		require.Equal(t, 0, strings.Count(strings.TrimSpace(errOut), "\n"), "one line for %v: %q", args, errOut)
	}
}

// Not parallel: the AWS credential chain reads the process environment.
func TestBackupUnreachableStoreExits3WithoutSecrets(t *testing.T) {
	db := pgtest.NewDB(t)
	b := s3test.NewBucket(t)
	for name, tc := range map[string]struct {
		bucket, endpoint, secret, want string
	}{
		"missing bucket": {"no-such-bucket", b.Endpoint, b.SecretKey, "does not exist"},
		"wrong secret":   {b.Name, b.Endpoint, "wrong-secret-0123456789", "access denied"},
		"unreachable":    {b.Name, "http://127.0.0.1:1", b.SecretKey, "cannot reach the S3 endpoint"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", b.AccessKey)
			t.Setenv("AWS_SECRET_ACCESS_KEY", tc.secret)
			t.Setenv("AWS_REGION", s3test.Region)
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			out, errOut, code := runArgs(t, "backup", "run", "--dsn", db.DSN, "--store", "s3://"+tc.bucket+"/x", "--s3-endpoint", tc.endpoint, "--s3-path-style")
			require.Equal(t, exitUnreachable, code, errOut)
			require.Empty(t, out)
			require.Contains(t, errOut, tc.want)
			require.NotContains(t, errOut, tc.secret)
			require.NotContains(t, errOut, db.Cluster.Password)
		})
	}
}

func TestBackupRunWhileAnotherRunsExits0(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	holder, err := pg.Connect(ctx, pg.Options{DSN: db.DSN})
	require.NoError(t, err)
	defer holder.Close(ctx)
	_, err = holder.Exec(ctx, "SELECT pg_advisory_lock($1)", pg.AdvisoryKey("backup"))
	require.NoError(t, err)

	dir := t.TempDir()
	out, errOut, code := runArgs(t, "backup", "run", "--dsn", db.DSN, "--store", "file://"+dir, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, true, res["skipped"])
	require.Equal(t, "another backup of this database is running", res["reason"])

	out, _, code = runArgs(t, "backup", "list", "--store", "file://"+dir)
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "no backups in file://"+dir)
}

func TestBackupVerifyFailureExits1NamingTheCheck(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	_, err := db.Pool.Exec(context.Background(), "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
	require.NoError(t, err)
	dir := t.TempDir()
	out, errOut, code := runArgs(t, "backup", "run", "--dsn", db.DSN, "--store", "file://"+dir, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var m struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &m))
	// truncate the stored dump
	require.NoError(t, truncateFile(dir+"/"+m.ID+"/dump", 100))
	out, errOut, code = runArgs(t, "backup", "verify", "--dsn", db.DSN, "--store", "file://"+dir, "--latest")
	require.Equal(t, exitFailure, code)
	require.Contains(t, out, "FAIL checksum")
	require.Contains(t, errOut, "failed verification: checksum: size mismatch")
	out, _, _ = runArgs(t, "backup", "list", "--store", "file://"+dir)
	require.Contains(t, out, "FAILED (checksum) restore")
}

func TestReplicaUsageAndRefusals(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"replica", "bootstrap", "--data-dir", "/tmp/x"},
		{"replica", "bootstrap", "--primary-dsn", "x"},
		{"replica", "status", "--max-lag", "lots"},
		{"replica", "promote", "--max-lag", "-5s"},
		{"replica", "fence", "--dsn", "postgres://u@127.0.0.1:1/db", "--force", "--yes"},
		{"replica", "nonsense"},
	} {
		out, errOut, code := runArgs(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.Empty(t, out)
		require.Equal(t, 0, strings.Count(strings.TrimSpace(errOut), "\n"), "one line for %v: %q", args, errOut)
	}
	db := pgtest.NewDB(t)
	out, errOut, code := runArgs(t, "replica", "promote", "--dsn", db.DSN, "--yes")
	require.Equal(t, exitFailure, code)
	require.Empty(t, out)
	require.Contains(t, errOut, "not a standby")
	out, _, code = runArgs(t, "replica", "status", "--dsn", db.DSN)
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "no standbys connected")
}

func TestTune(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"tune", "recommend"},
		{"tune", "recommend", "--ram", "lots", "--cpus", "2"},
		{"tune", "recommend", "--ram", "16GB", "--cpus", "2", "--storage", "tape"},
		{"tune", "recommend", "--ram", "16GB", "--cpus", "2", "--spire-servers", "100"},
		{"tune", "check", "--ram", "16GB"},
		{"version", "-o", "sql"},
	} {
		out, errOut, code := runArgs(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.Empty(t, out, "%v", args)
		require.Equal(t, 0, strings.Count(strings.TrimSpace(errOut), "\n"), "one line for %v: %q", args, errOut)
	}
	out, _, code := runArgs(t, "tune", "recommend", "--ram", "8GB", "--cpus", "2", "-o", "conf")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "shared_buffers = '2GB'")

	db := pgtest.NewDB(t)
	out, errOut, code := runArgs(t, "tune", "check", "--dsn", db.DSN, "--ram", "8GB", "--cpus", "2", "-o", "json")
	require.Equal(t, exitFailure, code, errOut) // the harness runs with 128MB shared_buffers
	var diffs []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &diffs))
	require.NotEmpty(t, diffs)
	require.NotContains(t, out+errOut, db.Cluster.Password)
}

// The streaming commands set a soft memory limit unless GOMEMLIMIT does.
func TestBoundStreamMemory(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	t.Setenv("GOMEMLIMIT", "")
	debug.SetMemoryLimit(math.MaxInt64)
	boundStreamMemory()
	require.Equal(t, int64(streamMemoryLimit), debug.SetMemoryLimit(-1))

	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetMemoryLimit(1 << 30)
	boundStreamMemory()
	require.Equal(t, int64(1<<30), debug.SetMemoryLimit(-1), "the operator's GOMEMLIMIT wins")
}
