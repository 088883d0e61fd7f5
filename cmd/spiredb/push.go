package main

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/push"
	"github.com/spf13/cobra"
)

// pushRun pushes a one-shot command's outcome to a Pushgateway with the
// same metric names `spiredb schedule` serves, job="backup-run" and so on:
// a CronJob's runs show on the same dashboards and alerts.
// It adds (POST) rather than replaces, so a failed run keeps the last
// success's timestamp.
func pushRun(url string, cmd *cobra.Command, code int, took time.Duration) error {
	name := strings.ReplaceAll(strings.TrimPrefix(cmd.CommandPath(), "spiredb "), " ", "-")
	gauge := func(metric, help string, v float64) prometheus.Collector {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: metric, Help: help})
		g.Set(v)
		return g
	}
	now := float64(time.Now().Unix())
	// the Pushgateway's job label is the command, as schedule's job label
	// is the job's name
	p := push.New(url, name).
		Collector(gauge("spiredb_job_last_run_timestamp_seconds", "Unix time the job's last run ended.", now)).
		Collector(gauge("spiredb_job_last_duration_seconds", "Duration of the job's last run.", took.Seconds())).
		Collector(gauge("spiredb_job_last_exit_code", "Exit code of the job's last run (0 ok, 1 failure, 2 usage, 3 unreachable, 4 warnings).", float64(code)))
	if code == exitOK || code == exitWarning {
		p = p.Collector(gauge("spiredb_job_last_success_timestamp_seconds", "Unix time of the job's last successful run.", now))
	}
	return p.Add()
}
