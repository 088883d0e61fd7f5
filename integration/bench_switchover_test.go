package integration_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/internal/tcpproxy"
	"github.com/spiredb/spiredb/replication"
)

// BenchmarkSwitchover measures SPIRE's write unavailability across
// `spiredb replica switchover`, SPIREDB_BENCH_SWITCHOVER_RUNS times
// (default 10), alternating direction (P→S, rejoin P; S→P, rejoin S): a
// spire-server reaches the primary through a Service stand-in and creates
// entries one at a time through its API without pause; the Service is
// re-pointed as soon as the command returns. Unavailability is the longest
// gap between two acknowledged entries (the last on the old primary to the
// first on the new); spiredb's part is the fence-to-reopen window the
// command reports. Fsync on (Durable).
func BenchmarkSwitchover(b *testing.B) {
	runs := envInts(b, "SPIREDB_BENCH_SWITCHOVER_RUNS", "10")[0]
	p := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"synchronous_commit": "on", "wal_log_hints": "on"}})
	_, err := p.CreateDatabase(b.Context(), "spire")
	require.NoError(b, err)
	s := startStandbyTB(b, p)
	sdir := p.Dir + "/standby"
	b.Cleanup(func() { _ = replication.StopStandby(b.Context(), "", p.DataDir) })
	proxy, err := tcpproxy.Start(addr(p))
	require.NoError(b, err)
	b.Cleanup(proxy.Close)
	conn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=spire user=%s password=%s sslmode=disable", proxy.Port(), p.User, p.Password)
	srv, err := spiretest.Start(b.Context(), spiretest.Options{ConnectionString: conn})
	require.NoError(b, err)
	b.Cleanup(srv.Stop)
	entries := spirefixture.GenerateEntries(20000, 31, nil)
	require.NoError(b, srv.CreateEntries(b.Context(), entries[:100]))
	bin := spiredbCLI(b)

	for range b.N {
		var unavailable, own, wall, rejoin, typical []time.Duration
		next := 100
		from, to := p, s
		dirs := map[*pgcluster.Cluster]string{p: p.DataDir, s: sdir}
		for r := range runs {
			w := startSpireWriter(srv, entries[next:])
			w.waitAcks(b, 5)
			start := time.Now()
			out, errOut, code := runCLIb(b, bin, "replica", "switchover", "--primary-dsn", from.DSN("spire"), "--standby-dsn", to.DSN("spire"), "--yes", "-o", "json")
			require.Equal(b, 0, code, errOut)
			wall = append(wall, time.Since(start))
			proxy.Switch(addr(to))
			w.waitAcks(b, 5)
			acks := w.Stop()
			next += len(acks) + 1
			var res replication.SwitchoverResult
			require.NoError(b, json.Unmarshal([]byte(out), &res))
			own = append(own, res.Unavailable)
			unavailable = append(unavailable, gap(acks))
			for i := 1; i < len(acks); i++ {
				typical = append(typical, acks[i].at.Sub(acks[i-1].at))
			}

			start = time.Now()
			_, errOut, code = runCLIb(b, bin, "replica", "rejoin", "--dsn", from.DSN("spire"), "--primary-dsn", to.DSN("spire"), "--data-dir", dirs[from],
				"--start", "--port", fmt.Sprint(from.Port), "--standby-passfile", dirs[from]+".pgpass", "--yes")
			require.Equal(b, 0, code, errOut)
			rejoin = append(rejoin, time.Since(start))
			benchLog(b, "run %d: writes unavailable %s, spiredb %s (fence %s, catch-up %s, promotion %s, reopen %s), switchover wall %s, rejoin %s", r+1,
				unavailable[r].Round(time.Millisecond), own[r].Round(time.Millisecond), res.Fencing.Round(time.Millisecond), res.CatchUp.Round(time.Millisecond),
				res.Promotion.Round(time.Millisecond), res.Reopen.Round(time.Millisecond), wall[r].Round(time.Millisecond), rejoin[r].Round(time.Millisecond))
			from, to = to, from
		}
		benchLog(b, "write unavailability: median %s, p95 %s; spiredb's part: median %s, p95 %s; switchover wall median %s; rejoin (pg_rewind) median %s; one entry create normally takes %s (median gap)",
			median(unavailable).Round(time.Millisecond), p95(unavailable).Round(time.Millisecond), median(own).Round(time.Millisecond),
			p95(own).Round(time.Millisecond), median(wall).Round(time.Millisecond), median(rejoin).Round(time.Millisecond), median(typical).Round(time.Millisecond))
		b.ReportMetric(ms64(median(unavailable)), "unavailable-median-ms")
		b.ReportMetric(ms64(p95(unavailable)), "unavailable-p95-ms")
		b.ReportMetric(ms64(p95(own)), "spiredb-p95-ms")
	}
}

// p95 is the nearest-rank 95th percentile.
func p95(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (95*len(s)+99)/100 - 1
	return s[max(i, 0)]
}

// startStandbyTB is startStandby for benchmarks.
func startStandbyTB(b *testing.B, primary *pgcluster.Cluster) *pgcluster.Cluster {
	b.Helper()
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(b, err)
	dir := primary.Dir + "/standby"
	_, stderr, code := runCLIb(b, spiredbCLI(b), "replica", "bootstrap", "--primary-dsn", primary.DSN("postgres"), "--data-dir", dir,
		"--standby-passfile", dir+".pgpass", "--start", "--port", fmt.Sprint(port))
	require.Equal(b, 0, code, stderr)
	b.Cleanup(func() { _ = replication.StopStandby(b.Context(), "", dir) })
	standby := *primary
	standby.Port = port
	return &standby
}
