package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/pg"
)

func newIndexesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "indexes",
		Short: "SPIRE's benchmark-proven index set, index health and a hypopg advisor",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(newIndexesPlanCmd(g), newIndexesApplyCmd(g), newIndexesCheckCmd(g), newIndexesAdviseCmd(g))
	return cmd
}

func newIndexesPlanCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "plan",
		Short: "The index set against the live database: missing, present, different or INVALID",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				p, err := indexes.MakePlan(cmd.Context(), conn)
				if err != nil {
					return err
				}
				return g.out.print(p, func(w io.Writer) error {
					fmt.Fprintf(w, "SPIRE schema %q, version %d\n\n", p.Schema, p.SchemaVersion)
					fmt.Fprintf(w, "%-48s %-30s %-10s %s\n", "INDEX", "TABLE", "STATE", "SERVES (MEASURED)")
					for _, ix := range p.Indexes {
						state := string(ix.State)
						if !ix.Applicable {
							state += " (not verified for this schema version)"
						}
						fmt.Fprintf(w, "%-48s %-30s %-10s %s%s\n", ix.Name, ix.Table, state, strings.Join(ix.Serves, ", "), measured(ix.Measured))
						if ix.State == indexes.Different {
							fmt.Fprintf(w, "    live: %s\n", ix.Live)
						}
					}
					present, missing := 0, []string{}
					for _, s := range p.SpireIndexes {
						if s.Present && s.Valid {
							present++
						} else {
							missing = append(missing, s.Name)
						}
					}
					fmt.Fprintf(w, "\nSPIRE's own indexes, which the set works beside: %d of %d present and valid", present, len(p.SpireIndexes))
					if len(missing) > 0 {
						fmt.Fprintf(w, "; missing or INVALID: %s (SPIRE creates them: restore them from its schema)", strings.Join(missing, ", "))
					}
					fmt.Fprintln(w)
					if todo := p.ToDo(); len(todo) > 0 {
						fmt.Fprintf(w, "\n%d to build: spiredb indexes apply (--dry-run shows the SQL)\n", len(todo))
					}
					return nil
				})
			})
		},
	}
}

func measured(m indexes.Measurement) string {
	if m.AfterMs == 0 {
		return ""
	}
	speedup := fmt.Sprintf("×%.2f", m.Speedup())
	if m.Speedup() >= 10 {
		speedup = fmt.Sprintf("×%.0f", m.Speedup())
	}
	return fmt.Sprintf(" (%.4g → %.4g ms, %s; writes +%.0f%%)", m.BeforeMs, m.AfterMs, speedup, 100*m.WriteOverhead)
}

func newIndexesApplyCmd(g *globals) *cobra.Command {
	var only []string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Build the missing set indexes with CREATE INDEX CONCURRENTLY (idempotent; repairs INVALID ones)",
		Long: `apply builds each missing index of the set with CREATE INDEX CONCURRENTLY, one
at a time and outside any transaction, so SPIRE keeps reading and writing.
An INVALID index left by a failed or cancelled build is dropped concurrently
and rebuilt. A build waits for transactions that use the table; each wait is
bounded by --lock-timeout and retried with backoff.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				if err := pg.RequireSession(cmd.Context(), conn, g.pgOptions()); err != nil {
					return err // CREATE INDEX CONCURRENTLY and its retries need a session
				}
				actions, err := indexes.Apply(cmd.Context(), conn, indexes.ApplyOptions{Only: only, DryRun: dryRun, Logger: g.logger})
				var unknown *indexes.UnknownIndexError
				if errors.As(err, &unknown) {
					return usageErrorf("--only: %w", err)
				}
				if actions == nil {
					actions = []indexes.Action{}
				}
				if perr := g.out.print(actions, func(w io.Writer) error {
					for _, a := range actions {
						switch {
						case dryRun && len(a.SQL) > 0:
							fmt.Fprintf(w, "-- %s: %s\n", a.Name, a.Action)
							for _, s := range a.SQL {
								fmt.Fprintf(w, "%s;\n", s)
							}
						case a.Duration > 0:
							fmt.Fprintf(w, "%-48s %s in %s\n", a.Name, a.Action, a.Duration.Round(time.Millisecond))
						default:
							fmt.Fprintf(w, "%-48s %s %s\n", a.Name, a.Action, a.Reason)
						}
					}
					return nil
				}); perr != nil {
					return perr
				}
				return err
			})
		},
	}
	cmd.Flags().StringSliceVar(&only, "only", nil, "build only these set indexes (repeat or comma-separate)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the SQL instead of running it")
	return cmd
}

func newIndexesCheckCmd(g *globals) *cobra.Command {
	var replicas []string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Invalid, duplicate, unused and bloated indexes, with the SQL that fixes each (exit 1: invalid, 4: warnings)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return g.withConn(ctx, func(conn *pgx.Conn) error {
				var rconns []*pgx.Conn
				for _, d := range replicas {
					o := g.pgOptions()
					o.DSN = d
					rc, err := pg.Connect(ctx, o)
					if err != nil {
						return fmt.Errorf("--replica-dsn: %w", err)
					}
					defer rc.Close(ctx)
					rconns = append(rconns, rc)
				}
				r, err := indexes.Check(ctx, conn, indexes.CheckOptions{Replicas: rconns})
				if err != nil {
					return err
				}
				if err := g.out.print(r, func(w io.Writer) error {
					fmt.Fprintf(w, "%d indexes on SPIRE's tables (schema %q); scans counted since %s", r.Indexes, r.Schema, r.StatsSince.UTC().Format(time.DateTime))
					if r.Replicas > 0 {
						fmt.Fprintf(w, " on the primary and %d standbys", r.Replicas)
					}
					fmt.Fprintln(w)
					if len(r.Findings) == 0 {
						fmt.Fprintln(w, "no problems found")
						return nil
					}
					for _, f := range r.Findings {
						fmt.Fprintf(w, "\n%s %s %s.%s: %s\n  fix: %s\n", strings.ToUpper(f.Severity), f.Kind, f.Table, f.Index, f.Detail, f.Fix)
					}
					return nil
				}); err != nil {
					return err
				}
				worst := exitOK
				for _, f := range r.Findings {
					switch f.Severity {
					case "error":
						worst = exitFailure
					case "warning":
						if worst == exitOK {
							worst = exitWarning
						}
					}
				}
				if worst != exitOK {
					return silentExit(worst)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringArrayVar(&replicas, "replica-dsn", nil, "a standby serving SPIRE's reads: its index scans count too (repeatable)")
	return cmd
}

func newIndexesAdviseCmd(g *globals) *cobra.Command {
	var minGain float64
	var statements int
	cmd := &cobra.Command{
		Use:   "advise",
		Short: "Try candidate indexes for the top statements as hypothetical indexes (hypopg)",
		Long: `advise takes pg_stat_statements' top statement shapes, proposes indexes for the
columns their WHERE clauses filter on, and costs each as a hypothetical index
with hypopg (nothing is built or locked). It recommends those that cut a
statement's planner cost by at least --min-gain. SPIRE's statements are
planned as SPIRE sent them (spiredb carries one execution of each); others
need PostgreSQL 16 (EXPLAIN (GENERIC_PLAN)).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if minGain <= 0 || minGain >= 1 {
				return usageErrorf("--min-gain must be between 0 and 1 (0.5: the index halves the cost)")
			}
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				r, err := indexes.Advise(cmd.Context(), conn, indexes.AdviseOptions{MinGain: minGain, Statements: statements})
				if err != nil {
					return err
				}
				return g.out.print(r, func(w io.Writer) error {
					fmt.Fprintf(w, "hypopg %s; %d statement shapes costed\n", r.Hypopg, r.Considered)
					if len(r.Advice) == 0 {
						fmt.Fprintf(w, "no index cuts a top statement's cost by %.0f%% or more\n", 100*minGain)
					}
					for _, a := range r.Advice {
						fmt.Fprintf(w, "\n%s\n", a.SQL)
						if a.InSet != "" {
							fmt.Fprintf(w, "  = %s of spiredb's set: spiredb indexes apply --only %s\n", a.InSet, a.InSet)
						}
						fmt.Fprintf(w, "  size about %s; %s has %d indexes and %s writes since the statistics reset, each would also update this one\n",
							humanize.IBytes(uint64(a.EstimatedBytes)), a.WriteCost.Table, a.WriteCost.Indexes, humanize.Comma(a.WriteCost.Writes))
						for _, s := range a.Statements {
							label := s.Label
							if label == "" {
								label = "-"
							}
							fmt.Fprintf(w, "  %s: cost %.0f → %.0f (-%.0f%%), %s calls, %s: %s\n", label, s.CostBefore, s.CostAfter, 100*s.Gain,
								humanize.Comma(s.Calls), ms(s.TotalMs), clip(s.Query, 80))
						}
					}
					for _, s := range r.Skipped {
						fmt.Fprintf(w, "\nnot costed: %s\n", s)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().Float64Var(&minGain, "min-gain", 0.5, "least fraction of a statement's planner cost an index must cut")
	cmd.Flags().IntVar(&statements, "statements", 20, "top statement shapes (by total time) to try")
	return cmd
}
