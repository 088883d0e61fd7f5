package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/internal/pg"
	"github.com/spiredb/spiredb/replication"
)

func newReplicaCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Bootstrap, inspect, promote and fence streaming standbys",
		Long: `Streaming replication for the SPIRE datastore, the PostgreSQL 12+ way: a
physical slot and pg_basebackup -R (standby.signal, primary_conninfo), never
recovery.conf or trigger files; pg_promote() for promotion.

A standby can serve SPIRE's stale-tolerant reads (DataStore "sql"
ro_connection_string); 'replica status' says which standbys are fit for it.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newReplicaBootstrapCmd(g), newReplicaStatusCmd(g), newReplicaPromoteCmd(g), newReplicaFenceCmd(g), newReplicaSlotsCmd(g))
	return cmd
}

func parseLimit(s string) (replication.Limit, error) {
	l, err := replication.ParseLimit(s)
	if err != nil {
		return l, usageErrorf("--max-lag: %w", err)
	}
	return l, nil
}

func (g *globals) withDSN(d string) pg.Options {
	o := g.pgOptions()
	if d != "" {
		o.DSN = d
	}
	return o
}

func newReplicaBootstrapCmd(g *globals) *cobra.Command {
	var o replication.BootstrapOptions
	var primary string
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make a streaming standby of the primary in a new data directory",
		Long: `bootstrap checks first (primary reachable and not in recovery, wal_level,
two free WAL senders, replication privilege, slot name free, data directory
absent or empty, enough disk), then creates a physical slot and runs
pg_basebackup -R -X stream -S SLOT -c fast -P, showing its progress. If the
copy fails it drops the slot and removes what it wrote; once the copy is
complete nothing is removed (a failed start leaves the directory and slot).
With --start it starts the standby (as the postgres OS user when run as root)
and waits until the primary reports it streaming.

The primary's password is never written into the standby: pg_basebackup reads
it from a temporary passfile, and primary_conninfo names --standby-passfile
(written 0600 for the server's user) or no passfile at all (then give the
server's user a ~/.pgpass entry or another way in).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if primary == "" {
				return usageErrorf("--primary-dsn is required")
			}
			if o.DataDir == "" {
				return usageErrorf("--data-dir is required")
			}
			o.Primary = g.withDSN(primary)
			o.Logger = g.logger
			progress, end := progressReporter(g, "base backup")
			o.Progress = func(done, total int64) { progress(done, 0) }
			res, err := replication.Bootstrap(cmd.Context(), o)
			end()
			if err != nil {
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				fmt.Fprintf(w, "standby in %s: %s copied in %s, slot %s\n", res.DataDir, humanize.IBytes(uint64(res.Bytes)), res.Duration.Round(10*time.Millisecond), res.Slot)
				if res.Started {
					fmt.Fprintf(w, "started on port %d and streaming from the primary\n", res.Port)
				} else {
					fmt.Fprintf(w, "start it with: pg_ctl -D %s start   (standby.signal and primary_conninfo are in place)\n", res.DataDir)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&primary, "primary-dsn", "", "the primary (a role with REPLICATION)")
	f.StringVar(&o.DataDir, "data-dir", "", "the standby's data directory (absent or empty)")
	f.StringVar(&o.Slot, "slot", "", "physical replication slot to create (default: spiredb_ + data directory name)")
	f.BoolVar(&o.Start, "start", false, "start the standby and wait until it streams")
	f.IntVar(&o.Port, "port", 0, "port of the started standby (with --start)")
	f.StringVar(&o.MaxRate, "max-rate", "", "throttle the copy, e.g. 50M (pg_basebackup --max-rate)")
	f.StringVar(&o.BinDir, "pg-bin", "", "directory of pg_basebackup and pg_ctl (default: pg_config --bindir)")
	f.StringVar(&o.StandbyPassfile, "standby-passfile", "", "write the primary's password to this file (0600, the server's user) and name it in primary_conninfo; without it the password is written nowhere")
	return cmd
}

func newReplicaStatusCmd(g *globals) *cobra.Command {
	var maxLag string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Standbys, lag and slot health; which standbys can serve SPIRE's reads",
		Long: `On a primary: each standby (state, sent/write/flush/replay LSN, lag in bytes and
seconds) with a verdict: ready for SPIRE's ro_connection_string or not and why
(not streaming, lagging past --max-lag, slot lost or unreserved), and each slot
(active, wal_status, retained WAL). On a standby: receive and replay LSN,
replay delay, last message from the primary.

Exit 1 when a standby is not ready or a slot is lost or idle.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, err := parseLimit(maxLag)
			if err != nil {
				return err
			}
			st, err := replication.GetStatus(cmd.Context(), g.pgOptions(), limit)
			if err != nil {
				return err
			}
			if err := g.out.print(st, func(w io.Writer) error { return writeReplicaStatus(w, st) }); err != nil {
				return err
			}
			for _, s := range st.Standbys {
				if !s.Ready {
					return silentExit(exitFailure)
				}
			}
			if len(st.Problems) > 0 {
				return silentExit(exitFailure)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&maxLag, "max-lag", "16MB", "a standby further behind is not ready: a size (16MB) or a duration (10s)")
	return cmd
}

func writeReplicaStatus(w io.Writer, st *replication.Status) error {
	fmt.Fprintf(w, "%s (PostgreSQL %s)\n", st.Role, st.Server)
	if st.Receiver != nil {
		r := st.Receiver
		fmt.Fprintf(w, "  receiver %s from %s (slot %s), timeline %d\n", r.Status, orNone(r.SenderHost), orNone(r.Slot), r.Timeline)
		fmt.Fprintf(w, "  received %s, replayed %s (%s behind, replay delay %.1fs)\n", r.ReceiveLSN, r.ReplayLSN, humanize.IBytes(uint64(max(r.ReplayGapBytes, 0))), r.ReplayDelaySecs)
	}
	if st.Role == "primary" {
		if len(st.Standbys) == 0 {
			fmt.Fprintln(w, "  no standbys connected")
		} else {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  STANDBY\tSTATE\tSLOT\tREPLAY LSN\tLAG\tREPLAY LAG\tREADY FOR ro_connection_string")
			for _, s := range st.Standbys {
				ready := "yes"
				if !s.Ready {
					ready = "no: " + s.Reason
				}
				fmt.Fprintf(tw, "  %s (%s)\t%s\t%s\t%s\t%s\t%.1fs\t%s\n", s.ApplicationName, orNone(s.ClientAddr), s.State, orNone(s.Slot), orDash(s.ReplayLSN),
					humanize.IBytes(uint64(max(s.LagBytes, 0))), s.ReplayLagSecs, ready)
			}
			_ = tw.Flush()
		}
		for _, s := range st.Slots {
			fmt.Fprintf(w, "  slot %s: %s, active %t, retains %s\n", s.Name, s.WALStatus, s.Active, humanize.IBytes(uint64(max(s.RetainedBytes, 0))))
		}
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	return nil
}

func newReplicaPromoteCmd(g *globals) *cobra.Command {
	var maxLag string
	var o replication.PromoteOptions
	cmd := &cobra.Command{
		Use:   "promote",
		Short: "Promote a standby to primary, with gates",
		Long: `promote refuses on a primary, and when the standby's replay is further behind
what it received than --max-lag unless --force; waits until replay reaches
the received WAL; runs pg_promote(true, wait); CHECKPOINT; confirms it left
recovery; reports the new timeline and promotion LSN, and what to do next
(fence the old primary, repoint SPIRE, rebuild standbys, drop old slots).

The target comes only from --dsn (never $SPIREDB_DSN or PG*); on a terminal
spiredb asks, elsewhere it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, err := parseLimit(maxLag)
			if err != nil {
				return err
			}
			if err := explicit(cmd, "dsn"); err != nil {
				return err
			}
			o.Conn, o.MaxLag, o.Logger = g.pgOptions(), limit, g.logger
			if err := g.confirm(cmd, "promote "+g.target(o.Conn)+" to a primary (it stops following its primary for good)"); err != nil {
				return err
			}
			res, err := replication.Promote(cmd.Context(), o)
			if err != nil {
				var le *replication.LagError
				if errors.Is(err, replication.ErrNotStandby) || errors.As(err, &le) {
					return &exitError{code: exitFailure, err: err}
				}
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				fmt.Fprintf(w, "promoted in %s: timeline %d, promotion LSN %s (replayed to %s)\nnext:\n", res.Duration.Round(time.Millisecond), res.Timeline, res.PromotionLSN, res.ReplayedTo)
				for _, s := range res.NextSteps {
					fmt.Fprintf(w, "  - %s\n", s)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&maxLag, "max-lag", "16MB", "refuse when replay is further behind than this: a size or a duration")
	cmd.Flags().DurationVar(&o.Wait, "wait", time.Minute, "how long to wait for replay and for the promotion")
	cmd.Flags().BoolVar(&o.Force, "force", false, "promote even past --max-lag (what was not received is lost)")
	addYes(cmd)
	return cmd
}

func newReplicaFenceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fence",
		Short: "Make a reachable old primary refuse writes",
		Long: `fence sets default_transaction_read_only = on with ALTER SYSTEM, reloads, and
ends the sessions holding write transactions. It is idempotent. A client can
still SET default_transaction_read_only = off in its session: for a hard fence
stop the server or close it in pg_hba.conf.

The target comes only from --dsn (never $SPIREDB_DSN or PG*); on a terminal
spiredb asks, elsewhere it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := explicit(cmd, "dsn"); err != nil {
				return err
			}
			if err := g.confirm(cmd, "fence "+g.target(g.pgOptions())+": new transactions there become read-only and its write sessions end"); err != nil {
				return err
			}
			res, err := replication.Fence(cmd.Context(), g.pgOptions())
			if err != nil {
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				state := "fenced"
				if res.AlreadyFenced {
					state = "already fenced"
				}
				_, err := fmt.Fprintf(w, "%s: new transactions are read-only; %d write session(s) ended\n", state, len(res.Terminated))
				return err
			})
		},
	}
	addYes(cmd)
	return cmd
}

func newReplicaSlotsCmd(g *globals) *cobra.Command {
	var drop string
	cmd := &cobra.Command{
		Use:   "slots",
		Short: "List replication slots, or drop one no standby uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if drop != "" {
				if err := replication.DropSlot(cmd.Context(), g.pgOptions(), drop); err != nil {
					return err
				}
				return g.out.print(map[string]string{"dropped": drop}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "slot %s dropped\n", drop)
					return err
				})
			}
			slots, err := replication.ListSlots(cmd.Context(), g.pgOptions())
			if err != nil {
				return err
			}
			if slots == nil {
				slots = []replication.Slot{}
			}
			return g.out.print(slots, func(w io.Writer) error {
				if len(slots) == 0 {
					_, err := fmt.Fprintln(w, "no replication slots")
					return err
				}
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "SLOT\tTYPE\tACTIVE\tWAL STATUS\tRETAINED")
				for _, s := range slots {
					fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", s.Name, s.Type, s.Active, s.WALStatus, humanize.IBytes(uint64(max(s.RetainedBytes, 0))))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&drop, "drop", "", "drop this slot (refused while a standby uses it)")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
