package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/migrations/backfill"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

func newMigrateBackfillCmd(g *globals) *cobra.Command {
	var (
		spec                  backfill.Spec
		batchSize, maxLag     string
		maxImpact             string
		target                time.Duration
		pauseOnLocks, dryRun  bool
		allowVolatile         bool
		rest                  float64
		resume, status, cncel string
	)
	cmd := &cobra.Command{
		Use:   "backfill --table T --set \"col = expr\" [--where SQL] [--name JOB] | --resume JOB | --status[=JOB] | --cancel JOB",
		Short: "Change every row of a live table in short, resumable, throttled batches",
		Long: `backfill pages through the table by its primary key (keyset, never OFFSET),
up to the largest key at the start: rows inserted during the run are left
alone. Each batch is its own short transaction under lock_timeout, retried on
lock timeouts and deadlocks, and moves the job's checkpoint (spiredb.backfill_jobs)
in that same transaction: a crashed, killed or cancelled job resumes with
--resume where it stopped and updates no row twice. The batch size adapts
toward --target-batch-duration; the job pauses while a standby's replay lag
exceeds --max-replica-lag, or (--pause-on-lock-waits) while other sessions
wait for locks on the table. Needs spiredb migrate up (the jobs table).

--max-impact 30% paces the job by what SPIRE feels instead: on a second
session spiredb times a minimal write transaction every 20 ms (its commit
waits for the WAL flush, like each of SPIRE's writes; averaged as a client
that waits for each transaction feels it, so 30% slower per transaction is
about a quarter less throughput) and, when pg_stat_statements is readable,
the mean time of the table's other statements per call; while either is
more than 30% above its baseline (measured with
the job idle before the first batch and for a second every 30 s), the rest
after each batch grows, in proportion to the excess; under the budget the
rest shrinks, hardly at all near it. Batches aim at 25 ms (50 ms at most),
and lock waits on the table pause the job.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			modes := 0
			for _, set := range []bool{spec.Table != "", resume != "", cmd.Flags().Changed("status"), cncel != ""} {
				if set {
					modes++
				}
			}
			if modes != 1 {
				return usageErrorf("give one of --table (a new job), --resume JOB, --status [JOB], --cancel JOB")
			}
			if rest < 0 || rest > 10 {
				return usageErrorf("--rest must be between 0 and 10 (a fraction of each batch's duration)")
			}
			opts := backfill.Options{TargetBatchDuration: target, PauseOnLockWaits: pauseOnLocks, Rest: rest, LockTimeout: g.lockTimeout,
				AllowVolatile: allowVolatile, Logger: g.logger}
			if batchSize != "auto" {
				n, err := strconv.Atoi(batchSize)
				if err != nil || n < 1 {
					return usageErrorf("--batch-size must be a positive number or auto, not %q", batchSize)
				}
				opts.BatchSize = n
			}
			if maxImpact != "" {
				f, err := parseImpact(maxImpact)
				if err != nil {
					return usageErrorf("--max-impact: %w", err)
				}
				if batchSize != "auto" {
					return usageErrorf("--max-impact sizes batches itself: leave --batch-size auto")
				}
				opts.MaxImpact = f
			}
			if maxLag != "" {
				l, err := replication.ParseLimit(maxLag)
				if err != nil {
					return usageErrorf("--max-replica-lag: %w", err)
				}
				opts.MaxReplicaLag = l
			}
			conn, err := pg.Connect(ctx, g.pgOptions())
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			if err := pg.RequireSession(ctx, conn, g.pgOptions()); err != nil {
				return err
			}
			switch {
			case cmd.Flags().Changed("status"):
				name := status
				if name == "*" {
					name = ""
				}
				jobs, err := backfill.List(ctx, conn, name)
				if err != nil {
					return err
				}
				if name != "" && len(jobs) == 0 {
					return usageErrorf("no backfill job %q", name)
				}
				return g.out.print(jobs, func(w io.Writer) error {
					if len(jobs) == 0 {
						_, err := fmt.Fprintln(w, "no backfill jobs")
						return err
					}
					for _, j := range jobs {
						fmt.Fprintf(w, "%s: %s on %s SET %s", j.Name, j.State, j.Table, j.Set)
						if j.Where != "" {
							fmt.Fprintf(w, " WHERE %s", j.Where)
						}
						fmt.Fprintf(w, "; %s rows in %d batches, up to key %s of %s, updated %s\n", humanize.Comma(j.RowsDone), j.Batches,
							strings.Join(j.LastKey, ","), strings.Join(j.MaxKey, ","), j.UpdatedAt.UTC().Format(time.DateTime))
						if j.Error != "" {
							fmt.Fprintf(w, "  error: %s\n  (spiredb migrate backfill --resume %s continues it)\n", j.Error, j.Name)
						}
					}
					return nil
				})
			case cncel != "":
				j, err := backfill.Cancel(ctx, conn, cncel)
				if err != nil {
					return err
				}
				g.logger.Info("backfill cancelled: a running job stops after its current batch", "job", j.Name, "rows_done", j.RowsDone)
				return nil
			}
			if dryRun {
				if resume != "" {
					return usageErrorf("--dry-run plans a new job (--table ...)")
				}
				p, err := backfill.DryRun(ctx, conn, spec, opts)
				if err != nil {
					return usageErrorf("%w", err)
				}
				return g.out.print(p, func(w io.Writer) error {
					fmt.Fprintf(w, "%s: key (%s), up to %s; %s rows to update\nper batch, in one transaction:\n", p.Table,
						strings.Join(p.KeyColumns, ", "), strings.Join(p.MaxKey, ","), humanize.Comma(p.Rows))
					for _, s := range p.SQL {
						fmt.Fprintf(w, "  %s;\n", s)
					}
					return nil
				})
			}
			progress, end := backfillProgress(g)
			opts.Progress = progress
			var job *backfill.Job
			if resume != "" {
				job, err = backfill.Resume(ctx, conn, resume, opts)
			} else {
				if spec.Name == "" {
					spec.Name = "backfill-" + strings.ReplaceAll(spec.Table, ".", "-") + "-" + time.Now().UTC().Format("20060102-150405")
				}
				job, err = backfill.Start(ctx, conn, spec, opts)
			}
			end()
			var exists *backfill.JobExistsError
			var bad *backfill.SpecError
			if errors.As(err, &exists) || errors.As(err, &bad) {
				return usageErrorf("%w", err)
			}
			if errors.Is(err, backfill.ErrCancelled) {
				g.logger.Info("backfill stopped: cancelled", "job", job.Name, "rows_done", job.RowsDone)
				return silentExit(exitFailure)
			}
			if err != nil {
				if job != nil {
					return fmt.Errorf("%w (job %s checkpointed at %d rows: --resume %s continues it)", err, job.Name, job.RowsDone, job.Name)
				}
				return err
			}
			return g.out.print(job, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s: %s, %s rows in %d batches\n", job.Name, job.State, humanize.Comma(job.RowsDone), job.Batches)
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec.Table, "table", "", "[schema.]table to change (it needs a primary key)")
	fl.StringVar(&spec.Set, "set", "", `the SET clause: "col = expr[, col2 = expr2]"`)
	fl.StringVar(&spec.Where, "where", "", "only rows matching this condition (one expression)")
	fl.BoolVar(&allowVolatile, "allow-volatile", false, "accept volatile functions in --set/--where (they run again on every retried batch)")
	fl.StringVar(&spec.Name, "name", "", "the job's name, for --resume/--status/--cancel (default backfill-TABLE-TIME)")
	fl.StringVar(&batchSize, "batch-size", "auto", "rows per batch, or auto (adapts toward --target-batch-duration)")
	fl.DurationVar(&target, "target-batch-duration", 200*time.Millisecond, "what auto batch sizing aims at")
	fl.StringVar(&maxLag, "max-replica-lag", "", "pause while a standby's replay lag exceeds this (e.g. 64MB or 5s)")
	fl.StringVar(&maxImpact, "max-impact", "", "pace by the live workload: how much slower its commits and the table's statements may get (e.g. 30%)")
	fl.BoolVar(&pauseOnLocks, "pause-on-lock-waits", false, "pause while other sessions wait for locks on the table")
	fl.Float64Var(&rest, "rest", 0, "after each batch, rest this fraction of its duration (0.5: half as long), leaving room for SPIRE's writes")
	fl.BoolVar(&dryRun, "dry-run", false, "show the batch statements and the rows to change; change nothing")
	fl.StringVar(&resume, "resume", "", "continue the job of this name from its checkpoint")
	fl.StringVar(&status, "status", "", "show all jobs, or one with --status=JOB")
	fl.Lookup("status").NoOptDefVal = "*"
	fl.StringVar(&cncel, "cancel", "", "cancel a job: it stops after its current batch")
	return cmd
}

// backfillProgress shows rows, rate, batch size and ETA: a live line on a
// terminal, a log line every 10 seconds otherwise.
func backfillProgress(g *globals) (func(backfill.Progress), func()) {
	var lastLog time.Time
	var bar *progressbar.ProgressBar
	end := func() {
		if bar != nil {
			_ = bar.Finish()
			g.status.End()
		}
	}
	return func(p backfill.Progress) {
		line := fmt.Sprintf("%s: %s rows  %s rows/s  batch %d", p.Job, humanize.Comma(p.Rows), humanize.Comma(int64(p.Rate)), p.BatchSize)
		if p.Fraction >= 0 {
			line += fmt.Sprintf("  %.1f%%", 100*p.Fraction)
			if p.ETA > 0 {
				line += "  ETA " + p.ETA.Round(time.Second).String()
			}
		}
		if p.Impact > 0 || p.Rest > 0 {
			line += fmt.Sprintf("  impact %+.0f%%  rest %.2f×", 100*p.Impact, p.Rest)
		}
		if p.Paused != "" {
			line += "  paused: " + p.Paused
		}
		if g.status != nil {
			// a bar over the key range (per mille), or a count when the
			// key is not one integer column
			if bar == nil {
				total := int64(-1)
				if p.Fraction >= 0 {
					total = 1000
				}
				bar = newBar(g, p.Job, total, false)
			}
			desc := fmt.Sprintf("%s: %s rows, batch %d", p.Job, humanize.Comma(p.Rows), p.BatchSize)
			if p.Paused != "" {
				desc += ", paused: " + p.Paused
			}
			bar.Describe(desc)
			if p.Fraction >= 0 {
				_ = bar.Set64(int64(1000 * p.Fraction))
			} else {
				_ = bar.Set64(p.Rows)
			}
			return
		}
		if time.Since(lastLog) >= 10*time.Second || p.Paused != "" && time.Since(lastLog) >= 2*time.Second || p.Fraction >= 1 {
			lastLog = time.Now()
			g.logger.Info(line)
		}
	}, end
}

// parseImpact reads "30%" or "0.3".
func parseImpact(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	f, err := strconv.ParseFloat(strings.TrimSuffix(t, "%"), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a percentage (e.g. 30%%) or a fraction (0.3)", s)
	}
	if pct {
		f /= 100
	}
	if !(f > 0 && f <= 10) { // NaN too
		return 0, fmt.Errorf("%q: give more than 0%% and at most 1000%%", s)
	}
	return f, nil
}
