package integration_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/spire"
)

// BenchmarkBackfill changes one column of every row of SPIRE's
// registered_entries holding 1,000,000 rows (SPIREDB_BENCH_BACKFILL_ROWS),
// while SPIREDB_BENCH_BACKFILL_WRITERS (4) writers update random entries one
// at a time, back to back, measuring their throughput and latency, in one
// run: (a) one UPDATE of the whole table, (b) the DO-block method as
// commonly published (OFFSET batches of 1,000 with pg_sleep(0.1), all one
// transaction) and the same without the sleep (SPIREDB_BENCH_BACKFILL_SKIP_DO=1
// skips them), (c) spiredb migrate backfill, (d) the same with --max-impact
// (SPIREDB_BENCH_BACKFILL_IMPACT, space-separated, default 30%); (c) and
// each (d) after the same with the spiredb binary
// SPIREDB_BENCH_BACKFILL_OTHER_BIN names, when set (an earlier build, to
// compare in one run); then (e) spiredb migrate backfill (and the other
// build) with each set of flags in SPIREDB_BENCH_BACKFILL_MODES (;-separated, e.g. "--batch-size
// 100; --batch-size 100 --rest 1"), to compare modes in one run. Each
// method starts after a VACUUM and a CHECKPOINT; the writers' idle
// throughput and latency are measured first.
func BenchmarkBackfill(b *testing.B) {
	n := envInts(b, "SPIREDB_BENCH_BACKFILL_ROWS", "1000000")[0]
	ctx := context.Background()
	c := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"shared_buffers": "512MB", "max_wal_size": "4GB"}})
	dsn, err := c.CreateDatabase(ctx, "spire")
	require.NoError(b, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(b, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, spire.SchemaSQL+"; RESET search_path") // pg_dump's output empties it
	require.NoError(b, err)
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO registered_entries (created_at, updated_at, entry_id, spiffe_id, parent_id, ttl, admin, downstream, expiry, revision_number, store_svid, hint, jwt_svid_ttl)
		SELECT now(), now(), md5(g::text), 'spiffe://example.org/ns-' || (g %% 50) || '/w-' || g, 'spiffe://example.org/spire/agent/node-' || (g %% 20),
		       3600, false, false, CASE WHEN g %% 10 = 0 THEN 2000000000 ELSE 0 END, 0, false, '', 300
		FROM generate_series(1, %d) g`, n))
	require.NoError(b, err)
	// SPIRE's servers are commonly watched with pg_stat_statements: the
	// impact governor reads the table's statements from it
	_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	require.NoError(b, err)
	_, err = conn.Exec(ctx, "VACUUM ANALYZE registered_entries")
	require.NoError(b, err)
	bin := spiredbCLI(b)
	_, _, code := runCLIb(b, bin, "migrate", "up", "--dsn", dsn)
	require.Equal(b, 0, code)

	// the writers: SPIRE-like single-entry update transactions, each on its
	// own session, back to back (like pgbench's clients); latency per phase
	writers := envInts(b, "SPIREDB_BENCH_BACKFILL_WRITERS", "4")[0]
	var mu sync.Mutex
	var lat []time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wc, err := pgx.Connect(ctx, dsn)
		require.NoError(b, err)
		defer wc.Close(ctx)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(1, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				_, err := wc.Exec(ctx, "UPDATE registered_entries SET revision_number = revision_number + 1, updated_at = now() WHERE id = $1", 1+r.Int64N(int64(n)))
				d := time.Since(t0)
				if err == nil {
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			}
		})
	}
	type result struct {
		total    time.Duration
		tps      float64
		p50, p99 time.Duration
	}
	phase := func(name string, fn func()) result {
		_, err := conn.Exec(ctx, "VACUUM registered_entries")
		require.NoError(b, err)
		_, err = conn.Exec(ctx, "CHECKPOINT")
		require.NoError(b, err)
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		t0 := time.Now()
		fn()
		total := time.Since(t0)
		mu.Lock()
		s := slices.Clone(lat)
		mu.Unlock()
		slices.Sort(s)
		pct := func(p float64) time.Duration {
			if len(s) == 0 {
				return 0
			}
			return s[min(len(s)-1, int(p*float64(len(s))))]
		}
		var mx time.Duration
		if len(s) > 0 {
			mx = s[len(s)-1]
		}
		res := result{total: total, tps: float64(len(s)) / total.Seconds(), p50: pct(0.5), p99: pct(0.99)}
		benchLog(b, "%-44s total %8.2f s  writers %6.0f TPS  p50 %7.2f ms  p99 %8.2f ms  max %9.2f ms  (%d writes)",
			name, total.Seconds(), res.tps, ms64(res.p50), ms64(res.p99), ms64(mx), len(s))
		return res
	}
	backfillPhase := func(name string, bin string, args ...string) result {
		return phase(name, func() {
			cmd := exec.Command(bin, append([]string{"migrate", "backfill", "--dsn", dsn, "--table", "registered_entries", "--log-level", cmp.Or(os.Getenv("SPIREDB_BENCH_BACKFILL_TRACE"), "info"),
				"--set", fmt.Sprintf("hint = 'c%d'", time.Now().UnixNano()), "--name", fmt.Sprintf("bench-%d", time.Now().UnixNano())}, args...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			require.NoError(b, err, string(out)+stderr.String())
			if f := os.Getenv("SPIREDB_BENCH_BACKFILL_TRACE_FILE"); f != "" {
				require.NoError(b, os.WriteFile(f, []byte(stderr.String()), 0o644))
			}
		})
	}
	other := os.Getenv("SPIREDB_BENCH_BACKFILL_OTHER_BIN")
	impacts := strings.Fields(os.Getenv("SPIREDB_BENCH_BACKFILL_IMPACT"))
	if len(impacts) == 0 {
		impacts = []string{"30%"}
	}
	for range b.N {
		// the machine is shared: the writers alone are measured before each
		// method and after the last, and each method is compared with the
		// mean of the idle phases on either side of it
		idlePhase := func() result {
			return phase(fmt.Sprintf("idle (%d writers alone, 8 s)", writers), func() { time.Sleep(8 * time.Second) })
		}
		type measured struct {
			name string
			res  result
		}
		var runs []measured
		idles := []result{idlePhase()}
		run := func(name string, fn func() result) {
			runs = append(runs, measured{name, fn()})
			idles = append(idles, idlePhase())
		}
		run("(a)", func() result {
			return phase("(a) one UPDATE of the whole table", func() {
				_, err := conn.Exec(ctx, "UPDATE registered_entries SET hint = 'a'")
				require.NoError(b, err)
			})
		})
		if os.Getenv("SPIREDB_BENCH_BACKFILL_SKIP_DO") == "" {
			run("(b) no sleep", func() result {
				return phase("(b) DO block, OFFSET batches, no sleep", func() {
					_, err := conn.Exec(ctx, doBlock("b1", ""))
					require.NoError(b, err)
				})
			})
			run("(b) pg_sleep", func() result {
				return phase("(b) DO block, OFFSET batches, pg_sleep(0.1)", func() {
					_, err := conn.Exec(ctx, doBlock("b2", "PERFORM pg_sleep(0.1);"))
					require.NoError(b, err)
				})
			})
		}
		// each backfill method runs with the other build first, when one is
		// named (the machine is too noisy to compare builds across runs)
		backfills := func(label string, args ...string) {
			flags := strings.Join(args, " ")
			if other != "" {
				run(strings.TrimSpace(label+" other build "+flags), func() result {
					return backfillPhase(strings.TrimSpace(label+" other build: migrate backfill "+flags), other, args...)
				})
			}
			run(label+" "+cmp.Or(flags, "default"), func() result {
				return backfillPhase(strings.TrimSpace(label+" spiredb migrate backfill "+flags), bin, args...)
			})
		}
		backfills("(c)")
		for _, imp := range impacts {
			backfills("(d)", "--max-impact", imp)
		}
		for _, mode := range strings.Split(os.Getenv("SPIREDB_BENCH_BACKFILL_MODES"), ";") {
			if args := strings.Fields(mode); len(args) > 0 {
				backfills("(e)", args...)
			}
		}
		one := runs[0].res
		for i, m := range runs[1:] {
			before, after := idles[i+1], idles[i+2]
			tps := (before.tps + after.tps) / 2
			p99 := (before.p99 + after.p99) / 2
			r := m.res
			benchLog(b, "%s: total %.2f× (a); writers %.0f%% of idle TPS (%.0f), p99 %.2f× idle (%.2f ms)", m.name, r.total.Seconds()/one.total.Seconds(),
				100*r.tps/tps, tps, r.p99.Seconds()/p99.Seconds(), ms64(p99))
			key := strings.NewReplacer(" ", "", "(", "", ")", "", "%", "", "--", "").Replace(m.name)
			b.ReportMetric(r.total.Seconds()/one.total.Seconds(), key+"-total/one-update")
			b.ReportMetric(r.tps/tps, key+"-tps/idle")
			b.ReportMetric(r.p99.Seconds()/p99.Seconds(), key+"-p99/idle")
		}
	}
	close(stop)
	wg.Wait()
}

// doBlock is the published method: OFFSET paging inside one DO block.
func doBlock(value, sleep string) string {
	return fmt.Sprintf(`DO $$
DECLARE n int := 0;
BEGIN
  LOOP
    UPDATE registered_entries SET hint = '%s'
    WHERE id IN (SELECT id FROM registered_entries ORDER BY id OFFSET n LIMIT 1000);
    EXIT WHEN NOT FOUND;
    n := n + 1000;
    %s
  END LOOP;
END $$`, value, sleep)
}

func runCLIb(b *testing.B, bin string, args ...string) (string, string, int) {
	b.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.Output()
	stderr := ""
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
		stderr = string(ee.Stderr)
	} else if err != nil {
		b.Fatal(err)
	}
	return string(out), stderr, code
}
