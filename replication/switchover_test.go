package replication_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// writer inserts rows into dsn's table w one at a time until stopped,
// reconnecting after errors, and keeps the ids whose COMMIT returned.
type writer struct {
	mu    sync.Mutex
	acked []int
	stop  chan struct{}
	done  chan struct{}
}

func startWriter(dsn string) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx := context.Background()
		var conn *pgx.Conn
		for id := 1; ; id++ {
			select {
			case <-w.stop:
				if conn != nil {
					conn.Close(ctx)
				}
				return
			default:
			}
			if conn == nil {
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				conn = c
			}
			if _, err := conn.Exec(ctx, "INSERT INTO w VALUES ($1)", id); err != nil {
				conn.Close(ctx)
				conn = nil
				continue
			}
			w.mu.Lock()
			w.acked = append(w.acked, id)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) Stop() []int {
	close(w.stop)
	<-w.done
	return w.acked
}

func ids(t *testing.T, dsn string) map[int]bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT id FROM w")
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	m := map[int]bool{}
	for _, id := range got {
		m[id] = true
	}
	return m
}

func withDB(dsn, db string) string {
	cfg, _ := pgx.ParseConfig(dsn)
	return "host=" + cfg.Host + " port=" + strconv.Itoa(int(cfg.Port)) + " user=" + cfg.User + " password=" + cfg.Password + " dbname=" + db + " sslmode=disable"
}

// TestSwitchoverRoundTrip: P→S with a writer on P: every acknowledged
// insert is on S; P is fenced; P is rewound into a standby of S; S→P
// back; S rejoins P. Same rows at every step.
func TestSwitchoverRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(map[string]string{"wal_log_hints": "on", "full_page_writes": "on"}))
	require.NoError(t, exec(t, primary.DSN("postgres"), "CREATE DATABASE spire"))
	p := primary.DSN("spire")
	require.NoError(t, exec(t, p, "CREATE TABLE w (id int PRIMARY KEY)"))
	sdir, sport, sdsn := standby(t, primary, "s")
	s := withDB(sdsn, "spire")
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", primary.DataDir) })

	w := startWriter(p)
	time.Sleep(300 * time.Millisecond)
	res, err := replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}})
	require.NoError(t, err)
	acked := w.Stop()
	require.NotEmpty(t, acked)
	require.EqualValues(t, 1, res.OldTimeline)
	require.EqualValues(t, 2, res.NewTimeline)
	require.Equal(t, []replication.FencedDatabase{{Name: "spire"}}, res.Fence.Databases)
	require.Positive(t, res.Unavailable)
	require.NotEmpty(t, res.Routing)
	onS := ids(t, s)
	for _, id := range acked {
		require.True(t, onS[id], "acknowledged insert %d is not on the new primary", id)
	}
	_, err = pgx.Connect(ctx, p)
	require.Equal(t, "55000", pg.SQLState(err), "the old primary still accepts SPIRE's connections")
	require.NoError(t, exec(t, s, "INSERT INTO w VALUES (-1)"), "the new primary takes writes")

	// P becomes a standby of S
	rj, err := replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir,
		Start: true, Port: primary.Port, StandbyPassfile: primary.DataDir + ".pgpass"})
	require.NoError(t, err)
	require.Equal(t, "rewind", rj.Method)
	require.True(t, rj.Stopped)
	require.True(t, rj.Streaming)
	walkNoSecret(t, primary.DataDir, primary.Password)
	require.NoError(t, exec(t, s, "INSERT INTO w VALUES (-2)"))
	require.Eventually(t, func() bool { return ids(t, p)[-2] }, 30*time.Second, 20*time.Millisecond, "the rejoined standby does not replay")
	require.Equal(t, ids(t, s), ids(t, p))

	// and back: S→P, then S rejoins P
	res, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: s}, Standby: pg.Options{DSN: p}})
	require.NoError(t, err)
	require.EqualValues(t, 3, res.NewTimeline)
	require.NoError(t, exec(t, p, "INSERT INTO w VALUES (-3)"))
	rj, err = replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: s}, Primary: pg.Options{DSN: p}, DataDir: sdir,
		Start: true, Port: sport, StandbyPassfile: sdir + ".pgpass"})
	require.NoError(t, err)
	require.True(t, rj.Streaming)
	require.NotContains(t, rj.LeftoverSlots, replication.RewindSlot)
	slots, err := replication.ListSlots(ctx, pg.Options{DSN: s})
	require.NoError(t, err)
	t.Logf("slots on the rejoined S: %+v; leftovers %v", slots, rj.LeftoverSlots)
	require.Eventually(t, func() bool { return ids(t, s)[-3] }, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, ids(t, p), ids(t, s))

	// rejoining again is a no-op
	rj, err = replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: s}, Primary: pg.Options{DSN: p}, DataDir: sdir})
	require.NoError(t, err)
	require.Equal(t, "none", rj.Method)
}

// TestSwitchoverRefusals: nothing is fenced when the standby lags past
// --max-lag or is no copy of the primary; a standby that cannot replay the
// primary's last write in time rolls the fence back.
func TestSwitchoverRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(nil))
	require.NoError(t, exec(t, primary.DSN("postgres"), "CREATE DATABASE spire"))
	p := primary.DSN("spire")
	require.NoError(t, exec(t, p, "CREATE TABLE w (id int PRIMARY KEY, pad text)"))
	_, _, sdsn := standby(t, primary, "s")
	s := withDB(sdsn, "spire")

	// lagging: replay paused, 2 MB written
	require.NoError(t, exec(t, sdsn, "SELECT pg_wal_replay_pause()"))
	require.NoError(t, exec(t, p, "INSERT INTO w SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g"))
	time.Sleep(200 * time.Millisecond)
	_, err := replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}, MaxLag: replication.Limit{Bytes: 64 << 10}})
	var le *replication.LagError
	require.ErrorAs(t, err, &le)
	require.NoError(t, exec(t, p, "INSERT INTO w VALUES (-1)"), "a refused switchover fenced the primary")

	// caught up, then replay paused again: the fence's own WAL is never
	// replayed, the wait times out, and the primary is unfenced
	require.NoError(t, exec(t, sdsn, "SELECT pg_wal_replay_resume()"))
	require.Eventually(t, func() bool {
		conn, err := pgx.Connect(ctx, sdsn)
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		var lag int64
		return conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())").Scan(&lag) == nil && lag == 0
	}, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, exec(t, sdsn, "SELECT pg_wal_replay_pause()"))
	_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}, Wait: time.Second})
	var se *replication.SwitchoverError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "catch-up", se.Step)
	require.True(t, se.RolledBack)
	require.NoError(t, exec(t, p, "INSERT INTO w VALUES (-2)"), "the fence was not rolled back")
	require.NoError(t, exec(t, sdsn, "SELECT pg_wal_replay_resume()"))

	// a delayed standby cannot catch up: refused before anything changes
	require.NoError(t, exec(t, sdsn, "ALTER SYSTEM SET recovery_min_apply_delay = '1h'"))
	require.NoError(t, exec(t, sdsn, "SELECT pg_reload_conf()"))
	require.Eventually(t, func() bool {
		_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}})
		return err != nil && strings.Contains(err.Error(), "recovery_min_apply_delay")
	}, 10*time.Second, 50*time.Millisecond, "%v", err)
	require.NoError(t, exec(t, p, "INSERT INTO w VALUES (-4)"))
	require.NoError(t, exec(t, sdsn, "ALTER SYSTEM RESET recovery_min_apply_delay"))
	require.NoError(t, exec(t, sdsn, "SELECT pg_reload_conf()"))

	// a standby of another cluster
	other := pgtest.NewCluster(t, replicationOpts(nil))
	_, _, odsn := standby(t, other, "o")
	_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: odsn}})
	require.ErrorIs(t, err, replication.ErrNotFollowing)
	// a primary given as the standby
	_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: other.DSN("postgres")}})
	require.ErrorContains(t, err, "not a standby")
	require.NoError(t, exec(t, p, "INSERT INTO w VALUES (-3)"))
}

// TestRejoinRefusals: an old primary that runs unfenced is refused; one
// without wal_log_hints or checksums cannot be rewound, says why, and with
// --reclone-on-failure is copied afresh after being moved aside.
func TestRejoinRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(map[string]string{"full_page_writes": "on", "wal_log_hints": "off", "wal_level": "logical"}))
	require.NoError(t, exec(t, primary.DSN("postgres"), "CREATE DATABASE spire"))
	p := primary.DSN("spire")
	require.NoError(t, exec(t, p, "CREATE TABLE w (id int PRIMARY KEY)"))
	_, _, sdsn := standby(t, primary, "s")
	s := withDB(sdsn, "spire")
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", primary.DataDir) })

	// before any switchover P is a running, unfenced primary
	_, err := replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir})
	require.ErrorContains(t, err, "--primary-dsn is a standby")

	_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}})
	require.NoError(t, err)
	require.NoError(t, exec(t, s, "INSERT INTO w VALUES (1)"))
	// unfenced by hand (forced: a switchover superseded it): rejoin
	// refuses while SPIRE could write there
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}, Undo: true, Force: true})
	require.NoError(t, err)
	_, err = replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir})
	require.ErrorContains(t, err, "not fenced")
	_, err = replication.Rejoin(ctx, replication.RejoinOptions{Primary: pg.Options{DSN: s}, DataDir: primary.DataDir})
	require.ErrorContains(t, err, "a server runs in")
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}})
	require.NoError(t, err)

	// no wal_log_hints: refused with the reason, nothing changed
	_, err = replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir})
	require.ErrorIs(t, err, replication.ErrCannotRewind)
	require.ErrorContains(t, err, "wal_log_hints")
	_, err = pgx.Connect(ctx, primary.DSN("postgres"))
	require.NoError(t, err, "a refused rejoin stopped the old primary")

	// a --slot that is another consumer's logical slot (a CDC tool's,
	// inactive for now) is never dropped to make room
	require.NoError(t, exec(t, s, "SELECT pg_create_logical_replication_slot('cdc_tool', 'test_decoding')"))
	_, err = replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir,
		RecloneOnFailure: true, Slot: "cdc_tool", Port: primary.Port})
	require.ErrorContains(t, err, "logical")
	var slotType string
	sconn, err := pgx.Connect(ctx, s)
	require.NoError(t, err)
	require.NoError(t, sconn.QueryRow(ctx, "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'cdc_tool'").Scan(&slotType))
	sconn.Close(ctx)
	require.Equal(t, "logical", slotType, "rejoin dropped another consumer's slot")
	_, err = os.Stat(primary.DataDir + "/PG_VERSION")
	require.NoError(t, err, "a refused reclone moved the data directory")

	// --reclone-on-failure: moved aside, copied afresh, streaming
	rj, err := replication.Rejoin(ctx, replication.RejoinOptions{Old: pg.Options{DSN: p}, Primary: pg.Options{DSN: s}, DataDir: primary.DataDir,
		RecloneOnFailure: true, Start: true, Port: primary.Port, StandbyPassfile: primary.DataDir + ".pgpass"})
	require.NoError(t, err)
	require.Equal(t, "reclone", rj.Method)
	require.Contains(t, rj.Why, "wal_log_hints")
	require.DirExists(t, rj.MovedAside, "the old data directory must be kept")
	_, err = os.Stat(rj.MovedAside + "/PG_VERSION")
	require.NoError(t, err)
	require.True(t, rj.Streaming)
	require.True(t, ids(t, p)[1])
}

// clientTools is a directory with only what the shipped image carries of
// PostgreSQL: its client programs and pg_rewind (no initdb, pg_ctl,
// postgres).
func clientTools(t *testing.T) string {
	t.Helper()
	src, err := filepath.Glob("/usr/lib/postgresql/*/bin/pg_rewind")
	require.NoError(t, err)
	require.NotEmpty(t, src)
	// not t.TempDir: its parent is closed to the postgres user the
	// programs run as
	dir, err := os.MkdirTemp("", "spiredb-client-tools-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	for _, name := range []string{"pg_basebackup", "pg_rewind", "pg_dump", "pg_restore", "psql"} {
		require.NoError(t, os.Symlink(filepath.Join(filepath.Dir(src[0]), name), filepath.Join(dir, name)))
	}
	return dir
}

// TestClientToolsOnly: bootstrap (without --start) and rejoin of a
// stopped old primary need no server installation, as in the image; what
// does need one (--start) says so in one line.
func TestClientToolsOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bin := clientTools(t)
	primary := pgtest.NewCluster(t, replicationOpts(map[string]string{"full_page_writes": "on"}))
	require.NoError(t, exec(t, primary.DSN("postgres"), "CREATE DATABASE spire"))
	p := primary.DSN("spire")
	require.NoError(t, exec(t, p, "CREATE TABLE w (id int PRIMARY KEY)"))

	cold := filepath.Join(primary.Dir, "cold")
	_, err := replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: primary.DSN("postgres")}, DataDir: cold, BinDir: bin})
	require.NoError(t, err, "bootstrap needs only pg_basebackup")
	require.FileExists(t, filepath.Join(cold, "standby.signal"))
	require.NoError(t, replication.DropSlot(ctx, pg.Options{DSN: primary.DSN("postgres")}, "spiredb_cold"))
	_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: primary.DSN("postgres")}, DataDir: filepath.Join(primary.Dir, "warm"),
		BinDir: bin, Start: true, Port: 1})
	require.ErrorContains(t, err, "no pg_ctl of PostgreSQL")

	_, _, sdsn := standby(t, primary, "s")
	s := withDB(sdsn, "spire")
	_, err = replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}})
	require.NoError(t, err)
	require.NoError(t, exec(t, s, "INSERT INTO w VALUES (1)"))
	// the operator stops the old primary (scales its pod down), then runs
	// rejoin where its data directory is mounted
	require.NoError(t, primary.Halt())
	rj, err := replication.Rejoin(ctx, replication.RejoinOptions{Primary: pg.Options{DSN: s}, DataDir: primary.DataDir, BinDir: bin,
		StandbyPassfile: primary.DataDir + ".pgpass"})
	require.NoError(t, err)
	require.Equal(t, "rewind", rj.Method)
	require.False(t, rj.Stopped)
	// its pod starts again, now a standby
	require.NoError(t, primary.Restart(ctx))
	require.Eventually(t, func() bool { return ids(t, p)[1] }, 30*time.Second, 20*time.Millisecond)
	// its walreceiver reconnects once it has the new timeline's history:
	// the walsender may be gone for a moment after the first replay
	var st *replication.Status
	require.Eventually(t, func() bool {
		var err error
		st, err = replication.GetStatus(ctx, pg.Options{DSN: s}, replication.Limit{Bytes: 16 << 20})
		return err == nil && len(st.Standbys) == 1
	}, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, rj.Slot, st.Standbys[0].Slot)
}

// TestFenceUnderConcurrentWriters: sessions connecting and writing as
// fast as they can, superuser and READ WRITE, none of them gets a write
// acknowledged after Fence returns (a session that was connecting while
// the fence committed is found and ended too).
func TestFenceUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.NewCluster(t, replicationOpts(nil))
	require.NoError(t, exec(t, c.DSN("postgres"), "CREATE DATABASE spire"))
	dsn := c.DSN("spire")
	require.NoError(t, exec(t, dsn, "CREATE TABLE w (id bigserial PRIMARY KEY)"))
	var mu sync.Mutex
	var last time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					continue
				}
				for range 5 {
					if _, err := conn.Exec(ctx, "BEGIN READ WRITE; INSERT INTO w DEFAULT VALUES; COMMIT"); err != nil {
						break
					}
					mu.Lock()
					last = time.Now()
					mu.Unlock()
				}
				conn.Close(ctx)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	_, err := replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: dsn}})
	require.NoError(t, err)
	fenced := time.Now()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	require.False(t, last.IsZero())
	require.True(t, last.Before(fenced), "a write was acknowledged %s after the fence returned", last.Sub(fenced))
}

// TestUndoRefusedOnASupersededPrimary: after a switchover the old primary
// stays fenced; lifting that fence while the new primary serves makes two
// primaries. fence --undo refuses on a server a switchover superseded
// (and changes nothing) unless forced; a rejoin, which makes it a standby
// of the new primary, clears the mark.
func TestUndoRefusedOnASupersededPrimary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, replicationOpts(map[string]string{"wal_log_hints": "on"}))
	require.NoError(t, exec(t, primary.DSN("postgres"), "CREATE DATABASE spire"))
	p := primary.DSN("spire")
	_, _, sdsn := standby(t, primary, "s")
	s := withDB(sdsn, "spire")
	_, err := replication.Switchover(ctx, replication.SwitchoverOptions{Primary: pg.Options{DSN: p}, Standby: pg.Options{DSN: s}})
	require.NoError(t, err)
	require.NoError(t, exec(t, s, "CREATE TABLE after_switchover (id int)"), "the new primary serves")

	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}, Undo: true})
	var se *replication.SupersededError
	require.ErrorAs(t, err, &se)
	require.Contains(t, err.Error(), "replica rejoin")
	_, err = pgx.Connect(ctx, p)
	require.Equal(t, "55000", pg.SQLState(err), "a refused undo reopened the old primary: %v", err)

	// the new primary itself may be fenced and unfenced at will
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: s}})
	require.NoError(t, err)
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: s}, Undo: true})
	require.NoError(t, err)

	// forced (the other primary is known to be gone): reopened, mark gone
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}, Undo: true, Force: true})
	require.NoError(t, err)
	require.NoError(t, exec(t, p, "CREATE TABLE reopened (id int)"))
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}})
	require.NoError(t, err)
	_, err = replication.Fence(ctx, replication.FenceOptions{Conn: pg.Options{DSN: p}, Undo: true})
	require.NoError(t, err, "the mark went with the forced undo")
}
