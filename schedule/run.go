package schedule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/robfig/cron/v3"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
)

// Exit codes a job can end with that count as success: 0, and 4
// (warnings only: doctor, indexes check).
func succeeded(code int) bool { return code == 0 || code == 4 }

// Metrics are the scheduler's Prometheus collectors.
type Metrics struct {
	Registry    *prometheus.Registry
	lastSuccess *prometheus.GaugeVec
	lastRun     *prometheus.GaugeVec
	duration    *prometheus.GaugeVec
	exitCode    *prometheus.GaugeVec
	running     *prometheus.GaugeVec
	runs        *prometheus.CounterVec
	failures    *prometheus.CounterVec
	skips       *prometheus.CounterVec
}

// NewMetrics registers the job metrics on a fresh registry (with the Go
// and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_job_last_success_timestamp_seconds",
			Help: "Unix time of the job's last successful run."}, []string{"job"}),
		lastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_job_last_run_timestamp_seconds",
			Help: "Unix time the job's last run ended."}, []string{"job"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_job_last_duration_seconds",
			Help: "Duration of the job's last run."}, []string{"job"}),
		exitCode: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_job_last_exit_code",
			Help: "Exit code of the job's last run (0 ok, 1 failure, 2 usage, 3 unreachable, 4 warnings)."}, []string{"job"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_job_running",
			Help: "1 while the job runs."}, []string{"job"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spiredb_job_runs_total",
			Help: "Runs of the job, whatever their outcome."}, []string{"job"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spiredb_job_failures_total",
			Help: "Runs of the job that failed."}, []string{"job"}),
		skips: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spiredb_job_skips_total",
			Help: "Scheduled runs skipped because the previous run of the job was still going."}, []string{"job"}),
	}
	m.Registry.MustRegister(m.lastSuccess, m.lastRun, m.duration, m.exitCode, m.running, m.runs, m.failures, m.skips,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Options are what a scheduler needs besides its file.
type Options struct {
	// Tasks run the jobs' commands: every command the file uses needs one.
	Tasks Registry
	// Conn is the database when the file has no dsn (the CLI passes
	// SPIREDB_DSN or libpq's PG* variables through it).
	Conn pg.Options
	// Logger gets the scheduler's lines; nil discards them.
	Logger *slog.Logger
	// Store opens the file's store for the state collection (S3 endpoint,
	// region, path-style addressing: the jobs' own come with their
	// arguments); its Logger defaults to Logger.
	Store backup.StoreOptions
}

// Validate reports a job whose command no task runs.
func (o Options) Validate(cfg *Config) error {
	if cfg == nil {
		return errors.New("schedule: no config")
	}
	return o.Tasks.check(cfg.Jobs)
}

// Scheduler runs a config's jobs.
type Scheduler struct {
	cfg     *Config
	tasks   Registry
	conn    pg.Options
	log     *slog.Logger
	metrics *Metrics

	state     *stateMetrics
	store     backup.Store // the config's store, for collection; opened on first use
	storeOpts backup.StoreOptions

	mu      sync.Mutex
	busy    map[string]bool
	cancels map[string]context.CancelFunc
	wg      sync.WaitGroup
	jobsCtx context.Context
}

// New prepares a scheduler; Run starts it.
func New(cfg *Config, o Options) (*Scheduler, error) {
	if err := o.Validate(cfg); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn := o.Conn
	if cfg.DSN != "" {
		conn.DSN, conn.Config, conn.Pool = cfg.DSN, nil, nil
	}
	storeOpts := o.Store
	if storeOpts.Logger == nil {
		storeOpts.Logger = log
	}
	s := &Scheduler{cfg: cfg, tasks: o.Tasks, conn: conn, log: log, storeOpts: storeOpts, metrics: NewMetrics(), busy: map[string]bool{}, cancels: map[string]context.CancelFunc{}}
	s.state = newStateMetrics(s.metrics.Registry)
	for _, j := range cfg.Jobs {
		s.metrics.runs.WithLabelValues(j.Name)
		s.metrics.failures.WithLabelValues(j.Name)
		s.metrics.skips.WithLabelValues(j.Name)
		s.metrics.running.WithLabelValues(j.Name)
	}
	return s, nil
}

// Metrics returns the collectors (for tests and pushing).
func (s *Scheduler) Metrics() *Metrics { return s.metrics }

// Handler serves /metrics and /healthz.
func (s *Scheduler) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// Run serves metrics on the config's address and runs the jobs until ctx
// ends; then it takes no new runs, lets running ones finish within the
// grace period, and cancels what is left. ready, when set, is told the
// address the metrics listen on.
func (s *Scheduler) Run(ctx context.Context, ready func(addr string)) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	// a scraper that stalls or keeps connections open costs nothing
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if ready != nil {
		ready(ln.Addr().String())
	}
	s.log.Info("scheduler started", "jobs", len(s.cfg.Jobs), "metrics", "http://"+ln.Addr().String()+"/metrics")

	// job runs get their own context: SIGTERM stops new runs, not the
	// running ones, until the grace period is over
	jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	s.jobsCtx = jobsCtx
	c := cron.New()
	for _, j := range s.cfg.Jobs {
		c.Schedule(j.schedule, cron.FuncJob(func() { s.fire(j) }))
	}
	c.Start()
	if s.cfg.collect > 0 {
		go func() {
			for {
				cctx, cancel := context.WithTimeout(jobsCtx, max(s.cfg.collect, time.Minute))
				s.collect(cctx)
				cancel()
				select {
				case <-ctx.Done():
					return
				case <-time.After(s.cfg.collect):
				}
			}
		}()
	}
	<-ctx.Done()
	stopped := c.Stop() // no new runs
	s.log.Info("stopping: no new runs; waiting for running jobs", "grace", s.cfg.grace)
	done := make(chan struct{})
	go func() { <-stopped.Done(); s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.grace):
		s.log.Warn("grace period over: cancelling running jobs")
		cancelJobs()
		<-done
	}
	s.log.Info("scheduler stopped")
	return nil
}

// fire starts a run unless the previous one still runs.
func (s *Scheduler) fire(j Job) {
	s.mu.Lock()
	if s.busy[j.Name] {
		s.mu.Unlock()
		s.metrics.skips.WithLabelValues(j.Name).Inc()
		s.log.Warn("previous run still going: skipped", "job", j.Name)
		return
	}
	s.busy[j.Name] = true
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.busy[j.Name] = false
		s.mu.Unlock()
		s.wg.Done()
	}()
	ctx := s.jobsCtx
	if j.jitter > 0 {
		select {
		case <-time.After(rand.N(j.jitter)):
		case <-ctx.Done():
			return
		}
	}
	if j.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, j.timeout)
		defer cancel()
	}
	s.execute(ctx, j)
}

func (s *Scheduler) execute(ctx context.Context, j Job) {
	args := s.cfg.argv(j)
	s.metrics.running.WithLabelValues(j.Name).Set(1)
	defer s.metrics.running.WithLabelValues(j.Name).Set(0)
	start := time.Now()
	s.log.Info("job started", "job", j.Name, "command", j.Command)
	var stdout, stderr bytes.Buffer
	err := s.runTask(ctx, Run{Job: j, Args: args, Conn: s.conn, Store: s.cfg.Store, Stdout: &stdout, Stderr: &stderr,
		Logger: s.log.With("job", j.Name)})
	code := exitCode(err)
	took := time.Since(start)
	s.metrics.runs.WithLabelValues(j.Name).Inc()
	s.metrics.duration.WithLabelValues(j.Name).Set(took.Seconds())
	s.metrics.lastRun.WithLabelValues(j.Name).SetToCurrentTime()
	s.metrics.exitCode.WithLabelValues(j.Name).Set(float64(code))
	if succeeded(code) {
		s.metrics.lastSuccess.WithLabelValues(j.Name).SetToCurrentTime()
		s.log.Info("job succeeded", "job", j.Name, "exit", code, "duration", took.Round(time.Millisecond))
		return
	}
	s.metrics.failures.WithLabelValues(j.Name).Inc()
	msg := lastLine(stderr.String())
	if msg == "" && err != nil {
		msg = err.Error()
	}
	s.log.Error("job failed", "job", j.Name, "exit", code, "duration", took.Round(time.Millisecond),
		"error", msg, "cancelled", errors.Is(ctx.Err(), context.Canceled))
}

// runTask runs a job's task; a panic in it is a failed run, not a dead
// scheduler.
func (s *Scheduler) runTask(ctx context.Context, r Run) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("task %q panicked: %v", r.Job.Command, p)
		}
	}()
	return s.tasks[r.Job.Command](ctx, r)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
