// Package backfill changes every row of a live table in short batches:
// keyset pagination on the primary key (never OFFSET), bounded by the
// largest key at the start (rows inserted during the run are left alone),
// each batch its own transaction under lock_timeout, retried on lock
// timeouts and deadlocks, with its checkpoint written in that same
// transaction — so a crashed or cancelled job resumes where it stopped and
// updates no row twice. The batch size adapts toward a target duration;
// the job pauses while standbys lag or other sessions wait on the table.
// Adaptive batches never lock more than 0.1% of the table's rows at once.
package backfill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// Spec is what to change.
type Spec struct {
	// Name identifies the job for --resume, --status and --cancel.
	Name  string
	Table string // [schema.]table with a primary key
	// Set is the SET clause: "col = expr[, col2 = expr2]".
	Set string
	// Where, optional, limits the rows changed (the keyset still walks
	// the whole key range).
	Where string
}

// Options shape a run.
type Options struct {
	// BatchSize fixes the rows per batch; 0 adapts it toward
	// TargetBatchDuration, starting at 1,000.
	BatchSize           int
	TargetBatchDuration time.Duration
	// MaxReplicaLag pauses the job while any standby's replay lag exceeds
	// it (bytes or time); zero does not look.
	MaxReplicaLag replication.Limit
	// PauseOnLockWaits pauses while other sessions wait for locks on the
	// table.
	PauseOnLockWaits bool
	// Rest is a pause after each batch, as a fraction of the batch's
	// duration (0.5: rest half as long as the batch took): room for
	// SPIRE's own writes on a busy server. 0 runs batches back to back.
	Rest float64
	// MaxImpact, when above zero, paces the job by what the live workload
	// feels: the commit latency of a minimal write transaction (measured
	// every 20 ms on a second session, averaged as a client that waits for
	// each transaction feels it) and the mean time of the table's other
	// statements per call (pg_stat_statements), each against its idle
	// baseline. While either is more than MaxImpact above it (0.3: 30%
	// slower per call, about a quarter less throughput), batches that had
	// grown get shorter (down to 25 ms) and then the rest after each batch
	// grows, in steps proportional to the excess; under the budget the rest
	// shrinks first, and under half of it batches grow back (up to 50 ms).
	// Lock waits on the table pause the job, and the baseline is measured
	// again every 30 s with the job idle for a second.
	MaxImpact float64
	// AllowVolatile accepts volatile functions in Set and Where.
	AllowVolatile bool
	// LockTimeout is each batch's lock_timeout (default 2s; negative
	// leaves the server's setting).
	LockTimeout time.Duration
	Retry       pg.RetryPolicy
	// Progress, when set, is called after each batch and while paused.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress is the state of a running job.
type Progress struct {
	Job       string        `json:"job"`
	Rows      int64         `json:"rows"`
	Batches   int64         `json:"batches"`
	BatchSize int           `json:"batch_size"`
	Rate      float64       `json:"rows_per_second"`
	Fraction  float64       `json:"fraction"` // of the key range, when the key is one integer column; else -1
	ETA       time.Duration `json:"eta_ns"`
	Paused    string        `json:"paused,omitempty"`
	// Impact is, under MaxImpact, how much slower the live workload was in
	// the last measured window (0.12: 12%); Rest the pause after each
	// batch, in batch durations.
	Impact float64 `json:"impact,omitempty"`
	// ImpactCause names the measurement that set Impact.
	ImpactCause string  `json:"impact_cause,omitempty"`
	Rest        float64 `json:"rest,omitempty"`
}

// Job is a backfill's checkpoint row.
type Job struct {
	Name       string     `json:"name"`
	Table      string     `json:"table"`
	Set        string     `json:"set"`
	Where      string     `json:"where,omitempty"`
	KeyColumns []string   `json:"key_columns"`
	MaxKey     []string   `json:"max_key"`
	LastKey    []string   `json:"last_key,omitempty"`
	RowsDone   int64      `json:"rows_done"`
	Batches    int64      `json:"batches"`
	BatchSize  int        `json:"batch_size"`
	State      string     `json:"state"`
	Error      string     `json:"error,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Job states.
const (
	Running   = "running"
	Cancelled = "cancelled"
	Failed    = "failed"
	Done      = "done"
)

var (
	// ErrNoJobsTable means spiredb's migrations have not run.
	ErrNoJobsTable = errors.New("spiredb.backfill_jobs does not exist: run spiredb migrate up first")
	// ErrCancelled is returned when the job was cancelled while running.
	ErrCancelled = errors.New("the job was cancelled")
)

// JobExistsError is returned for a new job with the name of an existing one.
type JobExistsError struct{ Job Job }

func (e *JobExistsError) Error() string {
	return fmt.Sprintf("a backfill job %q already exists (%s, %d rows done): --resume %s to continue it, or choose another --name", e.Job.Name, e.Job.State, e.Job.RowsDone, e.Job.Name)
}

// table is a resolved target.
type table struct {
	ident    string   // quoted, qualified
	relname  string   // bare, as statements name it
	regclass string   // for ::regclass
	keys     []string // primary key columns
	types    []string // their types
}

func resolve(ctx context.Context, conn *pgx.Conn, name string) (*table, error) {
	var oid *uint32
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.to_regclass($1)::oid", name).Scan(&oid); err != nil {
		return nil, err
	}
	if oid == nil {
		return nil, specErrorf("no table %q", name)
	}
	t := &table{}
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relname FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1`, *oid).Scan(&t.ident, &t.relname); err != nil {
		return nil, err
	}
	t.regclass = t.ident
	rows, err := conn.Query(ctx, pg.Marker+`SELECT pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_index x JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey::int2[])
		WHERE x.indrelid = $1 AND x.indisprimary ORDER BY pg_catalog.array_position(x.indkey::int2[], a.attnum)`, *oid)
	if err != nil {
		return nil, err
	}
	var k, typ string
	if _, err := pgx.ForEachRow(rows, []any{&k, &typ}, func() error {
		t.keys = append(t.keys, k)
		t.types = append(t.types, typ)
		return nil
	}); err != nil {
		return nil, err
	}
	if len(t.keys) == 0 {
		return nil, specErrorf("%s has no primary key: backfill pages by it", t.ident)
	}
	if err := checkTableCode(ctx, conn, *oid, t.ident); err != nil {
		return nil, err
	}
	return t, nil
}

// tableCodeSQL lists the functions an UPDATE of the table runs that are
// not SECURITY DEFINER and belong to a role that is neither a superuser
// nor holds the session role's privileges: they run as the session role.
// An UPDATE runs its triggers', check constraints', index expressions',
// policies', stored generated columns' and rules' functions, the checks of
// its columns' domains, the functions behind the operators any of those
// use, and the same of every table it reaches: its partitions and
// inheritance children, and the tables an ON UPDATE CASCADE, SET NULL or
// SET DEFAULT foreign key updates in turn.
const tableCodeSQL = `WITH RECURSIVE tabs(oid) AS (
	SELECT $1::pg_catalog.oid
	UNION
	SELECT x.oid FROM tabs CROSS JOIN LATERAL (
		SELECT c.conrelid FROM pg_catalog.pg_constraint c
		WHERE c.confrelid = tabs.oid AND c.contype = 'f' AND c.confupdtype IN ('c', 'n', 'd')
		UNION ALL
		SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = tabs.oid) x(oid)
), doms(oid) AS (
	SELECT t.oid FROM pg_catalog.pg_attribute a JOIN tabs ON a.attrelid = tabs.oid
	JOIN pg_catalog.pg_type c ON c.oid = a.atttypid
	JOIN pg_catalog.pg_type t ON t.oid IN (c.oid, c.typelem) AND t.typtype = 'd'
	WHERE a.attnum > 0 AND NOT a.attisdropped
	UNION
	SELECT b.oid FROM doms JOIN pg_catalog.pg_type d ON d.oid = doms.oid
	JOIN pg_catalog.pg_type b ON b.oid = d.typbasetype AND b.typtype = 'd'
), deps(classid, objid) AS (
	SELECT d.classid, d.objid FROM pg_catalog.pg_depend d JOIN tabs ON d.refobjid = tabs.oid
	WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
		AND d.classid IN ('pg_catalog.pg_trigger'::pg_catalog.regclass, 'pg_catalog.pg_constraint'::pg_catalog.regclass,
			'pg_catalog.pg_class'::pg_catalog.regclass, 'pg_catalog.pg_policy'::pg_catalog.regclass,
			'pg_catalog.pg_attrdef'::pg_catalog.regclass, 'pg_catalog.pg_rewrite'::pg_catalog.regclass)
	UNION
	SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_constraint c JOIN doms ON c.contypid = doms.oid
), procs(oid) AS (
	SELECT f.refobjid FROM deps JOIN pg_catalog.pg_depend f ON f.classid = deps.classid AND f.objid = deps.objid
	WHERE f.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
	UNION
	SELECT o.oprcode::pg_catalog.oid FROM deps JOIN pg_catalog.pg_depend f ON f.classid = deps.classid AND f.objid = deps.objid
	JOIN pg_catalog.pg_operator o ON o.oid = f.refobjid
	WHERE f.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
)
SELECT DISTINCT pg_catalog.format('%I.%I(%s) (owner %s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes), o.rolname)
FROM procs JOIN pg_catalog.pg_proc p ON p.oid = procs.oid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
WHERE NOT p.prosecdef AND NOT o.rolsuper
	AND NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user), 'MEMBER')
ORDER BY 1`

// checkTableCode refuses a backfill whose UPDATEs would run another, less
// privileged role's code (a trigger the table's owner defined, say) with
// this session's privileges.
func checkTableCode(ctx context.Context, conn *pgx.Conn, oid uint32, ident string) error {
	rows, err := conn.Query(ctx, pg.Marker+tableCodeSQL, oid)
	if err != nil {
		return fmt.Errorf("reading what an UPDATE of %s runs: %w", ident, err)
	}
	code, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("reading what an UPDATE of %s runs: %w", ident, err)
	}
	if len(code) > 0 {
		return specErrorf("an UPDATE of %s runs %s (triggers, constraints, domain checks, generated columns, index expressions or policies, its own or those of tables it cascades to) with this role's privileges, which their owner lacks: run the backfill as that role (the table's owner), or make them SECURITY DEFINER",
			ident, strings.Join(code, ", "))
	}
	return nil
}

// validate parses --set and --where and puts their rebuilt forms in spec.
func validate(spec *Spec) (*clauses, error) {
	c, err := parseClauses(spec.Set, spec.Where)
	if err != nil {
		return nil, err
	}
	spec.Set, spec.Where = c.Set, c.Where
	return c, nil
}

func (t *table) keyList() string { return "(" + strings.Join(t.keys, ", ") + ")" }

// params renders ($n::type, ...) for a key starting at parameter n.
func (t *table) params(n int) string {
	parts := make([]string, len(t.keys))
	for i := range t.keys {
		parts[i] = fmt.Sprintf("$%d::%s", n+i, t.types[i])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// keyText selects the key as text. The aliases matter: a bare "id::text"
// would be named id, and ORDER BY id would then sort the text.
func (t *table) keyText() string {
	parts := make([]string, len(t.keys))
	for i, k := range t.keys {
		parts[i] = fmt.Sprintf("%s::text AS spiredb_key_%d", k, i)
	}
	return strings.Join(parts, ", ")
}

func (t *table) orderBy(desc bool) string {
	parts := make([]string, len(t.keys))
	for i, k := range t.keys {
		parts[i] = k
		if desc {
			parts[i] += " DESC"
		}
	}
	return strings.Join(parts, ", ")
}

// Plan is what a dry run reports.
type Plan struct {
	Table      string   `json:"table"`
	KeyColumns []string `json:"key_columns"`
	MaxKey     []string `json:"max_key"`
	Rows       int64    `json:"rows"` // rows in the key range matching --where
	SQL        []string `json:"sql"`
}

// DryRun resolves the table and reports the statements a batch runs and
// how many rows match, changing nothing.
func DryRun(ctx context.Context, conn *pgx.Conn, spec Spec, opts Options) (*Plan, error) {
	c, err := validate(&spec)
	if err != nil {
		return nil, err
	}
	if err := c.checkVolatile(ctx, conn, opts.AllowVolatile); err != nil {
		return nil, err
	}
	t, err := resolve(ctx, conn, spec.Table)
	if err != nil {
		return nil, err
	}
	maxKey, err := t.maxKey(ctx, conn)
	if err != nil {
		return nil, err
	}
	p := &Plan{Table: t.ident, KeyColumns: t.keys, MaxKey: maxKey}
	sel, upd := t.statements(spec, false)
	p.SQL = []string{sel, upd, "UPDATE spiredb.backfill_jobs SET last_key = <batch end>, rows_done = rows_done + <rows> ... -- same transaction"}
	if maxKey == nil {
		return p, nil
	}
	where := ""
	if spec.Where != "" {
		where = " AND (" + spec.Where + ")"
	}
	args := make([]any, len(maxKey))
	for i, v := range maxKey {
		args[i] = v
	}
	err = conn.QueryRow(ctx, pg.Marker+"SELECT count(*) FROM "+t.ident+" WHERE "+t.keyList()+" <= "+t.params(1)+where, args...).Scan(&p.Rows)
	return p, err
}

func (t *table) maxKey(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	row := make([]string, len(t.keys))
	dest := make([]any, len(t.keys))
	for i := range row {
		dest[i] = &row[i]
	}
	err := conn.QueryRow(ctx, pg.Marker+"SELECT "+t.keyText()+" FROM "+t.ident+" ORDER BY "+t.orderBy(true)+" LIMIT 1").Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return row, err
}

// statements are a batch's range query (its last key and row count) and
// update; first has no lower bound.
func (t *table) statements(spec Spec, first bool) (sel, upd string) {
	k := len(t.keys)
	lower := t.keyList() + " > " + t.params(1) + " AND "
	maxAt, lim := 1+k, 1+2*k
	if first {
		lower = ""
		maxAt, lim = 1, 1+k
	}
	// the batch's last key and how many rows it has: the keys themselves
	// need not cross the wire
	sel = fmt.Sprintf("SELECT %s, count(*) OVER () AS spiredb_rows FROM (SELECT %s FROM %s WHERE %s%s <= %s ORDER BY %s LIMIT $%d) spiredb_batch ORDER BY %s LIMIT 1",
		t.keyText(), strings.Join(t.keys, ", "), t.ident, lower, t.keyList(), t.params(maxAt), t.orderBy(false), lim, t.orderBy(true))
	where := ""
	if spec.Where != "" {
		where = " AND (" + spec.Where + ")"
	}
	endAt := 1 + k
	if first {
		endAt = 1
	}
	upd = fmt.Sprintf("UPDATE %s SET %s WHERE %s%s <= %s%s", t.ident, spec.Set, lower, t.keyList(), t.params(endAt), where)
	return sel, upd
}

// lockName names the advisory lock a running job holds.
func lockName(job string) string { return "backfill." + job }

// jobsTable checks that the jobs table exists, in a schema no less
// privileged role owns (its triggers would run with this session's
// privileges at every checkpoint).
func jobsTable(ctx context.Context, conn *pgx.Conn) error {
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		return err
	}
	var ok bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.to_regclass('spiredb.backfill_jobs') IS NOT NULL").Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return ErrNoJobsTable
	}
	return nil
}

// Start creates a job and runs it to the end (or until ctx ends, it is
// cancelled, or it fails).
func Start(ctx context.Context, conn *pgx.Conn, spec Spec, opts Options) (*Job, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	c, err := validate(&spec)
	if err != nil {
		return nil, err
	}
	if err := c.checkVolatile(ctx, conn, opts.AllowVolatile); err != nil {
		return nil, err
	}
	if spec.Name == "" {
		return nil, specErrorf("the job needs a name (--name)")
	}
	if err := jobsTable(ctx, conn); err != nil {
		return nil, err
	}
	t, err := resolve(ctx, conn, spec.Table)
	if err != nil {
		return nil, err
	}
	if existing, err := Get(ctx, conn, spec.Name); err == nil {
		return nil, &JobExistsError{Job: *existing}
	}
	maxKey, err := t.maxKey(ctx, conn)
	if err != nil {
		return nil, err
	}
	state := Running
	if maxKey == nil {
		state = Done // an empty table
	}
	_, err = conn.Exec(ctx, pg.Marker+`INSERT INTO spiredb.backfill_jobs (name, table_name, set_clause, where_clause, key_columns, max_key, batch_size, state, finished_at)
		VALUES ($1, $2, $3, $4, $5, coalesce($6, '{}'::text[]), $7, $8, CASE WHEN $8 = 'done' THEN now() END)`,
		spec.Name, t.ident, spec.Set, spec.Where, t.keys, maxKey, max(opts.BatchSize, 1000), state)
	if pg.SQLState(err) == "23505" {
		existing, _ := Get(ctx, conn, spec.Name)
		if existing != nil {
			return nil, &JobExistsError{Job: *existing}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("creating the job: %w", err)
	}
	return Resume(ctx, conn, spec.Name, opts)
}

// Resume runs a job from its last checkpoint.
func Resume(ctx context.Context, conn *pgx.Conn, name string, opts Options) (*Job, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := jobsTable(ctx, conn); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = pg.DefaultLockTimeout
	}
	if opts.TargetBatchDuration == 0 {
		opts.TargetBatchDuration = 200 * time.Millisecond
	}
	lock, got, err := pg.TryAdvisoryLock(ctx, conn, lockName(name))
	if err != nil {
		return nil, err
	}
	if !got {
		return nil, fmt.Errorf("backfill job %q is already running in another session", name)
	}
	defer lock.Unlock(ctx)

	job, err := Get(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	switch job.State {
	case Done:
		return job, nil
	case Cancelled, Failed:
		if _, err := conn.Exec(ctx, pg.Marker+"UPDATE spiredb.backfill_jobs SET state = 'running', error = NULL, updated_at = now() WHERE name = $1", name); err != nil {
			return nil, err
		}
	}
	t, err := resolve(ctx, conn, job.Table)
	if err != nil {
		return job, err
	}
	if len(t.keys) != len(job.KeyColumns) {
		return job, fmt.Errorf("the primary key of %s changed since the job started", job.Table)
	}
	// the stored clauses are checked again: the jobs table is data, and
	// volatility is decided now, with this run's --allow-volatile
	spec := Spec{Name: name, Table: job.Table, Set: job.Set, Where: job.Where}
	c, err := validate(&spec)
	if err != nil {
		return job, err
	}
	if err := c.checkVolatile(ctx, conn, opts.AllowVolatile); err != nil {
		return job, err
	}
	r := &run{conn: conn, t: t, spec: spec, opts: opts, log: log, job: job, size: job.BatchSize, start: time.Now(), maxSize: 100_000}
	if opts.BatchSize > 0 {
		r.size = opts.BatchSize
	} else {
		// a batch holds its rows locked until it commits: keep it under
		// 0.1% of the table, so fewer than 1 in 1,000 concurrent writes can
		// meet one of its locks and writers' p99 stays where it was
		var rows float64
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT greatest(reltuples, 0) FROM pg_catalog.pg_class WHERE oid = $1::regclass", t.regclass).Scan(&rows); err == nil {
			r.maxSize = max(100, min(100_000, int(rows/1000)))
		}
		r.size = min(r.size, r.maxSize)
	}
	r.rangeInfo(ctx)
	if opts.MaxImpact > 0 {
		r.opts.PauseOnLockWaits = true
		if r.gov, err = startGovernor(ctx, conn, t, opts.MaxImpact, log); err != nil {
			return job, err
		}
		defer r.gov.close()
		if err := r.gov.calibrate(ctx, firstCalibration); err != nil {
			return job, err
		}
	}
	err = r.loop(ctx)
	final, gerr := Get(context.WithoutCancel(ctx), conn, name)
	if gerr == nil {
		job = final
	}
	return job, err
}

type run struct {
	conn     *pgx.Conn
	t        *table
	spec     Spec
	opts     Options
	log      *slog.Logger
	job      *Job
	size     int
	maxSize  int
	start    time.Time
	rowsRun  int64
	minKey   float64
	maxKey   float64
	fraction bool
	// startFrac is the fraction done when this run began (a resume)
	startFrac float64
	// gov paces the job under MaxImpact
	gov *governor
}

// rangeInfo prepares the progress fraction for a single integer key.
func (r *run) rangeInfo(ctx context.Context) {
	if len(r.t.keys) != 1 || !strings.Contains(r.t.types[0], "int") || len(r.job.MaxKey) != 1 {
		return
	}
	var lo *int64
	if err := r.conn.QueryRow(ctx, pg.Marker+"SELECT min("+r.t.keys[0]+")::int8 FROM "+r.t.ident).Scan(&lo); err != nil || lo == nil {
		return
	}
	hi, err := strconv.ParseFloat(r.job.MaxKey[0], 64)
	if err != nil || hi <= float64(*lo) {
		return
	}
	r.minKey, r.maxKey, r.fraction = float64(*lo), hi, true
	if len(r.job.LastKey) == 1 {
		if last, err := strconv.ParseFloat(r.job.LastKey[0], 64); err == nil {
			r.startFrac = (last - r.minKey) / (r.maxKey - r.minKey)
		}
	}
}

func (r *run) progress(paused string) {
	if r.opts.Progress == nil {
		return
	}
	p := Progress{Job: r.job.Name, Rows: r.job.RowsDone, Batches: r.job.Batches, BatchSize: r.size, Paused: paused, Fraction: -1}
	if r.gov != nil {
		p.Impact, p.ImpactCause, p.Rest = r.gov.impact, r.gov.why, r.gov.rest
	}
	if el := time.Since(r.start).Seconds(); el > 0 {
		p.Rate = float64(r.rowsRun) / el
	}
	if r.fraction && len(r.job.LastKey) == 1 {
		if last, err := strconv.ParseFloat(r.job.LastKey[0], 64); err == nil {
			p.Fraction = min(1, (last-r.minKey)/(r.maxKey-r.minKey))
			if covered := p.Fraction - r.startFrac; covered > 0 {
				// the rest of the range at this run's pace
				p.ETA = time.Duration(float64(time.Since(r.start)) * (1 - p.Fraction) / covered)
			}
		}
	}
	r.opts.Progress(p)
}

func (r *run) loop(ctx context.Context) error {
	for {
		began := time.Now()
		var more bool
		err := pg.Retry(ctx, r.opts.Retry, func(ctx context.Context) error {
			var err error
			more, err = r.batch(ctx)
			return err
		})
		if errors.Is(err, ErrCancelled) {
			return err
		}
		var busy *noRoomError
		if errors.As(err, &busy) {
			if err := r.waitForRoom(ctx, busy.reason); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			_, _ = r.conn.Exec(context.WithoutCancel(ctx), pg.Marker+"UPDATE spiredb.backfill_jobs SET state = 'failed', error = $2, updated_at = now() WHERE name = $1 AND state = 'running'",
				r.job.Name, err.Error())
			return err
		}
		took := time.Since(began)
		rest := r.opts.Rest
		if r.gov != nil && more {
			if err := r.gov.observe(ctx); err != nil {
				return err
			}
			rest = max(rest, r.gov.rest)
		}
		r.progress("")
		if !more {
			return nil
		}
		if rest > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(rest * float64(took))):
			}
		}
		if r.opts.BatchSize == 0 {
			target := r.opts.TargetBatchDuration
			if r.gov != nil {
				target = r.gov.target
			}
			r.size = min(r.maxSize, adapt(r.size, took, target))
		}
	}
}

// adapt moves the batch size toward the target duration, at most doubling
// or halving per batch, within [100, 100000].
func adapt(size int, took, target time.Duration) int {
	if took <= 0 {
		return min(size*2, 100_000)
	}
	f := float64(target) / float64(took)
	f = max(0.5, min(2, f))
	return max(100, min(100_000, int(float64(size)*f)))
}

// noRoomError is a batch that did not run: standbys lag or sessions wait
// for locks on the table. The job pauses and tries again.
type noRoomError struct{ reason string }

func (e *noRoomError) Error() string { return "no room for a batch: " + e.reason }

// queueRoomChecks adds to a batch's first round trip what the job pauses
// for — a standby's replay lag, sessions waiting for locks on the table —
// rather than a round trip of its own before every batch; room reports,
// once the round trip is read, why there is none ("" when there is).
func (r *run) queueRoomChecks(b *pgx.Batch) (room func() string) {
	var bytes int64
	var lag time.Duration
	var waiting int
	if !r.opts.MaxReplicaLag.IsZero() {
		b.Queue(pg.Marker + `SELECT coalesce(max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)), 0)::int8,
			coalesce(max(replay_lag), '0'::interval) FROM pg_catalog.pg_stat_replication`).
			QueryRow(func(row pgx.Row) error { return row.Scan(&bytes, &lag) })
	}
	if r.opts.PauseOnLockWaits {
		b.Queue(pg.Marker+`SELECT count(*) FROM pg_catalog.pg_locks WHERE relation = $1::regclass AND NOT granted`, r.t.regclass).
			QueryRow(func(row pgx.Row) error { return row.Scan(&waiting) })
	}
	return func() string {
		if !r.opts.MaxReplicaLag.IsZero() {
			if over, why := r.opts.MaxReplicaLag.Exceeded(bytes, lag); over {
				return "replica lag: " + why
			}
		}
		if waiting > 0 {
			return fmt.Sprintf("%d sessions wait for locks on %s", waiting, r.t.ident)
		}
		return ""
	}
}

// waitForRoom pauses the job, which found no room for a batch (why), until
// there is: every 250 ms it looks again at what paused it and at the job's
// state, not with a whole batch (its range query would read up to a
// batch's keys each time), and a cancel ends the pause. The log says when
// the pause begins, every 30 s while it lasts and when it ends; progress
// hears every look.
func (r *run) waitForRoom(ctx context.Context, why string) error {
	began := time.Now()
	var logged time.Time
	for why != "" {
		if time.Since(logged) >= 30*time.Second {
			r.log.Info("backfill paused", "job", r.job.Name, "reason", why)
			logged = time.Now()
		}
		r.progress(why)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		var state string
		look := &pgx.Batch{}
		look.Queue(pg.Marker+"SELECT state FROM spiredb.backfill_jobs WHERE name = $1", r.job.Name).
			QueryRow(func(row pgx.Row) error { return row.Scan(&state) })
		room := r.queueRoomChecks(look)
		if err := r.conn.SendBatch(ctx, look).Close(); err != nil {
			return err
		}
		if state == Cancelled {
			return ErrCancelled
		}
		why = room()
	}
	r.log.Info("backfill resumed", "job", r.job.Name, "paused", time.Since(began).Round(time.Millisecond))
	return nil
}

// batch runs one batch in its own transaction: the job row locked (so a
// cancel waits for the batch), the next key range read, its rows updated,
// the checkpoint moved. It reports whether more batches remain, and a
// noRoomError, having changed nothing, when standbys lag or sessions wait
// on the table. The statements go in two pipelined round trips, not one
// each: on a loaded server a round trip took ~0.25 ms, and eight of them
// (nine with the checks for room) were most of a short batch's fixed cost.
func (r *run) batch(ctx context.Context) (bool, error) {
	sel, upd := r.t.statements(r.spec, len(r.job.LastKey) == 0)
	last := anySlice(r.job.LastKey)
	args := slices.Concat(last, anySlice(r.job.MaxKey), []any{r.size})

	// A batch and its checkpoint commit together, so a batch lost in a
	// crash is lost with its checkpoint and the resume does it again: its
	// commit need not wait for the WAL flush. The last one does (below), and
	// with it every batch before it.
	set := pg.Marker + "SELECT pg_catalog.set_config('synchronous_commit', 'off', true)"
	if r.opts.LockTimeout > 0 { // negative: the server's setting
		set += fmt.Sprintf(", pg_catalog.set_config('lock_timeout', '%d', true)", r.opts.LockTimeout.Milliseconds())
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = r.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()

	var state string
	var stored []string
	end := make([]string, len(r.t.keys))
	dest := make([]any, 0, len(end)+1)
	for i := range end {
		dest = append(dest, &end[i])
	}
	var n int
	open := &pgx.Batch{}
	open.Queue("BEGIN")
	open.Queue(set)
	open.Queue(pg.Marker+"SELECT state, coalesce(last_key, '{}') FROM spiredb.backfill_jobs WHERE name = $1 FOR UPDATE", r.job.Name).
		QueryRow(func(row pgx.Row) error { return row.Scan(&state, &stored) })
	room := r.queueRoomChecks(open)
	open.Queue(pg.Marker+sel, args...).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(append(dest, &n)...); !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		return nil
	})
	if err := r.conn.SendBatch(ctx, open).Close(); err != nil {
		return false, err
	}
	if state == Cancelled {
		return false, ErrCancelled
	}
	if why := room(); why != "" {
		return false, &noRoomError{why} // the deferred ROLLBACK ends the transaction
	}
	if !slices.Equal(stored, r.job.LastKey) {
		// one job runs at a time (an advisory lock): this is not a race
		return false, fmt.Errorf("backfill job %q: its checkpoint is at %v, not %v where this run left it", r.job.Name, stored, r.job.LastKey)
	}

	var changed int64
	final := n < r.size // a short batch is the last: the job is done in the same transaction
	closing := &pgx.Batch{}
	if n == 0 {
		closing.Queue(pg.Marker+"UPDATE spiredb.backfill_jobs SET state = 'done', finished_at = now(), updated_at = now() WHERE name = $1", r.job.Name)
	} else {
		// the table's update and the checkpoint, in one statement
		uargs := slices.Concat(last, anySlice(end))
		k := len(uargs)
		closing.Queue(fmt.Sprintf(`%sWITH batch AS (%s RETURNING 1)
UPDATE spiredb.backfill_jobs SET last_key = $%d, rows_done = rows_done + (SELECT count(*) FROM batch), batches = batches + 1,
	batch_size = $%d, updated_at = now(),
	state = CASE WHEN $%d THEN 'done' ELSE state END, finished_at = CASE WHEN $%d THEN now() END
	WHERE name = $%d RETURNING (SELECT count(*) FROM batch)`, pg.Marker, upd, k+1, k+2, k+3, k+3, k+4),
			append(uargs, end, r.size, final, r.job.Name)...).
			QueryRow(func(row pgx.Row) error { return row.Scan(&changed) })
	}
	if final {
		// "done" is durable, and so is every batch before it
		closing.Queue("SELECT pg_catalog.set_config('synchronous_commit', 'on', true)")
	}
	closing.Queue("COMMIT")
	if err := r.conn.SendBatch(ctx, closing).Close(); err != nil {
		return false, err
	}
	committed = true
	if final {
		r.job.State = Done
	}
	if n == 0 {
		return false, nil
	}
	r.job.LastKey = slices.Clone(end)
	r.job.RowsDone += changed
	r.job.Batches++
	r.rowsRun += changed
	return !final, nil
}

func anySlice(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// Get reads one job.
func Get(ctx context.Context, conn *pgx.Conn, name string) (*Job, error) {
	jobs, err := List(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("no backfill job %q", name)
	}
	return &jobs[0], nil
}

// List reads the jobs (one, when name is set).
func List(ctx context.Context, conn *pgx.Conn, name string) ([]Job, error) {
	if err := jobsTable(ctx, conn); err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, pg.Marker+`SELECT name, table_name, set_clause, where_clause, key_columns, max_key, coalesce(last_key, '{}'),
		rows_done, batches, batch_size, state, coalesce(error, ''), started_at, updated_at, finished_at
		FROM spiredb.backfill_jobs WHERE $1 = '' OR name = $1 ORDER BY started_at`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	jobs := []Job{}
	for rows.Next() {
		var j Job
		if err := rows.Scan(&j.Name, &j.Table, &j.Set, &j.Where, &j.KeyColumns, &j.MaxKey, &j.LastKey, &j.RowsDone, &j.Batches,
			&j.BatchSize, &j.State, &j.Error, &j.StartedAt, &j.UpdatedAt, &j.FinishedAt); err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	return jobs, rows.Err()
}

// Cancel marks a job cancelled: a running job stops after its current
// batch (which commits); --resume continues it later.
func Cancel(ctx context.Context, conn *pgx.Conn, name string) (*Job, error) {
	if err := jobsTable(ctx, conn); err != nil {
		return nil, err
	}
	tag, err := conn.Exec(ctx, pg.Marker+"UPDATE spiredb.backfill_jobs SET state = 'cancelled', updated_at = now() WHERE name = $1 AND state IN ('running', 'failed')", name)
	if err != nil {
		return nil, err
	}
	job, err := Get(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	if tag.RowsAffected() == 0 && job.State != Cancelled {
		return job, fmt.Errorf("backfill job %q is %s: nothing to cancel", name, job.State)
	}
	return job, nil
}
