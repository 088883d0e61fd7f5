package main

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/push"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/internal/dsn"
)

// pushRun pushes a one-shot command's outcome to a Pushgateway with the
// same metric names `spiredb schedule` serves, job="backup-run" and so on:
// a CronJob's runs show on the same dashboards and alerts.
// It adds (POST) rather than replaces, so a failed run keeps the last
// success's timestamp.
func pushRun(ctx context.Context, gateway string, cmd *cobra.Command, code int, took time.Duration) error {
	u, err := url.Parse(gateway)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("invalid --push-gateway URL: want http(s)://host:port (credentials percent-encoded)")
	}
	var user, password string
	if u.User != nil {
		user = u.User.Username()
		password, _ = u.User.Password()
		dsn.Remember(password)
		u.User = nil
	}
	// a gateway that never answers must not hang a CronJob: bounded, and
	// cancelled with the command (SIGTERM)
	timeout := pushTimeout
	if ctx.Err() != nil {
		// the command was interrupted: report it, briefly
		ctx, timeout = context.WithoutCancel(ctx), min(timeout, 2*time.Second)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := strings.ReplaceAll(strings.TrimPrefix(cmd.CommandPath(), "spiredb "), " ", "-")
	gauge := func(metric, help string, v float64) prometheus.Collector {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: metric, Help: help})
		g.Set(v)
		return g
	}
	now := float64(time.Now().Unix())
	// the Pushgateway's job label is the command, as schedule's job label
	// is the job's name
	p := push.New(u.String(), name).
		Client(&http.Client{Timeout: pushTimeout}).
		Collector(gauge("spiredb_job_last_run_timestamp_seconds", "Unix time the job's last run ended.", now)).
		Collector(gauge("spiredb_job_last_duration_seconds", "Duration of the job's last run.", took.Seconds())).
		Collector(gauge("spiredb_job_last_exit_code", "Exit code of the job's last run (0 ok, 1 failure, 2 usage, 3 unreachable, 4 warnings).", float64(code)))
	if code == exitOK || code == exitWarning {
		p = p.Collector(gauge("spiredb_job_last_success_timestamp_seconds", "Unix time of the job's last successful run.", now))
	}
	if user != "" || password != "" {
		p = p.BasicAuth(user, password)
	}
	return p.AddContext(ctx)
}

// pushTimeout bounds one push to the Pushgateway.
var pushTimeout = 10 * time.Second
