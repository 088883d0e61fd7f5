package backfill

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// The impact governor (Options.MaxImpact) paces a backfill by what the live
// workload feels, not by the backfill's own batch time. It measures, in
// windows of about a second:
//
//   - the commit latency of a minimal write transaction (a transactional
//     pg_logical_emit_message: an xid, one WAL record, a commit that waits for
//     the WAL flush and any synchronous standby), every 20 ms on a session
//     of its own: what each of SPIRE's write transactions pays on top of its
//     own work, averaged as a client that waits for each transaction feels
//     it (felt);
//   - when pg_stat_statements is readable, the mean execution time of the
//     other statements that name the table (spiredb's own excluded), which
//     is already an average over their calls;
//
// and compares each with its baseline, taken before the first batch with the
// backfill idle and again every 30 s. When either rises by more than
// MaxImpact, batches that had grown get shorter (down to 25 ms), and then
// the rest after each batch grows, in steps proportional to the excess;
// under the budget the rest shrinks first, and under half of it batches
// grow back (to 50 ms).
// Lock waits on the table pause the backfill as with PauseOnLockWaits.

const (
	probeEvery       = 20 * time.Millisecond
	impactWindow     = time.Second
	calibrateEvery   = 30 * time.Second
	calibrateFor     = time.Second
	firstCalibration = 2 * time.Second
	// Under a governor batches aim at a duration between minBatch and
	// maxBatch, starting at startBatch, and the rest after each is the
	// lever. Shorter batches were the first one (down to 5 ms), but on a
	// CPU-bound server a batch's fixed cost — two round trips, each waiting
	// in the run queue — was ≈ 3.5 ms, and 100-row batches back to back cost
	// the writers what 1,000-row ones did in twice the time. With a 25 ms
	// floor the job took 0.25–0.49× as long, the writers keeping 82–100% of
	// the throughput they kept beside the 5 ms floor (docs/BENCHMARKS.md).
	minBatch   = 25 * time.Millisecond
	startBatch = 25 * time.Millisecond
	maxBatch   = 50 * time.Millisecond
	maxRest    = 20.0 // rest after a batch, in batch durations
)

// probeSQL is a minimal write transaction. Its message is not decoded by
// anything but a logical decoding consumer, which skips foreign prefixes.
const probeSQL = pg.Marker + "SELECT pg_catalog.pg_logical_emit_message(true, 'spiredb.backfill', '')"

// probeFallback measures only a round trip and the CPU, where the role may
// not emit WAL messages.
const probeFallback = pg.Marker + "SELECT 1"

type governor struct {
	conn   *pgx.Conn // the job's session, idle between batches: pg_stat_statements
	probeC *pgx.Conn // the probe's own session
	budget float64
	table  string
	log    *slog.Logger

	mu      sync.Mutex
	samples []time.Duration // probe latencies since the last window
	probeOK bool            // the probe writes (else: a round trip only)
	stop    context.CancelFunc
	done    chan struct{}

	// baselines, from the last calibration
	baseProbe time.Duration   // the probe's felt latency: the median of the last calibrations
	baseHist  []time.Duration // the last calibrations' felt latencies
	baseStmt  float64         // ms per call of the table's other statements; 0: unknown
	queryIDs  []int64         // those statements in pg_stat_statements
	pgss      string          // its qualified function, "" when not installed
	stmtCalls int64           // counters at the window's start
	stmtTime  float64
	stmtOK    bool

	windowStart time.Time
	lastCalib   time.Time
	rest        float64       // in batch durations
	target      time.Duration // what batch sizing aims at
	impact      float64       // the last window's, as a fraction
	why         string
}

// startGovernor opens the probe's session (a copy of conn's
// configuration) and starts probing; pg_stat_statements is read on conn,
// between batches.
func startGovernor(ctx context.Context, conn *pgx.Conn, t *table, budget float64, log *slog.Logger) (*governor, error) {
	gc, err := pgx.ConnectConfig(ctx, conn.Config().Copy())
	if err != nil {
		return nil, fmt.Errorf("--max-impact: opening its measuring session: %w", err)
	}
	g := &governor{conn: conn, probeC: gc, budget: budget, table: t.relname, log: log, done: make(chan struct{}), target: startBatch}
	g.probeOK = true
	if _, err := gc.Exec(ctx, probeSQL); err != nil {
		if gc.IsClosed() {
			return nil, err
		}
		log.Warn("--max-impact: the role cannot emit a WAL message (pg_logical_emit_message); measuring round trips without commits", "error", err)
		g.probeOK = false
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.stop = cancel
	go g.probe(pctx)
	return g, nil
}

func (g *governor) probe(ctx context.Context) {
	defer close(g.done)
	sql := probeSQL
	if !g.probeOK {
		sql = probeFallback
	}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t0 := time.Now()
		if _, err := g.probeC.Exec(ctx, sql); err != nil {
			if ctx.Err() == nil {
				g.log.Warn("--max-impact: probe failed", "error", err)
			}
			if g.probeC.IsClosed() {
				return
			}
			continue
		}
		d := time.Since(t0)
		g.mu.Lock()
		g.samples = append(g.samples, d)
		g.mu.Unlock()
	}
}

// close stops the probe and closes its session.
func (g *governor) close() {
	g.stop()
	<-g.done
	_ = g.probeC.Close(context.Background())
}

// takeSamples returns the probe latencies since the last call.
func (g *governor) takeSamples() []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.samples
	g.samples = nil
	return s
}

// felt is the latency a closed-loop client's calls see, on average, from
// samples taken at even times: their harmonic mean. Such a client (a SPIRE
// server, pgbench) sends its next transaction when the last returns, so it
// makes 1/L calls a second while the latency is L: weighting each sample by
// that, Σ(L·1/L)/Σ(1/L) = n/Σ(1/L). Its throughput moves by the inverse, so
// the arithmetic mean (what the probe measured before) overstated the
// workload's loss: half the time at twice the latency read as 50% slower
// where the writers lost a quarter of their throughput (33% slower per
// call); on the arithmetic mean, --max-impact 50% left them at 102% of
// their idle throughput (docs/BENCHMARKS.md). A stall moves it by what it cost the
// calls, not by its length.
func felt(s []time.Duration) time.Duration {
	if len(s) == 0 {
		return 0
	}
	var inv float64
	for _, d := range s {
		inv += 1 / float64(max(d, time.Microsecond))
	}
	return time.Duration(float64(len(s)) / inv)
}

func p90(s []time.Duration) time.Duration {
	if len(s) == 0 {
		return 0
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*9/10)]
}

// tableStatements finds the other statements naming the table in
// pg_stat_statements. Not an error when it is missing or its texts are
// hidden from this role: the probe alone governs then.
func (g *governor) tableStatements(ctx context.Context) {
	g.queryIDs, g.stmtOK = nil, false
	if g.pgss == "" {
		var schema *string
		if err := g.conn.QueryRow(ctx, pg.Marker+`SELECT n.nspname FROM pg_catalog.pg_extension e
			JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'`).Scan(&schema); err != nil || schema == nil {
			return
		}
		g.pgss = pgx.Identifier{*schema, "pg_stat_statements"}.Sanitize()
	}
	rows, err := g.conn.Query(ctx, pg.Marker+`SELECT DISTINCT s.queryid FROM `+g.pgss+`(true) s
		WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
		  AND s.queryid IS NOT NULL AND s.query ~* $1 AND s.query NOT LIKE $2`,
		`\m`+regexp.QuoteMeta(g.table)+`\M`, pg.Marker+"%")
	if err != nil {
		g.stmtOK = false
		return
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	g.queryIDs, g.stmtOK = ids, err == nil && len(ids) > 0
}

// stmtCounters reads the calls and total time of the table's statements.
func (g *governor) stmtCounters(ctx context.Context) (int64, float64, bool) {
	if !g.stmtOK {
		return 0, 0, false
	}
	var calls int64
	var total float64
	err := g.conn.QueryRow(ctx, pg.Marker+`SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(total_exec_time), 0)::float8
		FROM `+g.pgss+`(false)
		WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) AND queryid = ANY($1)`, g.queryIDs).Scan(&calls, &total)
	if err != nil {
		g.stmtOK = false
		return 0, 0, false
	}
	return calls, total, true
}

// calibrate measures the workload with the backfill idle for d and takes
// that as the baseline.
func (g *governor) calibrate(ctx context.Context, d time.Duration) error {
	g.tableStatements(ctx)
	c0, t0, ok := g.stmtCounters(ctx)
	g.takeSamples()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	// one second of a shared server is noisy: the median of the last three
	if m := felt(g.takeSamples()); m > 0 {
		g.baseHist = append(g.baseHist, m)
		if len(g.baseHist) > 3 {
			g.baseHist = g.baseHist[1:]
		}
		h := slices.Clone(g.baseHist)
		slices.Sort(h)
		g.baseProbe = h[len(h)/2]
	}
	g.baseStmt = 0
	c1, t1, ok1 := g.stmtCounters(ctx)
	if ok && ok1 && c1-c0 >= 10 {
		g.baseStmt = (t1 - t0) / float64(c1-c0)
	}
	// the first window starts where the calibration ended
	g.stmtCalls, g.stmtTime = c1, t1
	g.windowStart, g.lastCalib = time.Now(), time.Now()
	g.log.Debug("backfill impact baseline", "probe_felt", g.baseProbe, "statement_ms", g.baseStmt)
	return nil
}

// pace moves the batch target and the rest after one window's impact, in
// steps proportional to its distance from the budget: a fixed step (the
// rest × 1.5 on any excess, × 0.8 under) swung a 1M-row job between no rest
// and the longest one every half minute, over the budget in 109 of 240
// windows (docs/BENCHMARKS.md). Over the budget, batches first shorten (to
// minBatch), then the rest grows by up to half; under it the rest shrinks,
// by a fifth when the workload feels nothing and hardly at all near the
// budget; with no rest left and under half the budget, batches grow back.
func (g *governor) pace(impact float64) {
	e := impact / g.budget
	switch {
	case e > 1 && g.target > minBatch:
		g.target = max(minBatch, g.target/2)
	case e > 1:
		x := min(1, e-1)
		g.rest = min(maxRest, max(g.rest*(1+x/2), g.rest+x/4))
	case g.rest > 0:
		g.rest *= 0.8 + 0.2*e
		if g.rest < 0.05 {
			g.rest = 0
		}
	case e < 0.5:
		g.target = min(maxBatch, g.target*5/4)
	}
}

// observe ends a window when one has passed: it measures the impact and
// moves the rest. It recalibrates when due.
func (g *governor) observe(ctx context.Context) error {
	if time.Since(g.lastCalib) >= calibrateEvery {
		return g.calibrate(ctx, calibrateFor)
	}
	if time.Since(g.windowStart) < impactWindow {
		return nil
	}
	s := g.takeSamples()
	impact, why := 0.0, ""
	if m := felt(s); len(s) >= 10 && g.baseProbe > 0 {
		if f := float64(m)/float64(g.baseProbe) - 1; f > impact {
			impact, why = f, fmt.Sprintf("commit latency %s (idle %s; p90 %s)", m.Round(10*time.Microsecond),
				g.baseProbe.Round(10*time.Microsecond), p90(s).Round(10*time.Microsecond))
		}
	}
	if c, t, ok := g.stmtCounters(ctx); ok {
		if calls := c - g.stmtCalls; calls >= 10 && g.baseStmt > 0 {
			perCall := (t - g.stmtTime) / float64(calls)
			if f := perCall/g.baseStmt - 1; f > impact {
				impact, why = f, fmt.Sprintf("%s's statements %.3f ms per call (idle %.3f)", g.table, perCall, g.baseStmt)
			}
		}
		g.stmtCalls, g.stmtTime = c, t
	}
	// smoothed over windows: one noisy second does not swing the pace
	impact = 0.5*g.impact + 0.5*impact
	g.impact, g.why = impact, why
	g.pace(impact)
	g.log.Debug("backfill impact", "impact", fmt.Sprintf("%+.0f%%", 100*impact), "cause", why, "rest", fmt.Sprintf("%.2f", g.rest), "batch_target", g.target)
	g.windowStart = time.Now()
	return nil
}
