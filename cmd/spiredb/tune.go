package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/tuning"
)

func newTuneCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tune",
		Short: "PostgreSQL settings for a SPIRE workload: recommend, and check a live server",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(newTuneRecommendCmd(g), newTuneCheckCmd(g))
	return cmd
}

// tuneFlags are the inputs both tune commands take.
type tuneFlags struct {
	ram    string
	detect bool
	in     tuning.Inputs
}

func (f *tuneFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.ram, "ram", "", "memory of the PostgreSQL server, e.g. 16GB")
	fl.IntVar(&f.in.CPUs, "cpus", 0, "cores of the PostgreSQL server")
	fl.StringVar(&f.in.Storage, "storage", "ssd", "ssd, hdd or network (EBS, persistent disks)")
	fl.IntVar(&f.in.SpireServers, "spire-servers", 1, "spire-servers sharing the database")
	fl.IntVar(&f.in.MaxOpenConns, "max-open-conns", 100, "their DataStore \"sql\" max_open_conns")
	fl.StringVar(&f.in.Pooler, "pooler", "none", "none or pgbouncer")
	fl.StringVar(&f.in.ArchiveStore, "archive-store", "", "backup store for archive_command (spiredb wal push --store; default: SPIREDB_STORE in the server's environment)")
	fl.BoolVar(&f.detect, "detect", false, "read memory and CPUs from this container's cgroup limits (run it where PostgreSQL runs)")
}

func (f *tuneFlags) recommend(g *globals) (*tuning.Recommendation, error) {
	in := f.in
	if f.detect {
		ram, cpus, source, err := tuning.Detect(os.DirFS("/"), runtime.NumCPU())
		if err != nil {
			return nil, usageErrorf("%w", err)
		}
		if f.ram == "" {
			in.RAM = ram
		}
		if in.CPUs == 0 {
			in.CPUs = cpus
		}
		g.logger.Info("detected limits", "ram", humanize.IBytes(uint64(ram)), "cpus", cpus, "source", source)
	}
	if f.ram != "" {
		ram, err := tuning.ParseSize(f.ram)
		if err != nil {
			return nil, usageErrorf("--ram: %w", err)
		}
		in.RAM = ram
	}
	if in.RAM == 0 || in.CPUs == 0 {
		return nil, usageErrorf("give --ram and --cpus of the PostgreSQL server (or --detect where it runs)")
	}
	r, err := tuning.Recommend(in)
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	return r, nil
}

func newTuneRecommendCmd(g *globals) *cobra.Command {
	f := &tuneFlags{}
	cmd := &cobra.Command{
		Use:   "recommend",
		Short: "Settings for a SPIRE workload, with a reason each",
		Long: `recommend sizes memory (shared_buffers, effective_cache_size, work_mem,
maintenance_work_mem), WAL and checkpoints, planner costs for the storage,
max_connections from spire-servers × max_open_conns (or the pooler),
autovacuum for the churning events tables and pg_stat_statements. The worst
case (shared_buffers + max_connections × work_mem × 2 + maintenance for each
autovacuum worker) never exceeds --ram.

-o text|json|conf (postgresql.conf snippet)|sql (ALTER SYSTEM statements)|
pgbouncer (a pgbouncer.ini sized for the spire-servers, with --pooler pgbouncer).`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			r, err := f.recommend(g)
			if err != nil {
				return err
			}
			switch g.output {
			case "conf":
				_, err := io.WriteString(g.stdout, r.Conf())
				return err
			case "sql":
				_, err := io.WriteString(g.stdout, r.SQL())
				return err
			case "pgbouncer":
				if r.Inputs.Pooler != "pgbouncer" {
					return usageErrorf("-o pgbouncer sizes a pooler: add --pooler pgbouncer")
				}
				_, err := io.WriteString(g.stdout, r.PgBouncerINI())
				return err
			}
			return g.out.print(r, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				for _, s := range r.Settings {
					restart := ""
					if s.Restart {
						restart = " (restart)"
					}
					fmt.Fprintf(tw, "%s\t%s%s\t%s\n", s.Name, s.Value, restart, s.Reason)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(w, "\nworst-case memory: %s of %s\nper table:\n", humanize.IBytes(uint64(r.WorstCaseMemory)), humanize.IBytes(uint64(r.Inputs.RAM)))
				for _, q := range r.TableSQL {
					fmt.Fprintf(w, "  %s\n", q)
				}
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}

func newTuneCheckCmd(g *globals) *cobra.Command {
	f := &tuneFlags{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Compare the live server's settings with the recommendation (exit 1 when something needs changing)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.recommend(g)
			if err != nil {
				return err
			}
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				diffs, err := tuning.CheckSettings(cmd.Context(), conn, r)
				if err != nil {
					return err
				}
				if diffs == nil {
					diffs = []tuning.Difference{}
				}
				if err := g.out.print(diffs, func(w io.Writer) error {
					if len(diffs) == 0 {
						_, err := fmt.Fprintln(w, "all settings match the recommendation")
						return err
					}
					tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "SETTING\tCURRENT\tRECOMMENDED\tWHY")
					for _, d := range diffs {
						rec := d.Recommended
						if d.Restart {
							rec += " (restart)"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Name, d.Current, rec, d.Reason)
					}
					if err := tw.Flush(); err != nil {
						return err
					}
					_, err := fmt.Fprintln(w, "\napply: spiredb tune recommend ... -o sql | psql")
					return err
				}); err != nil {
					return err
				}
				if len(diffs) > 0 {
					return silentExit(exitFailure)
				}
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}
