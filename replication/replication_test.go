package replication_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// standby bootstraps a started standby of primary, stopped when the test
// ends. Its data directory lives in the primary's harness directory, where
// a later run's CleanStale finds it if this process dies.
func standby(t *testing.T, primary *pgcluster.Cluster, name string) (dir string, port int, dsn string) {
	t.Helper()
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	dir = filepath.Join(primary.Dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progressCalls int
	res, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: primary.DSN("postgres")},
		DataDir: dir, Start: true, Port: port, StandbyPassfile: dir + ".pgpass", Progress: func(done, total int64) { progressCalls++ }})
	require.NoError(t, err)
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", dir) })
	require.True(t, res.Streaming)
	require.Equal(t, "spiredb_"+name, res.Slot)
	require.Positive(t, res.Bytes)
	require.Positive(t, progressCalls)
	other := *primary
	other.Port = port
	return dir, port, other.DSN("postgres")
}

func exec(t *testing.T, dsn, sql string, args ...any) error {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), sql, args...)
	return err
}

func count(t *testing.T, dsn string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM t").Scan(&n))
	return n
}

func TestBootstrapStatusPromoteFence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	pdsn := primary.DSN("postgres")
	require.NoError(t, exec(t, pdsn, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g"))
	require.NoError(t, exec(t, pdsn, "CREATE DATABASE spire"))

	_, _, sdsn := standby(t, primary, "standby1")

	st, err := replication.GetStatus(ctx, pg.Options{DSN: pdsn}, replication.Limit{Bytes: 16 << 20})
	require.NoError(t, err)
	require.Equal(t, "primary", st.Role)
	require.Len(t, st.Standbys, 1)
	require.Equal(t, "streaming", st.Standbys[0].State)
	require.True(t, st.Standbys[0].Ready, st.Standbys[0].Reason)
	require.Equal(t, "spiredb_standby1", st.Standbys[0].Slot)
	require.Equal(t, "spiredb_standby1", st.Standbys[0].ApplicationName, "the standby is named after its slot")
	require.Len(t, st.Slots, 1)
	require.True(t, st.Slots[0].Active)
	require.Equal(t, "reserved", st.Slots[0].WALStatus)
	require.Empty(t, st.Problems)

	// rows replicate
	require.NoError(t, exec(t, pdsn, "INSERT INTO t SELECT g FROM generate_series(1001, 2000) g"))
	require.Eventually(t, func() bool { return count(t, sdsn) == 2000 }, 30*time.Second, 50*time.Millisecond)

	sst, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
	require.NoError(t, err)
	require.Equal(t, "standby", sst.Role)
	require.Equal(t, "streaming", sst.Receiver.Status)
	require.Equal(t, "spiredb_standby1", sst.Receiver.Slot)
	require.EqualValues(t, 1, sst.Receiver.Timeline)

	// the standby refuses writes before promotion
	require.Error(t, exec(t, sdsn, "INSERT INTO t VALUES (0)"))

	// the primary is lost; it comes back later, to be fenced
	haltPrimary(t, primary, sdsn)
	res, err := replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}})
	require.NoError(t, err)
	require.EqualValues(t, 2, res.Timeline)
	require.NotEmpty(t, res.PromotionLSN)
	require.NotEmpty(t, res.NextSteps)
	require.NoError(t, exec(t, sdsn, "INSERT INTO t VALUES (0)"), "the promoted server accepts writes")
	require.Equal(t, 2001, count(t, sdsn))

	// promoting it again is refused: it is a primary now
	_, err = replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}})
	require.ErrorIs(t, err, replication.ErrNotStandby)

	require.NoError(t, primary.Restart(ctx))
	// fence the old primary's "spire" database: its sessions end, no new
	// one connects (superuser or not, READ WRITE or not), other databases
	// get the read-only default, and fencing again is a no-op
	spire := primary.DSN("spire")
	holder, err := pgx.Connect(ctx, spire)
	require.NoError(t, err)
	defer holder.Close(ctx)
	_, err = holder.Exec(ctx, "BEGIN; CREATE TABLE held (id int)")
	require.NoError(t, err)
	fr, err := replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: spire}})
	require.NoError(t, err)
	require.False(t, fr.AlreadyFenced())
	require.Equal(t, []replication.FencedDatabase{{Name: "spire"}}, fr.Databases)
	require.Equal(t, "set", fr.ReadOnly)
	require.Len(t, fr.Terminated, 1)
	require.Error(t, holder.Ping(ctx), "the session holding a transaction survived the fence")
	_, err = pgx.Connect(ctx, spire)
	require.Equal(t, "55000", pg.SQLState(err), "a new session reached the fenced database: %v", err)
	err = exec(t, pdsn, "INSERT INTO t VALUES (-2)")
	require.Equal(t, "25006", pg.SQLState(err), "old primary still takes writes in other databases: %v", err)
	fr, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: spire}})
	require.NoError(t, err)
	require.True(t, fr.AlreadyFenced())
	require.Equal(t, "already set", fr.ReadOnly)

	// --undo reopens it
	fr, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: spire}, Undo: true})
	require.NoError(t, err)
	require.Equal(t, "reset", fr.ReadOnly)
	require.NoError(t, exec(t, spire, "CREATE TABLE reopened (id int)"))
}

// TestFenceAsDatabaseOwner: a managed-service role that owns SPIRE's
// database but is no superuser fences it (ALTER SYSTEM is skipped with the
// reason), and a superuser's session it may not end is reported, not
// hidden: the command fails naming the session.
func TestFenceAsDatabaseOwner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.NewCluster(t, replicationOpts(nil))
	admin := c.DSN("postgres")
	require.NoError(t, exec(t, admin, "CREATE ROLE owner LOGIN PASSWORD 'owner-pw'"))
	require.NoError(t, exec(t, admin, "CREATE DATABASE spire OWNER owner"))
	ownerDSN := fmt.Sprintf("postgres://owner:owner-pw@%s:%d/spire?sslmode=disable", c.Host, c.Port)

	mine, err := pgx.Connect(ctx, ownerDSN)
	require.NoError(t, err)
	defer mine.Close(ctx)
	fr, err := replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: ownerDSN}})
	require.NoError(t, err)
	require.Contains(t, fr.ReadOnly, "skipped: ALTER SYSTEM needs a superuser")
	require.Len(t, fr.Terminated, 1, "the owner's own other session is ended")
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: ownerDSN}, Undo: true})
	require.NoError(t, err)

	// a superuser's session on it cannot be ended by the owner
	super, err := pgx.Connect(ctx, c.DSN("spire"))
	require.NoError(t, err)
	defer super.Close(ctx)
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: ownerDSN}, Settle: time.Second})
	var fe *replication.FenceError
	require.ErrorAs(t, err, &fe)
	require.Len(t, fe.Survivors, 1)
	require.Equal(t, "postgres", fe.Survivors[0].Role)
	_, err = pgx.Connect(ctx, c.DSN("spire"))
	require.Equal(t, "55000", pg.SQLState(err), "new connections are refused even when a session survives")
}

func TestPromoteRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	pdsn := primary.DSN("postgres")
	require.NoError(t, exec(t, pdsn, "CREATE TABLE t (id int, pad text)"))

	// on a primary: refused, nothing changed
	_, err := replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: pdsn}})
	require.ErrorIs(t, err, replication.ErrNotStandby)

	_, _, sdsn := standby(t, primary, "lagging")
	// its primary is alive and streaming to it: promoting would make two
	// primaries (SPIRE's writes to the first would be lost)
	_, err = replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}, Force: true})
	var live *replication.LivePrimaryError
	require.ErrorAs(t, err, &live)
	require.Contains(t, err.Error(), "replica switchover")
	st0, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
	require.NoError(t, err)
	require.Equal(t, "standby", st0.Role, "a refused promotion changed something")
	// pause replay, then write: the standby receives but does not replay
	require.NoError(t, exec(t, sdsn, "SELECT pg_wal_replay_pause()"))
	require.NoError(t, exec(t, pdsn, "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g"))
	require.Eventually(t, func() bool {
		st, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
		return err == nil && st.Receiver.ReplayGapBytes > 1<<20
	}, 30*time.Second, 50*time.Millisecond)

	// the primary's status shows it lagging, so not ready, past a small limit
	pst, err := replication.GetStatus(ctx, pg.Options{DSN: pdsn}, replication.Limit{Bytes: 1 << 20})
	require.NoError(t, err)
	require.Len(t, pst.Standbys, 1)
	require.False(t, pst.Standbys[0].Ready)
	require.Contains(t, pst.Standbys[0].Reason, "lagging")

	// the standby receives all the primary wrote (so that --force below
	// loses nothing), then the primary is lost
	var primaryLSN string
	pconn, err := pgx.Connect(ctx, pdsn)
	require.NoError(t, err)
	require.NoError(t, pconn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&primaryLSN))
	_ = pconn.Close(ctx)
	require.Eventually(t, func() bool {
		sconn, err := pgx.Connect(ctx, sdsn)
		if err != nil {
			return false
		}
		defer sconn.Close(ctx)
		var ok bool
		return sconn.QueryRow(ctx, "SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn", primaryLSN).Scan(&ok) == nil && ok
	}, 30*time.Second, 50*time.Millisecond)
	haltPrimary(t, primary, sdsn)

	// replay is behind what was received: refused past --max-lag
	_, err = replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}, MaxLag: replication.Limit{Bytes: 1 << 20}})
	var le *replication.LagError
	require.ErrorAs(t, err, &le)
	st, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
	require.NoError(t, err)
	require.Equal(t, "standby", st.Role, "a refused promotion changed something")

	// --force promotes anyway: replay is resumed and everything the standby
	// has received is replayed
	res, err := replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}, MaxLag: replication.Limit{Bytes: 1 << 20}, Force: true})
	require.NoError(t, err)
	require.EqualValues(t, 2, res.Timeline)
	require.Equal(t, 20000, count(t, sdsn))
}

func TestBootstrapChecks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.Cluster(t)
	opts := pg.Options{DSN: primary.DSN("postgres")}
	base := t.TempDir()
	cases := []struct {
		o    replication.BootstrapOptions
		want string
	}{
		{replication.BootstrapOptions{Primary: opts, DataDir: base, Slot: "ok_slot"}, "is not empty"}, // t.TempDir holds nothing… until we add a file
		{replication.BootstrapOptions{Primary: opts, DataDir: filepath.Join(base, "x"), Slot: "Bad-Name"}, "invalid slot name"},
		{replication.BootstrapOptions{Primary: opts, DataDir: filepath.Join(base, "y"), Start: true}, "--start needs --port"},
		{replication.BootstrapOptions{Primary: opts}, "no data directory"},
	}
	require.NoError(t, exec(t, opts.DSN, "SELECT 1"))
	require.NoError(t, writeFile(filepath.Join(base, "PG_VERSION")))
	for _, c := range cases {
		_, err := replication.Bootstrap(ctx, c.o)
		require.ErrorContains(t, err, c.want)
	}
	// an existing slot is refused
	require.NoError(t, exec(t, opts.DSN, "SELECT pg_create_physical_replication_slot('taken')"))
	t.Cleanup(func() { _ = exec(t, opts.DSN, "SELECT pg_drop_replication_slot('taken')") })
	_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: opts, DataDir: filepath.Join(base, "z"), Slot: "taken"})
	require.ErrorContains(t, err, `slot "taken" already exists`)
	// a standby is not a primary
	_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: "postgres://x:y@127.0.0.1:1/db?connect_timeout=1"}, DataDir: filepath.Join(base, "w")})
	var ce *pg.ConnectError
	require.True(t, errors.As(err, &ce))
}

// The primary stops in the middle of the copy: the error is clean, the slot
// is dropped (once the primary is back) and the partial directory is gone.
func TestBootstrapPrimaryStopsMidway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	pdsn := primary.DSN("postgres")
	require.NoError(t, exec(t, pdsn, "CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g"))
	dir := filepath.Join(primary.Dir, "broken")

	go func() {
		time.Sleep(1500 * time.Millisecond)
		_ = primary.Halt()
		time.Sleep(2 * time.Second)
		_ = primary.Restart(context.Background())
	}()
	_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: pdsn}, DataDir: dir, MaxRate: "8M"})
	require.ErrorContains(t, err, "pg_basebackup failed")
	require.NoDirExists(t, dir)
	require.Eventually(t, func() bool { return exec(t, pdsn, "SELECT 1") == nil }, 30*time.Second, 100*time.Millisecond)
	slots, err := replication.ListSlots(ctx, pg.Options{DSN: pdsn})
	require.NoError(t, err)
	require.Empty(t, slots, "the slot of the failed bootstrap was left behind")
}

// A slot whose WAL was removed shows as lost, and no standby is ready.
func TestLostSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(map[string]string{"max_slot_wal_keep_size": "'1MB'", "wal_keep_size": "0"}))
	pdsn := primary.DSN("postgres")
	require.NoError(t, exec(t, pdsn, "CREATE TABLE t (id int, pad text)"))
	dir, _, _ := standby(t, primary, "victim")
	require.NoError(t, replication.StopStandby(ctx, "", dir))
	for range 4 {
		require.NoError(t, exec(t, pdsn, "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g"))
		require.NoError(t, exec(t, pdsn, "SELECT pg_switch_wal()"))
		require.NoError(t, exec(t, pdsn, "CHECKPOINT"))
	}
	st, err := replication.GetStatus(ctx, pg.Options{DSN: pdsn}, replication.Limit{})
	require.NoError(t, err)
	require.Len(t, st.Slots, 1)
	require.Equal(t, "lost", st.Slots[0].WALStatus)
	require.Contains(t, st.Problems[0], "slot spiredb_victim is lost")
	for _, s := range st.Standbys {
		require.False(t, s.Ready)
	}
}

func writeFile(path string) error { return osWriteFile(path, []byte("15\n"), 0o600) }

var osWriteFile = os.WriteFile

// replicationOpts: the harness turns synchronous_commit off for speed, and
// then a commit can still sit unflushed, unsent to any standby, after
// COMMIT returns. Replication tests run with it on, as production does.
func replicationOpts(extra map[string]string) pgcluster.Options {
	settings := map[string]string{"synchronous_commit": "on"}
	for k, v := range extra {
		settings[k] = v
	}
	return pgcluster.Options{Settings: settings}
}

// TestBootstrapSecretsAndDataDirectory: the primary's password is written
// nowhere in the standby but the passfile asked for (0600); an existing
// 0755 directory is made 0700 so the standby starts; a failure after the
// copy (the standby cannot start) leaves the directory and the slot, and a
// failure never removes a directory a server is running in.
func TestBootstrapSecretsAndDataDirectory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	pdsn := primary.DSN("postgres")
	require.NoError(t, exec(t, pdsn, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g"))

	// an existing, empty, world-readable directory
	dir := filepath.Join(primary.Dir, "existing")
	require.NoError(t, os.Mkdir(dir, 0o755))
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	passfile := filepath.Join(primary.Dir, "standby.pgpass")
	res, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: pdsn}, DataDir: dir, Start: true, Port: port, StandbyPassfile: passfile})
	require.NoError(t, err)
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", dir) })
	require.True(t, res.Streaming, "the standby streams with the passfile")
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	auto, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	require.NoError(t, err)
	require.NotContains(t, string(auto), primary.Password)
	require.Contains(t, string(auto), "passfile=")
	require.Contains(t, string(auto), passfile)
	pst, err := os.Stat(passfile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), pst.Mode().Perm())
	walkNoSecret(t, dir, primary.Password)

	// without --standby-passfile the password is written nowhere
	plain := filepath.Join(primary.Dir, "plain")
	_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: pdsn}, DataDir: plain})
	require.NoError(t, err)
	walkNoSecret(t, plain, primary.Password)
	require.NoError(t, replication.DropSlot(ctx, pg.Options{DSN: pdsn}, "spiredb_plain"))

	// a late failure: the copy completes, the start fails (the port is
	// the primary's): the directory and its slot stay for the operator
	late := filepath.Join(primary.Dir, "late")
	_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: pdsn}, DataDir: late, Start: true, Port: primary.Port,
		StandbyPassfile: passfile, StartTimeout: 5 * time.Second})
	require.ErrorContains(t, err, "starting the standby")
	require.FileExists(t, filepath.Join(late, "PG_VERSION"), "a complete copy was removed after a late error")
	slots, err := replication.ListSlots(ctx, pg.Options{DSN: pdsn})
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(slots, func(s replication.Slot) bool { return s.Name == "spiredb_late" }))
}

// walkNoSecret fails when any file under dir holds secret.
func walkNoSecret(t *testing.T, dir, secret string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if info, err := d.Info(); err == nil && info.Size() < 1<<20 {
			b, err := os.ReadFile(p)
			if err == nil && bytes.Contains(b, []byte(secret)) {
				return fmt.Errorf("%s holds the primary's password", p)
			}
		}
		return nil
	}))
}

// TestStandbyPassfileIsOnlySpiredbs: --standby-passfile may name a file
// that exists. One that holds anything but a passfile spiredb wrote (the
// operator's ~/.pgpass, say) is refused before any work, unchanged; a
// symlink is refused; an existing world-readable file spiredb may write
// ends up 0600, never readable by others with the password in it.
func TestStandbyPassfileIsOnlySpiredbs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	pdsn := primary.DSN("postgres")
	opts := pg.Options{DSN: pdsn}

	theirs := filepath.Join(primary.Dir, "operator.pgpass")
	entries := "db.internal:5432:*:app:app-secret\n*:*:*:replicator:other\n"
	require.NoError(t, os.WriteFile(theirs, []byte(entries), 0o600))
	link := filepath.Join(primary.Dir, "link.pgpass")
	require.NoError(t, os.Symlink(filepath.Join(primary.Dir, "elsewhere"), link))
	for _, path := range []string{theirs, link} {
		dir := filepath.Join(primary.Dir, "refused")
		_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: opts, DataDir: dir, StandbyPassfile: path})
		require.ErrorContains(t, err, "--standby-passfile", path)
		require.NotContains(t, err.Error(), "\n")
		require.NoDirExists(t, dir, "refused before any work")
		err = replication.RejoinOptions{Primary: opts, DataDir: dir, StandbyPassfile: path}.Validate()
		require.ErrorContains(t, err, "--standby-passfile", "rejoin too")
	}
	got, err := os.ReadFile(theirs)
	require.NoError(t, err)
	require.Equal(t, entries, string(got), "the operator's entries are kept")
	require.NoFileExists(t, filepath.Join(primary.Dir, "elsewhere"))
	slots, err := replication.ListSlots(ctx, opts)
	require.NoError(t, err)
	require.Empty(t, slots)

	// an empty file the operator made with touch (0644)
	touched := filepath.Join(primary.Dir, "touched.pgpass")
	require.NoError(t, os.WriteFile(touched, nil, 0o644))
	require.NoError(t, os.Chmod(touched, 0o644))
	_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: opts, DataDir: filepath.Join(primary.Dir, "touched"), StandbyPassfile: touched})
	require.NoError(t, err)
	st, err := os.Stat(touched)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the password is never in a file others can read")
	got, err = os.ReadFile(touched)
	require.NoError(t, err)
	require.Contains(t, string(got), primary.Password)
}

// haltPrimary stops the primary as a crash would and waits until the
// standby's WAL receiver has noticed: only then may it be promoted.
func haltPrimary(t *testing.T, primary *pgcluster.Cluster, sdsn string) {
	t.Helper()
	require.NoError(t, primary.Halt())
	require.Eventually(t, func() bool {
		st, err := replication.GetStatus(context.Background(), pg.Options{DSN: sdsn}, replication.Limit{})
		return err == nil && st.Receiver.Status != "streaming"
	}, time.Minute, 50*time.Millisecond)
}

// TestBootstrapRefusesASupersededPrimary: a primary a switchover replaced
// (its mark in postgresql.auto.conf) takes no new standby and no rejoined
// one: they would follow a dead end. Nothing is copied, no slot is made.
func TestBootstrapRefusesASupersededPrimary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, pgcluster.Options{})
	dsn := primary.DSN("postgres")
	// a copy taken before the switchover, to rejoin afterwards
	copied := filepath.Join(primary.Dir, "copy")
	_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: dsn}, DataDir: copied, Slot: "copy"})
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot('copy')")
	require.NoError(t, err)
	// the mark as a switchover leaves it: a placeholder first, so that
	// ALTER SYSTEM knows the custom parameter
	for _, q := range []string{"SELECT set_config('spiredb.superseded_by', '', false)",
		"ALTER SYSTEM SET spiredb.superseded_by = 'new-primary:5432 (timeline 2)'", "SELECT pg_reload_conf()"} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err)
	}
	dir := filepath.Join(t.TempDir(), "standby")
	require.Eventually(t, func() bool {
		_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: dsn}, DataDir: dir})
		return err != nil && strings.Contains(err.Error(), "a switchover made new-primary:5432 (timeline 2) the primary")
	}, 10*time.Second, 100*time.Millisecond)
	require.NoDirExists(t, dir)
	var slots int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots))
	require.Zero(t, slots)

	// nor does a server rejoin it: nothing is stopped or rewound
	_, err = replication.Rejoin(ctx, replication.RejoinOptions{Primary: pg.Options{DSN: dsn}, DataDir: copied})
	require.ErrorContains(t, err, "a switchover made new-primary:5432 (timeline 2) the primary")
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots))
	require.Zero(t, slots)
}

// TestPromoteRefusedWhileItsPrimaryAnswers: a standby's receiver can stop
// for reasons other than a dead primary (its slot dropped, a password
// changed, WAL it needs removed). Its primary then still takes SPIRE's
// writes: promoting would make a second primary. promote asks the
// address in primary_conninfo first; a server that answers there is
// refused (Force overrides), one that does not is gone.
func TestPromoteRefusedWhileItsPrimaryAnswers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	_, _, sdsn := standby(t, primary, "cutoff")
	// the receiver stops: its slot is gone, the primary lives on
	require.NoError(t, exec(t, sdsn, "ALTER SYSTEM SET primary_slot_name = 'spiredb_gone'"))
	require.NoError(t, exec(t, sdsn, "SELECT pg_reload_conf()"))
	require.Eventually(t, func() bool {
		st, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
		return err == nil && st.Receiver.Status != "streaming"
	}, time.Minute, 50*time.Millisecond)

	_, err := replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}})
	var answers *replication.PrimaryAnswersError
	require.ErrorAs(t, err, &answers)
	require.Contains(t, err.Error(), fmt.Sprintf("127.0.0.1:%d", primary.Port))
	require.Contains(t, err.Error(), "--force")
	st, err := replication.GetStatus(ctx, pg.Options{DSN: sdsn}, replication.Limit{})
	require.NoError(t, err)
	require.Equal(t, "standby", st.Role, "a refused promotion changed something")

	// a conninfo naming certificate files of the standby's host (absent
	// where spiredb runs) does not hide the primary either
	sconn, err := pgx.Connect(ctx, sdsn)
	require.NoError(t, err)
	var conninfo string
	require.NoError(t, sconn.QueryRow(ctx, "SHOW primary_conninfo").Scan(&conninfo))
	_, err = sconn.Exec(ctx, "ALTER SYSTEM SET primary_conninfo = '"+strings.ReplaceAll(conninfo, "'", "''")+" sslmode=verify-full sslrootcert=/nonexistent/root.crt'")
	require.NoError(t, err)
	_, err = sconn.Exec(ctx, "SELECT pg_reload_conf()")
	require.NoError(t, err)
	sconn.Close(ctx)
	_, err = replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}})
	require.ErrorAs(t, err, &answers)

	// the primary lost: nothing answers there, and promote goes on
	require.NoError(t, primary.Halt())
	res, err := replication.Promote(ctx, replication.PromoteOptions{Conn: pg.Options{DSN: sdsn}})
	require.NoError(t, err)
	require.EqualValues(t, 2, res.Timeline)
}
