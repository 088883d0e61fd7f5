package backup_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// spireDB is a fresh database holding a SPIRE fixture of n entries.
func spireDB(t *testing.T, n int) *pgtest.DB {
	t.Helper()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: n})
	require.NoError(t, err)
	return db
}

func runBackup(t *testing.T, db *pgtest.DB, s backup.Store, label string) *backup.Manifest {
	t.Helper()
	m, err := backup.Run(context.Background(), backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Compress: -1, Label: label})
	require.NoError(t, err)
	return m
}

func TestFullCycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		db := spireDB(t, 3000)

		m := runBackup(t, db, s, "first")
		require.Equal(t, "first", m.Label)
		require.NotNil(t, m.SPIRE)
		require.Equal(t, 23, m.SPIRE.SchemaVersion)
		require.Equal(t, "1.13.3", m.SPIRE.CodeVersion)
		require.EqualValues(t, 3000, m.RowCounts["registered_entries"])
		require.Len(t, m.RowCounts, len(spire.Tables))
		require.Positive(t, m.Size)
		require.Len(t, m.SHA256, 64)
		require.Equal(t, "custom", m.Format)
		require.True(t, strings.HasPrefix(m.PgDumpVersion, "15"))

		// a second backup after a change; the manifests tell them apart
		_, err := db.Pool.Exec(ctx, "DELETE FROM registered_entries WHERE id <= 10")
		require.NoError(t, err)
		// the second as every backup before zstd was: pg_dump's own gzip
		// (restored, verified and pruned below like the zstd one)
		m2, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Codec: backup.CodecPgDump, Compress: -1, Label: "second"})
		require.NoError(t, err)
		require.EqualValues(t, 2990, m2.RowCounts["registered_entries"])
		require.Equal(t, backup.CodecZstd, m.Codec, "zstd is the default")
		require.Equal(t, backup.CodecPgDump, m2.Codec)

		list, err := backup.List(ctx, s)
		require.NoError(t, err)
		require.Len(t, list, 2)
		require.Equal(t, m.ID, list[0].ID)
		require.Equal(t, m2.ID, list[1].ID)

		for _, level := range []string{backup.LevelChecksum, backup.LevelTOC, backup.LevelRestore} {
			for _, jobs := range []int{1, 2} {
				var log strings.Builder
				res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: level, Jobs: jobs, Scratch: pg.Options{DSN: db.DSN},
					Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
				require.NoError(t, err)
				require.True(t, res.OK, "%s jobs %d: %+v", level, jobs, res.Checks)
				if level == backup.LevelRestore && jobs > 1 {
					// pg_restore --jobs gets the streamed dump with the data
					// offsets pg_dump could not write (internal/pgarchive)
					require.Regexp(t, `msg="data offsets set" archive_version=1.14 blocks=\d+ set=\d+`, log.String())
					require.NotContains(t, log.String(), "set=0 ")
				}
			}
		}
		res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, Latest: true, Scratch: pg.Options{DSN: db.DSN}})
		require.NoError(t, err)
		require.Equal(t, m2.ID, res.ID)
		require.Equal(t, backup.LevelRestore, res.Level)
		names := []string{}
		for _, c := range res.Checks {
			names = append(names, c.Name)
		}
		require.Equal(t, []string{"checksum", "restore", "spire-schema", "row-counts", "amcheck"}, names)
		require.Contains(t, res.Checks[4].Detail, "bt_index_check passed")
		requireNoScratchDatabases(t, db, m.ID)
		requireNoScratchDatabases(t, db, m2.ID)

		// list shows the stored verification
		list, err = backup.List(ctx, s)
		require.NoError(t, err)
		require.True(t, list[1].Verified())

		// restore, streamed and parallel, into new databases
		for _, jobs := range []int{1, 2} {
			target := pgtest.NewDB(t)
			rr, err := backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m.ID, Target: pg.Options{DSN: target.DSN}, Jobs: jobs})
			require.NoError(t, err)
			require.EqualValues(t, 3000, rr.RowCounts["registered_entries"])
			require.Equal(t, 23, rr.SPIRE.Version)
			require.Equal(t, "v1.8.0 to v1.13.x", rr.Compatible.Servers)
			requireSameData(t, db, target, "registered_entries", 10) // the source lost 10 rows after the first backup

			// a second restore into the now non-empty target is refused…
			_, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m2.ID, Target: pg.Options{DSN: target.DSN}, Jobs: jobs})
			var ne *backup.NotEmptyError
			require.ErrorAs(t, err, &ne)
			// …and with --clean, the target being a SPIRE datastore that
			// has 10 entries m2 lacks, refused again with the plan…
			_, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m2.ID, Target: pg.Options{DSN: target.DSN}, Jobs: jobs, Clean: true})
			var loss *backup.LossError
			require.ErrorAs(t, err, &loss)
			require.EqualValues(t, 10, loss.Plan.Findings)
			require.Equal(t, "created", loss.Plan.Tables[0].Changes[0].Kind)
			require.EqualValues(t, 10, loss.Plan.Tables[0].Changes[0].Count)
			requireSameData(t, db, target, "registered_entries", 10) // untouched
			// …unless the loss is accepted
			rr, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m2.ID, Target: pg.Options{DSN: target.DSN}, Jobs: jobs, Clean: true, AcceptLoss: true})
			require.NoError(t, err)
			require.EqualValues(t, 10, rr.Plan.Findings)
			require.EqualValues(t, 2990, rr.RowCounts["registered_entries"])
			requireSameData(t, db, target, "registered_entries", 0)
		}

		// prune --keep-last 1: m2 is kept (newest, newest verified), m goes
		pr, err := backup.Prune(ctx, backup.PruneOptions{Store: s, Policy: backup.Policy{KeepLast: 1}})
		require.NoError(t, err)
		require.Equal(t, []string{m.ID}, pr.Deleted)
		list, err = backup.List(ctx, s)
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, m2.ID, list[0].ID)
		objs, err := s.List(ctx, m.ID+"/")
		require.NoError(t, err)
		require.Empty(t, objs, "prune left objects of the deleted backup")
	})
}

// requireSameData compares a table's rows between two databases; the
// target must have exactly `missing` rows more than the source (rows the
// source deleted after the backup).
func requireSameData(t *testing.T, src, dst *pgtest.DB, table string, missing int) {
	t.Helper()
	ctx := context.Background()
	q := "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM " + table + " t WHERE id > $1"
	var a, b string
	require.NoError(t, src.Pool.QueryRow(ctx, q, missing).Scan(&a))
	require.NoError(t, dst.Pool.QueryRow(ctx, q, missing).Scan(&b))
	require.Equal(t, a, b, "%s differs after restore", table)
}

// requireNoScratchDatabases checks that verify dropped the scratch database
// of backup id (other tests verify on the same cluster at the same time).
func requireNoScratchDatabases(t *testing.T, db *pgtest.DB, id string) {
	t.Helper()
	var n int
	name := "spiredb_verify_" + strings.ToLower(strings.ReplaceAll(id, "-", "_")) + "_%"
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname LIKE $1", name).Scan(&n))
	require.Zero(t, n, "verify left a scratch database behind")
}

// A flipped byte and a truncated object fail verification with a message
// naming the check; restoring them leaves the target untouched.
func TestCorruptionIsDetected(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		db := spireDB(t, 2000)
		m := runBackup(t, db, s, "")
		orig := readObject(t, s, m.ID+"/dump")

		cases := []struct {
			name   string
			object []byte
			detail string
		}{
			{"flipped", flip(orig, len(orig)/2), "sha256 mismatch"},
			{"truncated", orig[:len(orig)*2/3], "size mismatch"},
		}
		for _, c := range cases {
			_, err := s.Put(ctx, m.ID+"/dump", bytes.NewReader(c.object))
			require.NoError(t, err)
			for _, level := range []string{backup.LevelChecksum, backup.LevelTOC, backup.LevelRestore, "restore-streamed"} {
				jobs := 2
				if level == "restore-streamed" {
					level, jobs = backup.LevelRestore, 1
				}
				res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: level, Jobs: jobs, Scratch: pg.Options{DSN: db.DSN}})
				require.NoError(t, err, "%s %s", c.name, level)
				require.False(t, res.OK, "%s %s", c.name, level)
				f := res.Failed()
				require.Equal(t, "checksum", f.Name, "%s %s: %+v", c.name, level, res.Checks)
				require.Contains(t, f.Detail, c.detail)
			}
			requireNoScratchDatabases(t, db, m.ID)
			list, err := backup.List(ctx, s)
			require.NoError(t, err)
			require.False(t, list[0].Verified(), "list must show the failed verification")

			for _, jobs := range []int{1, 2} {
				target := pgtest.NewDB(t)
				_, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m.ID, Target: pg.Options{DSN: target.DSN}, Jobs: jobs})
				require.Error(t, err, "%s jobs %d", c.name, jobs)
				require.Contains(t, err.Error(), "mismatch")
				var rels int
				require.NoError(t, target.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'").Scan(&rels))
				require.Zero(t, rels, "%s jobs %d: a failed restore changed the target", c.name, jobs)
			}
		}
	})
}

func readObject(t *testing.T, s backup.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	require.NoError(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	require.NoError(t, err)
	return b
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

// Two backups of one database at once: one runs, the other reports that a
// backup is running and writes nothing.
func TestConcurrentRunsOverlapLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	db := spireDB(t, 500)

	// hold the lock as a running backup would
	holder, err := pg.Connect(ctx, pg.Options{DSN: db.DSN})
	require.NoError(t, err)
	defer holder.Close(ctx)
	var ok bool
	require.NoError(t, holder.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", backup.LockKey).Scan(&ok))
	require.True(t, ok)

	_, err = backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Compress: -1})
	require.ErrorIs(t, err, backup.ErrBackupRunning)
	objs, err := s.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, objs, "the skipped run wrote something")

	// a backup of another database is not blocked
	other := spireDB(t, 10)
	runBackup(t, other, s, "")

	// and with two real runs racing, exactly one writes each time or both
	// succeed one after the other: never a failure
	_, err = holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", backup.LockKey)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Compress: -1})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			require.ErrorIs(t, err, backup.ErrBackupRunning)
		}
	}
}

func TestRunFailsCleanlyBeforeWriting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	db := spireDB(t, 10)

	_, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Compress: -1, Tools: backup.Tools{BinDir: "/nonexistent"}})
	require.ErrorContains(t, err, "no pg_dump of PostgreSQL 15 or newer in /nonexistent")

	bad := *db.Cluster
	bad.Port = 1
	_, err = backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: bad.DSN(db.Name), ConnectTimeout: 2 * time.Second}, Store: s, Compress: -1})
	var ce *pg.ConnectError
	require.ErrorAs(t, err, &ce)
	require.NotContains(t, err.Error(), db.Cluster.Password)

	_, err = backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Compress: 11})
	require.ErrorContains(t, err, "invalid compression")

	objs, err := s.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, objs)
	list, err := backup.List(ctx, s)
	require.NoError(t, err)
	require.Empty(t, list)
}

func TestCheckDumpVersion(t *testing.T) {
	t.Parallel()
	require.NoError(t, backup.CheckDumpVersion(15, 150018))
	require.NoError(t, backup.CheckDumpVersion(17, 150018), "a newer pg_dump can dump an older server")
	err := backup.CheckDumpVersion(14, 150018)
	require.ErrorContains(t, err, "pg_dump 14 is older than the server (PostgreSQL 15)")
}

func TestCheckRestoreVersion(t *testing.T) {
	t.Parallel()
	require.NoError(t, backup.CheckRestoreVersion(15, 150018))
	require.NoError(t, backup.CheckRestoreVersion(15, 170004), "an older pg_restore restores into a newer server")
	require.NoError(t, backup.CheckRestoreVersion(17, 170004))
	require.NoError(t, backup.CheckRestoreVersion(16, 130020))
	err := backup.CheckRestoreVersion(17, 160009)
	require.ErrorContains(t, err, "pg_restore 17 cannot restore into PostgreSQL 16 (it sets transaction_timeout, new in 17): install postgresql-client-16")
}

// TestBackupCountsRowsInTheDump: with zstd the manifest's row counts are
// the rows of the dump, counted as it streams by; the server reads each
// table once (pg_dump's COPY), not a second time for count(*). With
// pg_dump's own compression they are counted in the snapshot.
func TestBackupCountsRowsInTheDump(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := spireDB(t, 2000)
	s, err := backup.OpenStore(ctx, "file://"+t.TempDir(), backup.StoreOptions{})
	require.NoError(t, err)
	seqScans := func() int64 {
		var n int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT coalesce(sum(seq_scan), 0)::int8 FROM pg_catalog.pg_stat_user_tables
			WHERE relname IN ('registered_entries', 'selectors')`).Scan(&n))
		return n
	}
	// the fixture's loader and the pool's sessions flush their statistics
	// up to a second after they go idle or exit: count from where the
	// numbers have stopped moving
	settled := func() int64 {
		n := seqScans()
		for range 15 {
			time.Sleep(1100 * time.Millisecond)
			m := seqScans()
			if m == n {
				return n
			}
			n = m
		}
		t.Fatalf("seq_scan on the fixture's tables still moving after 15 s (at %d)", n)
		return n
	}
	for _, tc := range []struct {
		codec string
		scans int64 // per table
	}{
		{backup.CodecZstd, 1},
		{backup.CodecPgDump, 2},
	} {
		before := settled()
		m, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s, Codec: tc.codec, Compress: -1})
		require.NoError(t, err)
		require.EqualValues(t, 2000, m.RowCounts["registered_entries"], tc.codec)
		require.Len(t, m.RowCounts, len(spire.Tables))
		var selectors int64
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM selectors").Scan(&selectors))
		require.Equal(t, selectors, m.RowCounts["selectors"])
		// the backends that scanned have exited: their statistics are in
		require.Eventually(t, func() bool { return seqScans()-before >= 2*tc.scans+1 }, 10*time.Second, 50*time.Millisecond, tc.codec)
		time.Sleep(time.Second)
		require.Equal(t, 2*tc.scans+1, seqScans()-before, "%s: sequential scans of registered_entries and selectors (+1: the count above)", tc.codec)
	}
}

// TestVerifyCallsAmcheckWhereItLives: a datastore with amcheck created in a
// schema of its own restores it there; verify's index check calls it in
// that schema (it failed every index looking for public.bt_index_check).
func TestVerifyCallsAmcheckWhereItLives(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := spireDB(t, 200)
	_, err := db.Pool.Exec(ctx, "CREATE SCHEMA ext; CREATE EXTENSION amcheck SCHEMA ext")
	require.NoError(t, err)
	s, err := backup.NewFileStore(t.TempDir())
	require.NoError(t, err)
	m, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s})
	require.NoError(t, err)
	res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelRestore, Scratch: pg.Options{DSN: db.DSN}})
	require.NoError(t, err)
	require.True(t, res.OK, "%+v", res.Checks)
	var amcheck string
	for _, c := range res.Checks {
		if c.Name == "amcheck" {
			amcheck = c.Detail
		}
	}
	require.Contains(t, amcheck, "passed on")
}
