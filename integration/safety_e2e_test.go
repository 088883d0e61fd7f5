package integration_test

import (
	"context"
	"encoding/json"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/indexes"
)

// TestAdviseNeverPlansAnotherRolesText: an unprivileged role's IMMUTABLE
// function, which the planner would evaluate while costing its statement,
// tries to end a superuser's session. spiredb (a superuser here) does not
// plan that role's text: the session survives and the statement is
// reported as skipped, naming the role.
func TestAdviseNeverPlansAnotherRolesText(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 2000)
	_, err := conn.Exec(ctx, "CREATE EXTENSION hypopg")
	require.NoError(t, err)
	role, mallory := hostileRole(t, db, "mallory")
	_, err = conn.Exec(ctx, "GRANT SELECT ON registered_entries TO "+role)
	require.NoError(t, err)

	// a superuser's session, the target
	victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim")
	require.NoError(t, err)
	defer victim.Close(ctx)

	_, err = mallory.Exec(ctx, `CREATE FUNCTION public.evil() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'victim';
			RETURN true;
		EXCEPTION WHEN others THEN RETURN true;
		END $$`)
	require.NoError(t, err)
	// no constants: pg_stat_statements keeps the text as is, plannable
	for range 50 {
		_, err := mallory.Exec(ctx, "SELECT id FROM registered_entries WHERE ttl IN (pg_backend_pid(), pg_backend_pid()) AND public.evil()", pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err)
	}
	require.NoError(t, victim.Ping(ctx), "mallory alone cannot end a superuser's session")

	out, stderr, code := runCLI(t, nil, "indexes", "advise", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, victim.Ping(ctx), "advise ran another role's code with its privileges")
	var adv indexes.AdviseReport
	require.NoError(t, json.Unmarshal([]byte(out), &adv), out)
	skipped := strings.Join(adv.Skipped, "\n")
	require.Contains(t, skipped, "evil()")
	require.Contains(t, skipped, "run by role "+role)
}

// TestReadOnlyStoreAsAnotherUser: a directory store the process can read
// but not write (another OS user's backups) is listed, checked and
// restored from; backup run refuses it before anything starts.
func TestReadOnlyStoreAsAnotherUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run spiredb as another OS user")
	}
	ctx := context.Background()
	db, _ := statsDB(t, 500)
	dir, err := os.MkdirTemp("", "spiredb-ro-store-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	store := "file://" + filepath.Join(dir, "store")
	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	// readable by others, writable by root only
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if info.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	}))
	nobody, err := user.Lookup("nobody")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	env := []string{"HOME=/tmp", "TMPDIR=/tmp"}
	as := func(args ...string) (string, string, int) { return runCLIAs(t, cred, env, args...) }
	// spiredb's binary must be reachable by nobody
	require.NoError(t, os.Chmod(filepath.Dir(spiredbCLI(t)), 0o755))

	out, stderr, code := as("backup", "list", "--store", store, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var list []backup.Manifest
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 1)
	_, stderr, code = as("backup", "verify", "--store", store, "--latest", "--level", "toc")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stderr, "not recorded")
	target := db.Cluster.DSN(db.Name + "_restored")
	_, err = db.Cluster.CreateDatabase(ctx, db.Name+"_restored")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Cluster.DropDatabase(context.Background(), db.Name+"_restored") })
	_, stderr, code = as("backup", "restore", "--store", store, "--latest", "--target-dsn", target)
	require.Equal(t, 0, code, stderr)
	_, stderr, code = as("backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 3, code, "a write needs a writable store: %s", stderr)
	require.Contains(t, stderr, "not writable")
}
