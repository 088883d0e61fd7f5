package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
)

func newDoctorCmd(g *globals) *cobra.Command {
	sf := &storeFlags{g: g}
	tf := &tuneFlags{}
	var replicas []string
	var maxBackupAge, maxUnverified, eventsPrune time.Duration
	var maxLag string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the SPIRE datastore, its server, replication, indexes and backups",
		Long: `doctor connects to the database and reports the server version, whether it is
a primary or a standby, the database size, whether pg_stat_statements is usable,
SPIRE's schema (migrations.version and code_version) with the spire-server
versions that can run on it and the number of entries, agents and bundles;
streaming replication (standbys ready for SPIRE's reads, slots, lost slots);
each --replica-dsn standby; INVALID and duplicate indexes and missing
indexes of spiredb's set; and, with --store, the age of the newest backup and
of the newest verified one; with --ram and --cpus (or --detect where
PostgreSQL runs), the live settings against spiredb tune's recommendation.
Each finding comes with the command that fixes it.

Exit code: 0 healthy, 4 warnings only, 1 an error finding, 3 unreachable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if eventsPrune <= 0 {
				return usageErrorf("invalid --events-prune-older-than %s: want a positive duration", eventsPrune)
			}
			if maxBackupAge < 0 || maxUnverified < 0 {
				return usageErrorf("invalid --max-backup-age %s or --max-unverified-age %s: want 0 or more", maxBackupAge, maxUnverified)
			}
			o := doctor.Options{Conn: g.pgOptions(), MaxBackupAge: maxBackupAge, MaxUnverifiedAge: maxUnverified, EventsPruneAfter: eventsPrune}
			if maxLag != "" {
				l, err := replication.ParseLimit(maxLag)
				if err != nil {
					return usageErrorf("--max-lag: %w", err)
				}
				o.MaxLag = l
			}
			for _, d := range replicas {
				ro := g.pgOptions()
				ro.DSN = d
				o.Replicas = append(o.Replicas, ro)
			}
			if tf.ram != "" || tf.detect {
				rec, err := tf.recommend(g)
				if err != nil {
					return err
				}
				o.Settings = rec
			}
			if sf.url != "" || os.Getenv("SPIREDB_STORE") != "" {
				s, err := sf.open(cmd)
				if err != nil {
					return err
				}
				o.Store, o.StoreURL = s, s.String()
			}
			r, err := doctor.Check(cmd.Context(), o)
			if err != nil {
				return err
			}
			if err := g.out.print(r, func(w io.Writer) error { return writeDoctor(w, r) }); err != nil {
				return err
			}
			return worstExit(r.Worst)
		},
	}
	sf.register(cmd.Flags(), false)
	tf.register(cmd)
	cmd.Flags().StringArrayVar(&replicas, "replica-dsn", nil, "a standby serving SPIRE's reads (repeatable)")
	cmd.Flags().DurationVar(&maxBackupAge, "max-backup-age", 26*time.Hour, "the newest backup may be this old")
	cmd.Flags().DurationVar(&maxUnverified, "max-unverified-age", 36*time.Hour, "the newest verified backup may be this old")
	cmd.Flags().DurationVar(&eventsPrune, "events-prune-older-than", spire.DefaultEventsPruneAfter, "the spire-servers' experimental.prune_events_older_than: events older than twice this are not being pruned")
	cmd.Flags().StringVar(&maxLag, "max-lag", "16MB", "a standby's allowed replay lag (size or duration)")
	return cmd
}

func writeDoctor(w io.Writer, r *doctor.Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "server\tPostgreSQL %s (%s)\n", r.Server.Version, r.Server.Role)
	fmt.Fprintf(tw, "database\t%s, %s\n", r.Server.Database, humanize.IBytes(uint64(max(r.Server.DatabaseBytes, 0))))
	pss := "not preloaded"
	switch {
	case r.Statements.Created:
		pss = "preloaded, extension " + r.Statements.Version
	case r.Statements.Preloaded:
		pss = "preloaded, extension not created"
	}
	fmt.Fprintf(tw, "pg_stat_statements\t%s\n", pss)
	if r.SPIRE.Present {
		fmt.Fprintf(tw, "SPIRE schema\tversion %d, code_version %s (schema %q)\n", r.SPIRE.Version, orNone(r.SPIRE.CodeVersion), r.SPIRE.Schema.Schema)
		fmt.Fprintf(tw, "spire-server can start\t%s\n", r.SPIRE.Compatible.Servers)
		fmt.Fprintf(tw, "registration entries\t%s\n", humanize.Comma(r.SPIRE.Entries))
		fmt.Fprintf(tw, "agents\t%s\n", humanize.Comma(r.SPIRE.Agents))
		fmt.Fprintf(tw, "bundles\t%s\n", humanize.Comma(r.SPIRE.Bundles))
	} else if r.SPIRE.Unreadable {
		fmt.Fprintf(tw, "SPIRE schema\tnot readable by this role (see spire.read)\n")
	} else {
		fmt.Fprintf(tw, "SPIRE schema\tno SPIRE schema here\n")
	}
	if e := r.Events; e != nil {
		for _, t := range e.Tables {
			line := fmt.Sprintf("%s rows", humanize.Comma(t.Rows))
			if t.Oldest != nil {
				line += fmt.Sprintf(", oldest %s ago, ids %d-%d, %d missing", t.OldestAge.Round(time.Minute), t.MinID, t.MaxID, t.Gaps)
			}
			fmt.Fprintf(tw, "%s\t%s\n", t.Table, line)
		}
		line := fmt.Sprintf("an events-based cache start-up reads %s rows (entries, agents, events)", humanize.Comma(e.StartupRows))
		if e.ReloadShare >= 0 {
			line += fmt.Sprintf("; the default cache's full reload is %.0f%% of database time", 100*e.ReloadShare)
		}
		fmt.Fprintf(tw, "SPIRE cache\t%s\n", line)
	}
	if rep := r.Replication; rep != nil {
		fmt.Fprintf(tw, "replication	%d standbys (%d ready for SPIRE's reads), %d slots, %d lost\n", rep.Standbys, rep.Ready, rep.Slots, rep.Lost)
	}
	if ix := r.Indexes; ix != nil {
		fmt.Fprintf(tw, "indexes	%d INVALID, %d duplicate, %d of spiredb's set missing\n", ix.Invalid, ix.Duplicate, ix.SetMissing)
	}
	if b := r.Backups; b != nil {
		line := fmt.Sprintf("%d in %s", b.Count, b.Store)
		if b.Newest != nil {
			line += fmt.Sprintf("; newest %s ago (%s)", time.Since(*b.Newest).Round(time.Minute), humanize.IBytes(uint64(b.NewestBytes)))
		}
		if b.NewestVerified != nil {
			line += fmt.Sprintf("; newest verified %s ago", time.Since(*b.NewestVerified).Round(time.Minute))
		}
		fmt.Fprintf(tw, "backups\t%s\n", line)
	}
	if a := r.Archiving; a != nil {
		line := "off"
		if a.Enabled() {
			line = fmt.Sprintf("on (timeout %ds)", a.TimeoutSeconds)
			if a.LastArchivedTime != nil {
				line += fmt.Sprintf("; last %s %s ago", a.LastArchivedWAL, time.Since(*a.LastArchivedTime).Round(time.Second))
			}
			if a.Pending >= 0 {
				line += fmt.Sprintf("; %d waiting", a.Pending)
			}
			if a.Failing {
				line += "; FAILING"
			}
		}
		fmt.Fprintf(tw, "WAL archiving\t%s\n", line)
	}
	if p := r.PITR; p != nil && p.Bases > 0 {
		line := fmt.Sprintf("%d base backups", p.Bases)
		if p.NewestRestorable != nil {
			line += fmt.Sprintf("; restorable to %s (%s ago)", p.NewestRestorable.UTC().Format(time.RFC3339), time.Duration(p.RPOSeconds*float64(time.Second)).Round(time.Second))
		}
		fmt.Fprintf(tw, "point-in-time\t%s\n", line)
	}
	if p := r.Pooling; p != nil {
		mode := "session pooling or a proxy"
		if p.Transaction {
			mode = "transaction pooling"
		}
		fmt.Fprintf(tw, "connection	through a pooler (%s)\n", mode)
	}
	if p := r.Privileges; p != nil {
		if p.Superuser {
			fmt.Fprintf(tw, "privileges	role %s is a superuser: every module can run\n", p.Role)
		} else {
			missing := 0
			for _, m := range p.Modules {
				if len(m.Missing) > 0 {
					missing++
				}
			}
			fmt.Fprintf(tw, "privileges	role %s: %d of %d modules can run\n", p.Role, len(p.Modules)-missing, len(p.Modules))
			for _, m := range p.Modules {
				if len(m.Missing) > 0 {
					fmt.Fprintf(tw, "  %s	missing %s: %s\n", m.Name, strings.Join(m.Missing, ", "), m.Fix)
				}
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Findings) == 0 {
		_, err := fmt.Fprintln(w, "\nno findings")
		return err
	}
	fmt.Fprintln(w, "\nfindings:")
	writeFindings(w, r.Findings)
	return nil
}

// writeFindings prints findings, each with the fix it names.
func writeFindings(w io.Writer, fs []doctor.Finding) {
	for _, f := range fs {
		fmt.Fprintf(w, "  [%s] %s: %s\n", f.Severity, f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
}

// worstExit ends a checking command by its worst finding: 1 for an error,
// 4 for warnings only.
func worstExit(worst doctor.Severity) error {
	switch worst {
	case doctor.Error:
		return silentExit(exitFailure)
	case doctor.Warning:
		return silentExit(exitWarning)
	}
	return nil
}
