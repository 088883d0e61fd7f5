package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/schedule"
)

func newScheduleCmd(g *globals) *cobra.Command {
	var config, listen string
	var check bool
	cmd := &cobra.Command{
		Use:   "schedule --config spiredb.yaml [--listen 127.0.0.1:9187]",
		Short: "Run spiredb jobs on cron schedules, with Prometheus metrics on /metrics",
		Long: `schedule runs the jobs of a YAML file (backup run/verify/prune, views refresh,
stats snapshot, indexes check, replica status, doctor, tune check) on cron
specs ("0 */6 * * *", "@every 30m"), never two runs of one job at once (the
overlap is skipped and counted). /metrics serves spiredb_job_* metrics per
job and, read every "collect" interval (default 1m), the datastore's state:
spiredb_backups, spiredb_backup_newest_timestamp_seconds, _newest_bytes,
_newest_verified_timestamp_seconds, spiredb_replication_standbys, _ready,
_max_lag_bytes, _max_lag_seconds, _slots_lost, _standby_lag_bytes{standby},
spiredb_indexes_invalid, _duplicate, spiredb_view_refresh_age_seconds{view},
spiredb_statements_operation_share{operation}; /healthz answers ok. On SIGTERM it takes no new runs, lets a running job
finish within the file's grace period (default 5m), then cancels it.

  dsn: host=spire-db dbname=spire user=spiredb   # or omit: SPIREDB_DSN / PG*
  store: s3://spire-backups/prod                 # default --store of backup jobs
  grace: 5m
  collect: 1m
  jobs:
    - name: backup
      command: backup run
      schedule: "0 */6 * * *"
      args: ["--compress", "6"]
      jitter: 5m

The file is validated before anything runs; errors name file:line. Secrets
come from the environment (PGPASSWORD, SPIREDB_DSN, AWS_*), never the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return usageErrorf("give --config FILE")
			}
			cfg, err := schedule.LoadConfig(config)
			if err != nil {
				return usageErrorf("%w", err)
			}
			if check {
				_, err := g.stdout.Write([]byte(config + ": ok, " + itoaInt(len(cfg.Jobs)) + " job(s)\n"))
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			pathStyle, err := envPathStyle()
			if err != nil {
				return err
			}
			s, err := schedule.New(cfg, schedule.Options{Tasks: cliTasks(), Conn: g.pgOptions(), Logger: g.logger,
				Store: backup.StoreOptions{S3PathStyle: pathStyle}})
			if err != nil {
				return usageErrorf("%w", err)
			}
			return s.Run(cmd.Context(), nil)
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "the schedule file (YAML)")
	cmd.Flags().StringVar(&listen, "listen", "", "metrics address (default the file's listen, else 127.0.0.1:9187)")
	cmd.Flags().BoolVar(&check, "check", false, "validate the file and exit (0 valid, 2 not)")
	return cmd
}

func itoaInt(n int) string { return strconv.Itoa(n) }

// cliTasks is the CLI's registry of job tasks: each command of
// schedule.Commands runs as the same spiredb command would, in this
// process, with JSON log lines.
func cliTasks() schedule.Registry {
	r := schedule.Registry{}
	for _, c := range schedule.Commands {
		r[c] = func(ctx context.Context, job schedule.Run) error {
			args := append(strings.Fields(job.Job.Command), job.Args...)
			if code := run(ctx, append(args, "--log-format", "json"), job.Stdout, job.Stderr); code != exitOK {
				return &schedule.ExitError{Code: code}
			}
			return nil
		}
	}
	return r
}
