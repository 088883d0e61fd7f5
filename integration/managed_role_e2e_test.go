package integration_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// namesPrivilege matches a refusal that names what is missing.
var namesPrivilege = regexp.MustCompile(`(?i)permission denied|must be (superuser|owner|a member)|privilege|pg_signal_backend|pg_read_all|REPLICATION|superuser`)

// As a managed service runs it: the role owns SPIRE's database (SPIRE
// connects as it and creates its tables), has CREATEDB and pg_monitor, is
// no superuser; an administrator created pg_stat_statements. Every command
// works, or fails naming the privilege it lacks; none leaks the password.
func TestEveryCommandAsManagedRole(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	c := pgtest.ManagedRole(t, db)
	role := pgx.Identifier{c.User}.Sanitize()
	_, err := db.Pool.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db.Name}.Sanitize()+" OWNER TO "+role+
		"; CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	require.NoError(t, err)
	srv := startSpire(t, db, spiretest.Options{ConnectionString: c.KVDSN(db.Name)})
	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(200, 7, nil)))
	dsn := c.DSN(db.Name)

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "1_app.up.sql"), []byte("CREATE TABLE app (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);\nINSERT INTO app (id) SELECT g FROM generate_series(1, 1000) g;\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "1_app.down.sql"), []byte("DROP TABLE app;\n"), 0o644))
	store := "file://" + t.TempDir()
	restoreDB := db.Name + "_r"
	_, err = db.Pool.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{restoreDB}.Sanitize()+" OWNER "+role)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{restoreDB}.Sanitize()+" WITH (FORCE)")
	})

	works := [][]string{
		{"doctor", "--dsn", dsn},
		{"stats", "top", "--dsn", dsn},
		{"stats", "snapshot", "--dsn", dsn, "--out", filepath.Join(t.TempDir(), "s.json")},
		{"indexes", "check", "--dsn", dsn},
		{"indexes", "plan", "--dsn", dsn},
		{"indexes", "apply", "--dsn", dsn},
		{"views", "create", "--dsn", dsn},
		{"views", "refresh", "--dsn", dsn},
		{"views", "status", "--dsn", dsn},
		{"migrate", "up", "--dsn", dsn},
		{"migrate", "up", "--source", "file://" + dir, "--version-table", "app", "--dsn", dsn},
		{"migrate", "status", "--source", "file://" + dir, "--version-table", "app", "--dsn", dsn},
		{"migrate", "backfill", "--dsn", dsn, "--table", "app", "--set", "n = n + 1", "--name", "bump"},
		{"migrate", "lint", "--dsn", dsn, filepath.Join(dir, "1_app.up.sql")},
		{"tune", "check", "--dsn", dsn, "--ram", "4GB", "--cpus", "2"},
		{"replica", "status", "--dsn", dsn},
		{"backup", "run", "--dsn", dsn, "--store", store},
		{"backup", "list", "--store", store},
		{"backup", "verify", "--dsn", dsn, "--store", store, "--latest", "--level", "restore"},
		{"backup", "restore", "--latest", "--store", store, "--target-dsn", c.DSN(restoreDB)},
		// the harness's superuser pool has sessions on the database, which
		// the owner cannot end: fence says so, naming pg_signal_backend
		{"replica", "fence", "--dsn", dsn, "--yes"},
		{"replica", "fence", "--dsn", dsn, "--undo", "--yes"},
	}
	refusals := map[string]string{"replica fence": "the fencing role needs pg_signal_backend"}
	for _, args := range works {
		out, stderr, code := runCLI(t, nil, args...)
		name := strings.Join(args[:2], " ")
		assert.NotContains(t, out+stderr, c.Password, name)
		// doctor and tune check exit 4 / 1 on findings about settings
		if code == 0 || (args[0] == "doctor" && code == 4) || (args[0] == "tune" && code == 1) {
			continue
		}
		if want, ok := refusals[name]; ok && args[len(args)-2] != "--undo" {
			assert.Contains(t, stderr, want, name)
			continue
		}
		assert.Regexp(t, namesPrivilege, stderr, "%s: exit %d without naming a privilege:\n%s%s", name, code, out, stderr)
		assert.Fail(t, fmt.Sprintf("%s failed as the database owner: exit %d\n%s", name, code, stderr))
	}

	// a base backup of a server that does not archive is refused in one line
	_, stderr, code := runCLI(t, nil, "backup", "run", "--physical", "--dsn", dsn, "--store", store)
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "archive_mode is off")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, stderr)

	// what a managed role cannot do is refused naming the privilege
	for _, args := range [][]string{
		{"stats", "reset", "--dsn", dsn},
		{"replica", "bootstrap", "--primary-dsn", dsn, "--data-dir", filepath.Join(t.TempDir(), "standby")},
	} {
		_, stderr, code := runCLI(t, nil, args...)
		name := strings.Join(args[:2], " ")
		assert.NotEqual(t, 0, code, name)
		assert.Regexp(t, namesPrivilege, stderr, name)
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "%s: one line: %s", name, stderr)
		assert.NotContains(t, stderr, c.Password, name)
	}
}
