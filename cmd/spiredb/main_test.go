package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func runArgs(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestVersionJSON(t *testing.T) {
	t.Parallel()
	out, _, code := runArgs(t, "version", "-o", "json")
	require.Equal(t, 0, code)
	var v versionInfo
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	require.NotEmpty(t, v.Version)
	require.True(t, strings.HasPrefix(v.Go, "go"))
}

func TestUsageErrorsExit2WithOneLine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"no-such-command"},
		{"version", "extra-arg"},
		{"version", "-o", "yaml"},
		{"version", "--log-level", "loud"},
		{"version", "--log-format", "xml"},
		{"backup", "restore", "--physical", "--plan", "--store", "file:///nonexistent", "--latest", "--data-dir", "/nonexistent"},
		{"backup", "restore", "--plan", "--clean", "--store", "file:///nonexistent", "--latest", "--target-dsn", "host=/nonexistent"},
		{"backup", "diff", "--store", "file:///nonexistent"},
		{"backup", "diff", "--store", "file:///nonexistent", "--latest", "--sample", "-1"},
		{"spire", "check-config"},
		{"spire", "check-config", "/nonexistent/server.conf"},
		{"spire", "check-config", "/nonexistent/server.conf", "--servers", "0"},
		{"spire", "upgrade-check"},
		{"spire", "upgrade-check", "--to", "1.x"},
		{"spire", "upgrade-check", "--to", "1.14.0", "--spire-server", "/nonexistent/spire-server"},
		{"doctor", "--events-prune-older-than", "0s"},
	} {
		out, errOut, code := runArgs(t, args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errOut)
		require.Empty(t, out, "%v", args)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, "one line for %v: %q", args, errOut)
		require.True(t, strings.HasPrefix(errOut, "spiredb: "), errOut)
	}
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	t.Parallel()
	out, _, code := runArgs(t, "--help")
	require.Equal(t, 0, code)
	require.Contains(t, out, "Exit codes:")
	require.Contains(t, out, "3  could not connect")
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	out, _, code := runArgs(t, "completion", "bash")
	require.Equal(t, 0, code)
	require.Contains(t, out, "__start_spiredb")
}

func TestDoctorWithoutSPIRE(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	out, errOut, code := runArgs(t, "doctor", "--dsn", db.DSN)
	// pg_stat_statements is preloaded by the harness but not created in a
	// fresh database: a warning, exit 4
	require.Equal(t, exitWarning, code, errOut)
	require.Contains(t, out, "no SPIRE schema here")
	require.Contains(t, out, "CREATE EXTENSION pg_stat_statements")
	require.Contains(t, out, "(primary)")
	require.NotContains(t, out+errOut, db.Cluster.Password)

	_, err := db.Pool.Exec(context.Background(), "CREATE EXTENSION pg_stat_statements")
	require.NoError(t, err)
	out, _, code = runArgs(t, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, exitOK, code, out)
	var rep map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Equal(t, "info", rep["worst"])
}

func TestDoctorUnreachableAndWrongPassword(t *testing.T) {
	t.Parallel()
	c := pgtest.Cluster(t)
	bad := *c
	bad.Password = "not-the-password-42"
	for _, d := range []string{bad.DSN("postgres"), bad.KVDSN("postgres"), "postgres://u:pw-9f8e7d@127.0.0.1:1/x?connect_timeout=2"} {
		out, errOut, code := runArgs(t, "doctor", "--dsn", d, "--log-level", "debug")
		require.Equal(t, exitUnreachable, code, errOut)
		require.Empty(t, out)
		require.NotContains(t, errOut, "not-the-password-42")
		require.NotContains(t, errOut, "pw-9f8e7d")
		require.Equal(t, 0, strings.Count(strings.TrimSpace(errOut), "\n"), "one line: %q", errOut)
	}
}

// With no --dsn, SPIREDB_DSN is used; without it, libpq's PG* variables.
func TestDSNFromEnvironment(t *testing.T) {
	db := pgtest.NewDB(t)
	t.Setenv("SPIREDB_DSN", db.DSN)
	out, errOut, code := runArgs(t, "doctor", "-o", "json")
	require.Contains(t, []int{exitOK, exitWarning}, code, errOut)
	require.Contains(t, out, `"database": "`+db.Name+`"`)

	t.Setenv("SPIREDB_DSN", "")
	t.Setenv("PGHOST", db.Cluster.Host)
	t.Setenv("PGPORT", itoa(db.Cluster.Port))
	t.Setenv("PGUSER", db.Cluster.User)
	t.Setenv("PGPASSWORD", db.Cluster.Password)
	t.Setenv("PGDATABASE", db.Name)
	t.Setenv("PGSSLMODE", "disable")
	out, errOut, code = runArgs(t, "doctor", "-o", "json")
	require.Contains(t, []int{exitOK, exitWarning}, code, errOut)
	require.Contains(t, out, `"database": "`+db.Name+`"`)
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func truncateFile(path string, size int64) error { return os.Truncate(path, size) }

// TestPathStyleFromTheEnvironment: SPIREDB_S3_PATH_STYLE reaches what
// takes no flags, the restore_command a PITR restore writes included (the
// server that runs it may not have spiredb's environment).
func TestPathStyleFromTheEnvironment(t *testing.T) {
	f := &storeFlags{url: "s3://bucket/wal"}
	cmd, err := f.fetchCommand()
	require.NoError(t, err)
	require.NotContains(t, cmd, "--s3-path-style")

	t.Setenv("SPIREDB_S3_PATH_STYLE", "true")
	cmd, err = f.fetchCommand()
	require.NoError(t, err)
	require.Contains(t, cmd, "--s3-path-style")

	t.Setenv("SPIREDB_S3_PATH_STYLE", "yes please")
	_, err = f.fetchCommand()
	require.ErrorContains(t, err, "SPIREDB_S3_PATH_STYLE")
	require.Equal(t, exitUsage, exitCodeOf(err))
}
