package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/backup"
)

func newBackupDiffCmd(g *globals, f *storeFlags) *cobra.Command {
	var id, scratchDSN, tempDir string
	var latest bool
	var jobs, sample int
	cmd := &cobra.Command{
		Use:   "diff",
		Short: "What a restore of a backup would lose or bring back, in SPIRE's terms",
		Long: `diff restores a backup into a scratch database (on --scratch-dsn, default
--dsn; the role needs CREATEDB; dropped afterwards) and compares it with the
live SPIRE datastore at --dsn, which is only read:

  registration entries   created since (a restore deletes them), changed
                         since (reverted), deleted since (come back)
  agents                 attested since (must re-attest), renewed since (their
                         current SVID is unknown to the backup: must
                         re-attest), banned since (a restore un-bans them),
                         evicted since (come back)
  bundles, CA journals   added, changed (reverted to older authorities) or
                         removed since
  join tokens            issued since (lost), used or deleted since and not
                         expired (usable again after a restore)
  federation             relationships added, changed or removed since

Rows are compared by SPIRE's keys (entry ID, agent SPIFFE ID, trust domain,
token) over the columns SPIRE reads, with their selectors, DNS names and
federation; a row SPIRE only touched (updated_at) is not a change. Both sides
stream in key order, so memory does not grow with the datastore.

Exit 0 whatever the differences (see "findings" in -o json); restore uses the
same comparison, see restore --plan.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if latest == (id != "") {
				return usageErrorf("name a backup with --id ID or --latest (one of them)")
			}
			if jobs < 1 {
				return usageErrorf("invalid --jobs %d: want 1 or more", jobs)
			}
			if sample < 0 {
				return usageErrorf("invalid --sample %d: want 0 or more", sample)
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			live := g.pgOptions()
			scratch := live
			if scratchDSN != "" {
				scratch.DSN = scratchDSN
			}
			if sample == 0 {
				sample = -1
			}
			res, err := backup.Diff(cmd.Context(), backup.DiffOptions{Store: s, ID: id, Latest: latest, Live: live, Scratch: scratch,
				Jobs: jobs, TempDir: tempDir, Tools: f.tools(), Keys: keys, Sample: sample, Logger: g.logger})
			if err != nil {
				return err
			}
			return g.out.print(res, func(w io.Writer) error { return writeDiff(w, res, "now") })
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "backup ID (see backup list)")
	cmd.Flags().BoolVar(&latest, "latest", false, "the newest backup (refused when the store holds backups of more than one database: name one with --id)")
	cmd.Flags().StringVar(&scratchDSN, "scratch-dsn", "", "server for the scratch database (default: --dsn); the role needs CREATEDB")
	cmd.Flags().IntVar(&jobs, "jobs", 2, "parallel restore jobs into the scratch database (1: stream, no temporary file)")
	cmd.Flags().StringVar(&tempDir, "temp-dir", "", "directory for the --jobs download (default: $TMPDIR)")
	cmd.Flags().IntVar(&sample, "sample", 10, "keys listed per change (0: counts only)")
	f.keys.registerIdentities(cmd.Flags())
	return cmd
}

// writeDiff prints a comparison: one line per kind of SPIRE object with
// its changes, then the sampled keys.
func writeDiff(w io.Writer, r *backup.DiffResult, target string) error {
	fmt.Fprintf(w, "backup %s (taken %s) against %s %s:\n", r.ID, r.TakenAt.Format(time.RFC3339), target, r.Database)
	if r.Findings == 0 {
		fmt.Fprintln(w, "  no differences: a restore of this backup loses nothing and brings nothing back")
	}
	for _, t := range r.Tables {
		var parts []string
		for _, c := range t.Changes {
			if c.Count > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", c.Count, c.Kind))
			}
		}
		if len(parts) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %-24s %s (backup %d, now %d)\n", t.What+":", strings.Join(parts, ", "), t.Then, t.Now)
		for _, c := range t.Changes {
			if c.Count == 0 {
				continue
			}
			fmt.Fprintf(w, "      %s: %s", c.Kind, c.Effect)
			if len(c.Sample) > 0 {
				more := ""
				if int64(len(c.Sample)) < c.Count {
					more = ", …"
				}
				fmt.Fprintf(w, " (%s%s)", strings.Join(c.Sample, ", "), more)
			}
			fmt.Fprintln(w)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	return nil
}
