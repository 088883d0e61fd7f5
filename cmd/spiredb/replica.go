package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

func newReplicaCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Bootstrap, inspect, promote, fence, switch over and rejoin streaming standbys",
		Long: `Streaming replication for the SPIRE datastore, the PostgreSQL 12+ way: a
physical slot and pg_basebackup -R (standby.signal, primary_conninfo), never
recovery.conf or trigger files; pg_promote() for promotion.

A standby can serve SPIRE's stale-tolerant reads (DataStore "sql"
ro_connection_string); 'replica status' says which standbys are fit for it.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(newReplicaBootstrapCmd(g), newReplicaStatusCmd(g), newReplicaPromoteCmd(g), newReplicaFenceCmd(g),
		newReplicaSwitchoverCmd(g), newReplicaRejoinCmd(g), newReplicaSlotsCmd(g))
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
	sf := &storeFlags{g: g}
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
server's user a ~/.pgpass entry or another way in).

With --store (default $SPIREDB_STORE), the store the cluster's WAL is archived
to, it refuses a primary on an older timeline than the archive's newest:
another server was promoted in its place, and a standby of it would follow a
replaced primary.`,
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
			timelines, err := archivedTimelines(cmd, sf)
			if err != nil {
				return err
			}
			o.ArchivedTimelines = timelines
			progress, end := progressReporter(g, "base backup")
			o.Progress = func(done, total int64) { progress(done, 0) }
			res, err := replication.Bootstrap(cmd.Context(), o)
			end()
			if err != nil {
				var pe *replication.PromotedElsewhereError
				if errors.As(err, &pe) {
					return &exitError{code: exitFailure, err: err}
				}
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
	sf.register(f, false)
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
	sf := &storeFlags{g: g}
	cmd := &cobra.Command{
		Use:   "promote",
		Short: "Promote a standby to primary, with gates",
		Long: `promote refuses on a primary; while the standby's WAL receiver still streams
from its primary, which is then alive (two primaries would split SPIRE's
writes: use replica switchover for a planned change, or stop the old primary
first; --force does not override this); while a server that accepts
connections, and is not in recovery, answers at the address primary_conninfo
names although the receiver does not stream (the receiver stops for other
reasons too: a dropped slot, a changed password, removed WAL; that primary
may still take SPIRE's writes; the probe, like pg_isready, takes up to 3 s and
needs to read primary_conninfo; --force overrides it once the old primary is
fenced or known to take no writes); and when the standby's replay is
further behind what it received than --max-lag unless --force; waits until replay reaches
the received WAL; runs pg_promote(true, wait); CHECKPOINT; confirms it left
recovery; reports the new timeline and promotion LSN, and what to do next
(fence the old primary, repoint SPIRE, rebuild standbys, drop old slots).
It works from the postgres (or template1) database: a fence of the old
primary, replayed on the standby, closes the --dsn database there, and that
database is reopened once the server is the primary.

With --store (default $SPIREDB_STORE), the store the cluster's WAL is archived
to (spiredb wal push), it also refuses when the archive holds the history of
a timeline newer than the standby's: another server of the cluster (a sibling
standby) was promoted already, and a second promotion would make two
primaries. --force overrides this.

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
			timelines, err := archivedTimelines(cmd, sf)
			if err != nil {
				return err
			}
			o.ArchivedTimelines = timelines
			if err := g.confirm(cmd, "promote "+g.target(o.Conn)+" to a primary (it stops following its primary for good)"); err != nil {
				return err
			}
			res, err := replication.Promote(cmd.Context(), o)
			if err != nil {
				var le *replication.LagError
				var pe *replication.PromotedElsewhereError
				var ae *replication.PrimaryAnswersError
				if errors.Is(err, replication.ErrNotStandby) || errors.As(err, &le) || errors.As(err, &pe) || errors.As(err, &ae) {
					return &exitError{code: exitFailure, err: err}
				}
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				fmt.Fprintf(w, "promoted in %s: timeline %d, promotion LSN %s (replayed to %s)\n", res.Duration.Round(time.Millisecond), res.Timeline, res.PromotionLSN, res.ReplayedTo)
				for _, db := range res.Reopened {
					fmt.Fprintf(w, "reopened database %s: the old primary's fence, replayed here, had closed it\n", db)
				}
				fmt.Fprintln(w, "next:")
				for _, s := range res.NextSteps {
					fmt.Fprintf(w, "  - %s\n", s)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&maxLag, "max-lag", "16MB", "refuse when replay is further behind than this: a size or a duration")
	cmd.Flags().DurationVar(&o.Wait, "wait", time.Minute, "how long to wait for replay and for the promotion")
	cmd.Flags().BoolVar(&o.Force, "force", false, "promote even past --max-lag (what was not received is lost), or after another server's promotion in --store's archive")
	sf.register(cmd.Flags(), false)
	addYes(cmd)
	return cmd
}

func newReplicaFenceCmd(g *globals) *cobra.Command {
	var o replication.FenceOptions
	sf := &storeFlags{g: g}
	cmd := &cobra.Command{
		Use:   "fence",
		Short: "Make a primary refuse SPIRE's writes (or lift that with --undo)",
		Long: `fence closes SPIRE's database on a primary so that no session can write
through it, whatever the session asks for (SPIRE's lib/pq opens every
transaction with BEGIN READ WRITE, which a read-only default does not stop):

  1. ALTER DATABASE <db> ALLOW_CONNECTIONS false: no new connection to it, of
     any role, superusers included;
  2. every session of that database is ended, and again until none is left;
  3. server-wide default_transaction_read_only = on (ALTER SYSTEM, reload) as a
     second layer for other databases, with their write transactions ended;
     skipped with the reason when the role may not ALTER SYSTEM.

spiredb works from the postgres (or template1) database, so it keeps its own
access. The fence is in the catalog: it survives a restart, and standbys that
replay it refuse connections to that database too (switchover lifts it on
the promoted one). Idempotent. --undo reopens the database and resets the
read-only default; on an old primary that a switchover superseded (marked in
its postgresql.auto.conf) it refuses, since reopening it makes two primaries:
rejoin it as a standby instead, or pass --force if the new primary is gone.
With --store (default $SPIREDB_STORE), the store the cluster's WAL is
archived to, --undo also refuses when the archive holds the history of a
timeline newer than the server's: a failover promoted another server in its
place (no switchover marked it), and --force overrides that too.

The database is the one --dsn names (--database to name others). The target
comes only from --dsn (never $SPIREDB_DSN or PG*); on a terminal spiredb asks,
elsewhere it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := explicit(cmd, "dsn"); err != nil {
				return err
			}
			if o.Force && !o.Undo {
				return usageErrorf("--force goes with --undo (lifting a fence on a replaced primary)")
			}
			o.Conn, o.Logger = g.pgOptions(), g.logger
			if o.Undo {
				timelines, err := archivedTimelines(cmd, sf)
				if err != nil {
					return err
				}
				o.ArchivedTimelines = timelines
			}
			what := "fence " + g.target(o.Conn) + ": its SPIRE database refuses every connection and its sessions end"
			if o.Undo {
				what = "lift the fence on " + g.target(o.Conn) + ": SPIRE can connect and write there again"
			}
			if err := g.confirm(cmd, what); err != nil {
				return err
			}
			res, err := replication.Fence(cmd.Context(), o)
			if res != nil {
				if perr := g.out.print(res, func(w io.Writer) error { return writeFence(w, res) }); perr != nil {
					return perr
				}
			}
			if err != nil {
				if errors.Is(err, replication.ErrIsStandby) {
					return &exitError{code: exitFailure, err: err}
				}
				var fe *replication.FenceError
				if errors.As(err, &fe) {
					return &exitError{code: exitFailure, err: err}
				}
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.Undo, "undo", false, "lift the fence: reopen the database(s) and reset default_transaction_read_only")
	cmd.Flags().BoolVar(&o.Force, "force", false, "with --undo: lift it even on an old primary a switchover superseded, or that --store's archive shows replaced (only when the new primary is gone for good: two primaries otherwise)")
	cmd.Flags().StringSliceVar(&o.Databases, "database", nil, "database(s) to fence (default: the --dsn database)")
	sf.register(cmd.Flags(), false)
	addYes(cmd)
	return cmd
}

func writeFence(w io.Writer, res *replication.FenceResult) error {
	for _, d := range res.Databases {
		switch {
		case res.Undone && d.Already:
			fmt.Fprintf(w, "database %s: was not fenced\n", d.Name)
		case res.Undone:
			fmt.Fprintf(w, "database %s: reopened (ALLOW_CONNECTIONS true)\n", d.Name)
		case d.Already:
			fmt.Fprintf(w, "database %s: already fenced (ALLOW_CONNECTIONS false)\n", d.Name)
		default:
			fmt.Fprintf(w, "database %s: fenced (ALLOW_CONNECTIONS false)\n", d.Name)
		}
	}
	fmt.Fprintf(w, "default_transaction_read_only: %s\n", res.ReadOnly)
	if !res.Undone {
		_, err := fmt.Fprintf(w, "%d session(s) ended\n", len(res.Terminated))
		return err
	}
	return nil
}

func newReplicaSwitchoverCmd(g *globals) *cobra.Command {
	var o replication.SwitchoverOptions
	var primary, standby, maxLag string
	sf := &storeFlags{g: g}
	cmd := &cobra.Command{
		Use:   "switchover",
		Short: "Planned switchover: fence the primary, let the standby catch up, promote it",
		Long: `switchover moves the primary role to a standby with no acknowledged write
lost. It refuses unless --standby-dsn is a streaming copy of --primary-dsn (same
system identifier and timeline, its walsender seen on the primary) within
--max-lag. Then it fences the primary (see replica fence: SPIRE's database
refuses connections, its sessions end), waits until the standby has replayed
the primary's last WAL position, promotes it, reopens SPIRE's database there,
and checks the new timeline. Until the promotion a failure unfences the
primary again (nothing changed); after it the old primary stays fenced.

It prints how long SPIRE could not write and the routing steps: SPIRE's
connection_string or the Kubernetes Service must point at the new primary.
Before fencing it creates the slot spiredb_rewind on the primary so that
'replica rejoin' can rewind it afterwards. With --store (default
$SPIREDB_STORE), the store the cluster's WAL is archived to, it also refuses
when the archive holds the history of a timeline newer than the primary's:
another server was promoted in its place already, and a switchover from it
would make yet another primary.

Both targets come only from their flags; on a terminal spiredb asks,
elsewhere it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if primary == "" || standby == "" {
				return usageErrorf("--primary-dsn and --standby-dsn are required")
			}
			limit, err := parseLimit(maxLag)
			if err != nil {
				return err
			}
			o.Primary, o.Standby, o.MaxLag, o.Logger = g.withDSN(primary), g.withDSN(standby), limit, g.logger
			timelines, err := archivedTimelines(cmd, sf)
			if err != nil {
				return err
			}
			o.ArchivedTimelines = timelines
			if err := g.confirm(cmd, "switch over from "+g.target(o.Primary)+" to "+g.target(o.Standby)+": SPIRE cannot write until it is re-pointed at the new primary"); err != nil {
				return err
			}
			res, err := replication.Switchover(cmd.Context(), o)
			if err != nil {
				var le *replication.LagError
				var se *replication.SwitchoverError
				var pe *replication.PromotedElsewhereError
				if errors.As(err, &le) || errors.As(err, &se) || errors.As(err, &pe) || errors.Is(err, replication.ErrNotFollowing) {
					return &exitError{code: exitFailure, err: err}
				}
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				fmt.Fprintf(w, "switched over: timeline %d -> %d; the new primary is %s\n", res.OldTimeline, res.NewTimeline, res.NewPrimary)
				fmt.Fprintf(w, "SPIRE could not write for %s (fence %s, catch-up %s, promotion %s, reopen %s) plus the time to re-point it\n",
					roundMs(res.Unavailable), roundMs(res.Fencing), roundMs(res.CatchUp), roundMs(res.Promotion), roundMs(res.Reopen))
				fmt.Fprintf(w, "the old primary is fenced at %s (%d session(s) ended); the standby replayed to %s\nroute SPIRE to the new primary:\n", res.FenceLSN, len(res.Fence.Terminated), res.ReplayedTo)
				for _, s := range res.Routing {
					fmt.Fprintf(w, "  - %s\n", s)
				}
				fmt.Fprintln(w, "next:")
				for _, s := range res.NextSteps {
					fmt.Fprintf(w, "  - %s\n", s)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&primary, "primary-dsn", "", "the current primary (SPIRE's database on it)")
	f.StringVar(&standby, "standby-dsn", "", "the standby to promote")
	f.StringVar(&maxLag, "max-lag", "16MB", "refuse when the standby is further behind: a size or a duration")
	f.DurationVar(&o.Wait, "wait", 30*time.Second, "how long to wait for the standby to replay the primary's last write, and for the promotion")
	f.StringSliceVar(&o.Databases, "database", nil, "database(s) to fence and reopen (default: the --primary-dsn database)")
	sf.register(f, false)
	addYes(cmd)
	return cmd
}

func roundMs(d time.Duration) string { return d.Round(time.Millisecond).String() }

func newReplicaRejoinCmd(g *globals) *cobra.Command {
	var o replication.RejoinOptions
	sf := &storeFlags{g: g}
	var primary string
	cmd := &cobra.Command{
		Use:   "rejoin",
		Short: "Turn the fenced old primary into a standby of the new one (pg_rewind)",
		Long: `rejoin makes the old primary's data directory a streaming standby of the new
primary without copying everything again. It checks first: the directory is
a copy of the new primary's cluster (system identifier) and the same major;
the old primary, when it runs, is reached by --dsn, runs on --data-dir and is
fenced (or is stopped); it has wal_log_hints = on or data checksums, and the
new primary has full_page_writes. Then it stops the old primary, runs
pg_rewind from the new primary, writes standby.signal, primary_conninfo
(without the password: see --standby-passfile) and primary_slot_name (a slot
it creates on the new primary, or an unused one of that name), and with
--start starts it and waits until it streams. An old primary that already
streams from the new one is left as it is.

When pg_rewind cannot be used or fails, --reclone-on-failure moves the data
directory aside (DIR.spiredb-old-TIME, never deleted) and bootstraps a fresh
standby there.

pg_rewind and pg_ctl must be of the data directory's major: --pg-bin, PATH,
pg_config or /usr/lib/postgresql/MAJOR/bin. Run it where the data directory
is, as root or as its owner. On a terminal spiredb asks, elsewhere it needs
--yes.

A --primary-dsn that a switchover marked superseded is refused before
anything is stopped; with --store (default $SPIREDB_STORE), the store the
cluster's WAL is archived to, so is one on an older timeline than the
archive's newest (replaced by a failover in turn).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if primary == "" || o.DataDir == "" {
				return usageErrorf("--primary-dsn and --data-dir are required")
			}
			if cmd.Flags().Changed("dsn") {
				o.Old = g.pgOptions()
			}
			o.Primary, o.Logger = g.withDSN(primary), g.logger
			timelines, err := archivedTimelines(cmd, sf)
			if err != nil {
				return err
			}
			o.ArchivedTimelines = timelines
			if err := g.confirm(cmd, "rejoin "+o.DataDir+" as a standby of "+g.target(o.Primary)+": the old primary is stopped and rewound onto the new timeline"); err != nil {
				return err
			}
			progress, end := progressReporter(g, "rejoin")
			o.Progress = func(done, total int64) { progress(done, 0) }
			res, err := replication.Rejoin(cmd.Context(), o)
			end()
			if err != nil {
				var pe *replication.PromotedElsewhereError
				if errors.Is(err, replication.ErrCannotRewind) || errors.As(err, &pe) {
					return &exitError{code: exitFailure, err: err}
				}
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				switch res.Method {
				case "none":
					fmt.Fprintf(w, "%s already streams from the new primary: nothing to do\n", res.DataDir)
					return nil
				case "reclone":
					fmt.Fprintf(w, "copied afresh (%s) because: %s\nthe old data directory is kept at %s: remove it when you no longer need it\n", humanize.IBytes(uint64(res.Bytes)), res.Why, res.MovedAside)
				default:
					fmt.Fprintf(w, "rewound %s onto the new primary's timeline in %s\n", res.DataDir, roundMs(res.Duration))
				}
				if res.Started {
					fmt.Fprintf(w, "started on port %d and streaming (slot %s)\n", res.Port, res.Slot)
				} else {
					fmt.Fprintf(w, "start it with: pg_ctl -D %s start   (standby.signal, primary_conninfo and slot %s are in place)\n", res.DataDir, res.Slot)
				}
				for _, s := range res.LeftoverSlots {
					fmt.Fprintf(w, "leftover slot %s from its time as primary keeps WAL: drop it on the standby (replica slots --drop %s)\n", s, s)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&primary, "primary-dsn", "", "the new primary (a role with REPLICATION, and the rights pg_rewind needs: superuser or EXECUTE on pg_ls_dir, pg_stat_file, pg_read_binary_file)")
	f.StringVar(&o.DataDir, "data-dir", "", "the old primary's data directory")
	f.StringVar(&o.Slot, "slot", "", "physical slot on the new primary (default: spiredb_ + data directory name)")
	f.BoolVar(&o.Start, "start", false, "start the standby and wait until it streams")
	f.IntVar(&o.Port, "port", 0, "port of the started standby (with --start)")
	f.StringVar(&o.BinDir, "pg-bin", "", "directory of pg_rewind and pg_ctl (default: found for the data directory's major)")
	f.StringVar(&o.StandbyPassfile, "standby-passfile", "", "write the new primary's password to this file (0600) and name it in primary_conninfo")
	f.BoolVar(&o.RecloneOnFailure, "reclone-on-failure", false, "when pg_rewind cannot be used or fails, move the data directory aside and copy the new primary afresh")
	sf.register(f, false)
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
				if err := explicit(cmd, "dsn"); err != nil {
					return err
				}
				if err := g.confirm(cmd, "drop replication slot "+drop+" on "+g.target(g.pgOptions())+": a standby that used it can no longer catch up from this server"); err != nil {
					return err
				}
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
	cmd.Flags().StringVar(&drop, "drop", "", "drop this slot (refused while a standby uses it; the target only from --dsn, --yes off a terminal)")
	addYes(cmd)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// archivedTimelines reads the timelines of the WAL archive in the store
// the flags (or $SPIREDB_STORE) name: what promote, fence --undo,
// switchover, bootstrap and rejoin check for a server promoted elsewhere.
// Nil when no store is named: nothing to check against.
func archivedTimelines(cmd *cobra.Command, sf *storeFlags) (func(context.Context) ([]uint32, error), error) {
	if sf.url == "" && os.Getenv("SPIREDB_STORE") == "" {
		return nil, nil
	}
	store, err := sf.open(cmd)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) ([]uint32, error) { return backup.ArchivedTimelines(ctx, store) }, nil
}
