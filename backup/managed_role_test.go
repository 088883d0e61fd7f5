package backup_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

// A SPIRE datastore with pg_stat_statements created in it (as monitoring
// setups do), backed up by a superuser: a role a managed service gives out
// cannot create that extension, and must still verify and restore the
// backup, told which extension was left out.
func TestManagedRoleVerifiesAndRestoresAroundMonitoringExtensions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := spireDB(t, 40)
	_, err := db.Pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	require.NoError(t, err)
	s := fileStore(t)
	m := runBackup(t, db, s, "with-pgss")
	managed := pgtest.ManagedRole(t, db)
	role, dsn := managed.User, managed.DSN("postgres")

	for _, jobs := range []int{1, 2} {
		res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelRestore, Jobs: jobs,
			Scratch: pg.Options{DSN: dsn}, TempDir: t.TempDir()})
		require.NoError(t, err)
		require.True(t, res.OK, "jobs %d: %+v", jobs, res.Checks)
		var note string
		for _, c := range res.Checks {
			if c.Name == "extensions" {
				note = c.Detail
			}
		}
		require.Contains(t, note, "pg_stat_statements", "the left-out extension is reported")
	}

	// restore into a database the managed role owns
	_, err = db.Pool.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{role + "_target"}.Sanitize()+" OWNER "+pgx.Identifier{role}.Sanitize())
	require.NoError(t, err)
	rr, err := backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m.ID, Target: pg.Options{DSN: managed.DSN(role + "_target")}})
	require.NoError(t, err)
	require.Equal(t, []string{"pg_stat_statements"}, rr.SkippedExtensions)
	require.EqualValues(t, 40, rr.RowCounts["registered_entries"])
}
