package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
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
// while a writer updates random entries one at a time and measures its own
// latency, in one run: (a) one UPDATE of the whole table, (b) the DO-block
// method as commonly published (OFFSET batches of 1,000 with pg_sleep(0.1),
// all one transaction) and the same without the sleep, (c) spiredb migrate
// backfill. Each method starts after a VACUUM; the writer's idle latency is
// measured first.
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
	_, err = conn.Exec(ctx, "VACUUM ANALYZE registered_entries")
	require.NoError(b, err)
	bin := spiredbCLI(b)
	_, _, code := runCLIb(b, bin, "migrate", "up", "--dsn", dsn)
	require.Equal(b, 0, code)

	// the writer: SPIRE-like single-entry updates, latency per phase
	writer, err := pgx.Connect(ctx, dsn)
	require.NoError(b, err)
	defer writer.Close(ctx)
	var mu sync.Mutex
	var lat []time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		r := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := writer.Exec(ctx, "UPDATE registered_entries SET revision_number = revision_number + 1, updated_at = now() WHERE id = $1", 1+r.Int64N(int64(n)))
			d := time.Since(t0)
			if err == nil {
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	phase := func(name string, fn func()) {
		_, err := conn.Exec(ctx, "VACUUM registered_entries")
		require.NoError(b, err)
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		t0 := time.Now()
		fn()
		total := time.Since(t0)
		// a write blocked by the method completes just after it: wait for it
		mu.Lock()
		seen := len(lat)
		mu.Unlock()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			grew := len(lat) > seen
			mu.Unlock()
			if grew {
				break
			}
		}
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
		benchLog(b, "%-44s total %8.2f s  writer p50 %7.2f ms  p99 %8.2f ms  max %9.2f ms  (%d writes)",
			name, total.Seconds(), ms64(pct(0.5)), ms64(pct(0.99)), ms64(mx), len(s))
	}
	for range b.N {
		phase("idle (the writer alone, 5 s)", func() { time.Sleep(5 * time.Second) })
		phase("(a) one UPDATE of the whole table", func() {
			_, err := conn.Exec(ctx, "UPDATE registered_entries SET hint = 'a'")
			require.NoError(b, err)
		})
		if os.Getenv("SPIREDB_BENCH_BACKFILL_SKIP_DO") != "" {
			goto backfill
		}
		phase("(b) DO block, OFFSET batches, no sleep", func() {
			_, err := conn.Exec(ctx, doBlock("b1", ""))
			require.NoError(b, err)
		})
		phase("(b) DO block, OFFSET batches, pg_sleep(0.1)", func() {
			_, err := conn.Exec(ctx, doBlock("b2", "PERFORM pg_sleep(0.1);"))
			require.NoError(b, err)
		})
	backfill:
		for _, rest := range []string{"0", "0.5"} {
			phase("(c) spiredb migrate backfill --rest "+rest, func() {
				out, stderr, code := runCLIb(b, bin, "migrate", "backfill", "--dsn", dsn, "--table", "registered_entries", "--set", "hint = 'c"+rest+"'",
					"--name", fmt.Sprintf("bench-%d", time.Now().UnixNano()), "--rest", rest)
				require.Equal(b, 0, code, out+stderr)
			})
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
