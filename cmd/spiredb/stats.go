package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/tuning"
)

func newStatsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "pg_stat_statements by statement shape, labelled with SPIRE's operations",
		Long: `stats reads pg_stat_statements for the database of --dsn, merges rows of the
same statement shape (pg_query fingerprint: across query ids, users and IN-list
lengths) and names the SPIRE operation behind each shape (cache reload page,
similar-entry lookup, events poll, ...). spiredb's own statements are left out.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newStatsTopCmd(g), newStatsSnapshotCmd(g), newStatsDiffCmd(g), newStatsResetCmd(g))
	return cmd
}

type statsFlags struct {
	by    string
	limit int
}

func (f *statsFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.by, "by", "total", "order: "+strings.Join(tuning.SortKeys, ", ")+" (io: blocks read from outside shared buffers)")
	cmd.Flags().IntVar(&f.limit, "limit", 20, "statement shapes to show (0: all)")
	_ = cmd.RegisterFlagCompletionFunc("by", cobra.FixedCompletions(tuning.SortKeys, cobra.ShellCompDirectiveNoFileComp))
}

func (f *statsFlags) options() (tuning.TopOptions, error) {
	if f.limit < 0 {
		return tuning.TopOptions{}, usageErrorf("--limit must be 0 or more")
	}
	for _, k := range tuning.SortKeys {
		if f.by == k {
			return tuning.TopOptions{By: f.by, Limit: f.limit}, nil
		}
	}
	return tuning.TopOptions{}, usageErrorf("invalid --by %q: want one of %s", f.by, strings.Join(tuning.SortKeys, ", "))
}

func newStatsTopCmd(g *globals) *cobra.Command {
	f := &statsFlags{}
	cmd := &cobra.Command{
		Use:   "top",
		Short: "The statement shapes taking the most database time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := f.options()
			if err != nil {
				return err
			}
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				r, err := tuning.TopStatements(cmd.Context(), conn, opts)
				if err != nil {
					return err
				}
				return g.out.print(r, func(w io.Writer) error { return printTop(w, r) })
			})
		},
	}
	f.register(cmd)
	return cmd
}

func printTop(w io.Writer, r *tuning.Report) error {
	src := r.Source
	reset := ""
	if src.StatsReset != nil {
		reset = " · last full reset " + src.StatsReset.UTC().Format(time.DateTime) + "Z"
	}
	fmt.Fprintf(w, "database %s · PostgreSQL %s · pg_stat_statements %s%s\n", src.Database, src.ServerVersion, src.Extension, reset)
	fmt.Fprintf(w, "%d statements in %d shapes, %s of database time; by %s\n\n", r.Statements, r.Shapes, ms(r.TotalMs), r.By)
	if len(r.Groups) == 0 {
		fmt.Fprintln(w, "no statements recorded yet")
	} else {
		fmt.Fprintf(w, "%3s %9s %6s %7s %9s %7s %6s %6s  %-28s %s\n", "#", "TOTAL", "SHARE", "CALLS", "MEAN", "ROWS", "HIT%", "READ", "OPERATION", "QUERY")
		for i, gr := range r.Groups {
			fmt.Fprintf(w, "%3d %9s %6s %7s %9s %7s %6.1f %6s  %-28s %s\n", i+1, ms(gr.TotalMs), pct(gr.Share), count(gr.Calls), ms(gr.MeanMs),
				count(gr.Rows), gr.HitPercent(), count(gr.SharedRead+gr.TempBlocks), labelText(gr.Label, gr.ParseError), clip(gr.Query, 70))
		}
	}
	printOperations(w, r.Operations)
	printNotes(w, src)
	return nil
}

func printOperations(w io.Writer, ops []tuning.Operation) {
	if len(ops) == 0 {
		return
	}
	fmt.Fprintln(w, "\ndatabase time by SPIRE operation:")
	for _, op := range ops {
		fmt.Fprintf(w, "  %-36s %9s %6s %8s calls %3d shapes\n", labelText(op.Label, ""), ms(op.TotalMs), pct(op.Share), count(op.Calls), op.Shapes)
	}
}

func printNotes(w io.Writer, src tuning.Source) {
	if src.Deallocated > 0 {
		fmt.Fprintf(w, "\nnote: %d statements were evicted since the last reset (pg_stat_statements.max = %d): totals are incomplete; raise it\n", src.Deallocated, src.Max)
	}
	if src.Hidden > 0 {
		fmt.Fprintf(w, "\nnote: %d statements of other roles are hidden from this role: GRANT pg_read_all_stats to it\n", src.Hidden)
	}
}

func labelText(label, parseErr string) string {
	switch {
	case label != "":
		return label
	case parseErr != "":
		return "(unparsed)"
	}
	return "-"
}

// ms renders milliseconds for people: 0.32 ms, 497 ms, 12.3 s, 2.1 h.
func ms(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	case v < 1000:
		return fmt.Sprintf("%.0f ms", v)
	case v < 600_000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v < 36_000_000:
		return fmt.Sprintf("%.1f min", v/60_000)
	}
	return fmt.Sprintf("%.1f h", v/3_600_000)
}

func pct(share float64) string { return fmt.Sprintf("%.1f%%", 100*share) }

func count(n int64) string {
	return strings.ReplaceAll(humanize.SIWithDigits(float64(n), 1, ""), " ", "")
}

// clip makes a statement one line of at most n runes.
func clip(q string, n int) string {
	q = strings.Join(strings.Fields(q), " ")
	if r := []rune(q); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return q
}

func newStatsSnapshotCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "snapshot --out FILE",
		Short: "Save pg_stat_statements of the database to a file, for stats diff",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("give --out FILE")
			}
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				s, err := tuning.TakeSnapshot(cmd.Context(), conn)
				if err != nil {
					return err
				}
				if err := s.WriteFile(out); err != nil {
					return err
				}
				g.logger.Info("snapshot written", "file", out, "statements", len(s.Statements), "database", s.Source.Database)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write (JSON)")
	return cmd
}

func newStatsDiffCmd(g *globals) *cobra.Command {
	f := &statsFlags{}
	var since string
	cmd := &cobra.Command{
		Use:   "diff FILE_A FILE_B | --since FILE",
		Short: "What ran between two snapshots (or since one): slower shapes, new shapes",
		Args:  cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options()
			if err != nil {
				return err
			}
			var a, b *tuning.Snapshot
			switch {
			case since != "" && len(args) == 0:
				if a, err = tuning.ReadSnapshot(since); err != nil {
					return usageErrorf("%w", err)
				}
				conn, err := pg.Connect(cmd.Context(), g.pgOptions())
				if err != nil {
					return err
				}
				defer conn.Close(cmd.Context())
				if b, err = tuning.TakeSnapshot(cmd.Context(), conn); err != nil {
					return err
				}
			case since == "" && len(args) == 2:
				if a, err = tuning.ReadSnapshot(args[0]); err != nil {
					return usageErrorf("%w", err)
				}
				if b, err = tuning.ReadSnapshot(args[1]); err != nil {
					return usageErrorf("%w", err)
				}
			default:
				return usageErrorf("give two snapshot files, or --since FILE (and --dsn)")
			}
			d, err := tuning.DiffSnapshots(a, b, opts)
			if err != nil {
				return usageErrorf("%w", err)
			}
			return g.out.print(d, func(w io.Writer) error { return printDiff(w, d) })
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "snapshot file to compare the live database with")
	f.register(cmd)
	return cmd
}

func printDiff(w io.Writer, d *tuning.Diff) error {
	fmt.Fprintf(w, "database %s · %s → %s (%s) · %s of database time; by %s\n", d.Database,
		d.From.UTC().Format(time.DateTime), d.To.UTC().Format(time.DateTime), d.To.Sub(d.From).Round(time.Second), ms(d.TotalMs), d.By)
	if d.Reset {
		fmt.Fprintln(w, "note: pg_stat_statements was reset in between: counted from the reset")
	}
	fmt.Fprintln(w)
	if len(d.Changes) == 0 {
		fmt.Fprintln(w, "nothing ran in between")
		return nil
	}
	fmt.Fprintf(w, "%3s %9s %6s %7s %9s %9s %7s  %-28s %s\n", "#", "TOTAL", "SHARE", "CALLS", "MEAN", "BEFORE", "CHANGE", "OPERATION", "QUERY")
	for i, c := range d.Changes {
		before, change := ms(c.MeanBeforeMs), fmt.Sprintf("×%.2f", c.Slowdown)
		if c.New {
			before, change = "-", "new"
		}
		fmt.Fprintf(w, "%3d %9s %6s %7s %9s %9s %7s  %-28s %s\n", i+1, ms(c.TotalMs), pct(c.Share), count(c.Calls), ms(c.MeanMs), before, change,
			labelText(c.Label, c.ParseError), clip(c.Query, 70))
	}
	printOperations(w, d.Operations)
	return nil
}

func newStatsResetCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Clear pg_stat_statements for the database (or all databases)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				if err := tuning.Reset(cmd.Context(), conn, all); err != nil {
					return err
				}
				scope := "database " + conn.Config().Database
				if all {
					scope = "all databases"
				}
				g.logger.Info("pg_stat_statements reset", "scope", scope)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all-databases", false, "reset every database's statements, not only this one's")
	return cmd
}
