package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/internal/tcpproxy"
	"github.com/spiredb/spiredb/replication"
)

// switchoverCluster is a primary fit for switchovers and rewinds
// (synchronous_commit, wal_log_hints and full_page_writes on), with a
// "spire" database.
func switchoverCluster(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	c := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{
		"synchronous_commit": "on", "wal_log_hints": "on", "full_page_writes": "on"}})
	_, err := c.CreateDatabase(context.Background(), "spire")
	require.NoError(t, err)
	return c
}

func countEntries(t *testing.T, dsn string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM registered_entries").Scan(&n))
	return n
}

// TestFenceStopsSpire: a live spire-server writes to the primary; after
// `replica fence` its next entry create fails and no row is added (lib/pq's
// BEGIN READ WRITE went through the old read-only fence); after --undo it
// writes again.
func TestFenceStopsSpire(t *testing.T) {
	t.Parallel()
	c := switchoverCluster(t)
	srv := startSpire(t, &pgtest.DB{Cluster: c, Name: "spire"}, spiretest.Options{})
	ctx := context.Background()
	entries := spirefixture.GenerateEntries(12, 5, nil)
	require.NoError(t, srv.CreateEntries(ctx, entries[:10]))
	require.Equal(t, 10, countEntries(t, c.DSN("spire")))

	out, errOut, code := runCLI(t, nil, "replica", "fence", "--dsn", c.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "database spire: fenced")
	require.Error(t, srv.CreateEntries(ctx, entries[10:11]), "SPIRE wrote through the fence")

	// again: idempotent
	out, errOut, code = runCLI(t, nil, "replica", "fence", "--dsn", c.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "already fenced")

	// an operator pointing a command at it is told what it is
	_, errOut, code = runCLI(t, nil, "doctor", "--dsn", c.DSN("spire"))
	require.Equal(t, 3, code, errOut)
	require.Contains(t, errOut, "replica fence --undo")

	out, errOut, code = runCLI(t, nil, "replica", "fence", "--undo", "--dsn", c.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "reopened")
	require.Equal(t, 10, countEntries(t, c.DSN("spire")), "a row was written while fenced")
	require.Eventually(t, func() bool { return srv.CreateEntries(ctx, entries[11:12]) == nil }, 30*time.Second, 200*time.Millisecond)
	require.Equal(t, 11, countEntries(t, c.DSN("spire")))
}

// spireWriter creates entries one at a time through a spire-server's API
// and keeps those the API acknowledged, with the time of each.
type spireWriter struct {
	mu    sync.Mutex
	acked []ack
	stop  chan struct{}
	done  chan struct{}
}

type ack struct {
	spiffeID string
	at       time.Time
}

func startSpireWriter(srv *spiretest.Server, entries []spirefixture.Entry) *spireWriter {
	w := &spireWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for _, e := range entries {
			select {
			case <-w.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := srv.CreateEntries(ctx, []spirefixture.Entry{e})
			cancel()
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, ack{e.SpiffeID, time.Now()})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *spireWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitAcks waits until n more acknowledgements than before arrived.
func (w *spireWriter) waitAcks(t testing.TB, n int) {
	t.Helper()
	start := w.count()
	require.Eventually(t, func() bool { return w.count() >= start+n }, time.Minute, 20*time.Millisecond, "the writer gets no acknowledgements")
}

func (w *spireWriter) Stop() []ack {
	close(w.stop)
	<-w.done
	return w.acked
}

// gap is the longest time between two acknowledgements: the write
// unavailability a switchover caused.
func gap(acks []ack) time.Duration {
	var longest time.Duration
	for i := 1; i < len(acks); i++ {
		longest = max(longest, acks[i].at.Sub(acks[i-1].at))
	}
	return longest
}

func spiffeIDs(t *testing.T, dsn string) map[string]bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT spiffe_id FROM registered_entries")
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	m := map[string]bool{}
	for _, id := range got {
		m[id] = true
	}
	return m
}

func addr(c *pgcluster.Cluster) string { return fmt.Sprintf("%s:%d", c.Host, c.Port) }

// TestSwitchoverRoundTripWithSpire: a spire-server reaches the primary
// through a Service stand-in and creates entries without pause. P→S
// switchover: every entry its API acknowledged is on S; P is rejoined as
// S's standby with pg_rewind; S→P back; S rejoined. SPIRE serves the same
// entries, byte for byte, at every step.
func TestSwitchoverRoundTripWithSpire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := switchoverCluster(t)
	s := startStandby(t, p)
	sdir := filepath.Join(p.Dir, "standby")
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", p.DataDir) })
	proxy, err := tcpproxy.Start(addr(p))
	require.NoError(t, err)
	t.Cleanup(proxy.Close)
	conn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=spire user=%s password=%s sslmode=disable", proxy.Port(), p.User, p.Password)
	srv := startSpire(t, &pgtest.DB{Cluster: p, Name: "spire"}, spiretest.Options{ConnectionString: conn})
	entries := spirefixture.GenerateEntries(2000, 21, nil)
	require.NoError(t, srv.CreateEntries(ctx, entries[:100]))
	before, err := srv.Show(ctx)
	require.NoError(t, err)

	next := 100
	switchover := func(from, to *pgcluster.Cluster) {
		t.Helper()
		w := startSpireWriter(srv, entries[next:])
		w.waitAcks(t, 3)
		out, errOut, code := runCLI(t, nil, "replica", "switchover", "--primary-dsn", from.DSN("spire"), "--standby-dsn", to.DSN("spire"), "--yes", "-o", "json")
		require.Equal(t, 0, code, errOut)
		proxy.Switch(addr(to)) // the operator re-points the Service
		w.waitAcks(t, 3)
		acks := w.Stop()
		next += len(acks) + 1
		var res replication.SwitchoverResult
		require.NoError(t, json.Unmarshal([]byte(out), &res))
		t.Logf("switchover: spiredb %s, writes unavailable %s", res.Unavailable, gap(acks))
		on := spiffeIDs(t, to.DSN("spire"))
		for _, a := range acks {
			require.True(t, on[a.spiffeID], "SPIRE acknowledged %s but the new primary does not have it", a.spiffeID)
		}
		_, err := pgx.Connect(ctx, from.DSN("spire"))
		require.Error(t, err, "the old primary still accepts SPIRE's connections")
	}
	rejoin := func(old, primary *pgcluster.Cluster, dir string) {
		t.Helper()
		_, errOut, code := runCLI(t, nil, "replica", "rejoin", "--dsn", old.DSN("spire"), "--primary-dsn", primary.DSN("spire"),
			"--data-dir", dir, "--start", "--port", fmt.Sprint(old.Port), "--standby-passfile", dir+".pgpass", "--yes")
		require.Equal(t, 0, code, errOut)
		require.Eventually(t, func() bool { return countEntries(t, old.DSN("spire")) == countEntries(t, primary.DSN("spire")) }, time.Minute, 50*time.Millisecond)
	}
	// sameEntries: the entries SPIRE served before are served unchanged
	sameEntries := func(before []byte) []byte {
		t.Helper()
		now, err := srv.Show(ctx)
		require.NoError(t, err)
		var was, is []map[string]any
		require.NoError(t, json.Unmarshal(before, &was))
		require.NoError(t, json.Unmarshal(now, &is))
		byID := map[any]map[string]any{}
		for _, e := range is {
			byID[e["id"]] = e
		}
		for _, e := range was {
			require.Equal(t, e, byID[e["id"]], "entry %v changed", e["id"])
		}
		return now
	}

	switchover(p, s)
	step := sameEntries(before)
	rejoin(p, s, p.DataDir)
	step = sameEntries(step)
	switchover(s, p)
	step = sameEntries(step)
	rejoin(s, p, sdir)
	final := sameEntries(step)
	require.JSONEq(t, string(step), string(final))
	require.Equal(t, countEntries(t, p.DSN("spire")), countEntries(t, s.DSN("spire")))
}
