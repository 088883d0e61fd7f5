package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/backup"
)

func newWALCmd(g *globals) *cobra.Command {
	f := &storeFlags{g: g}
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "Archive WAL into the backup store and restore it (archive_command, restore_command)",
		Long: `Continuous WAL archiving into the backup store, for point-in-time recovery with
backup run --physical and backup restore --physical.

  archive_command = 'spiredb wal push %p --store s3://bucket/prefix'
  restore_command = 'spiredb wal fetch %f %p --store s3://bucket/prefix'

Each file is stored as wal/NAME: a header with its sha256, size and
modification time, then the file compressed with zstd. Pushing a file the
store already holds with the same content succeeds (a retried
archive_command); a different content under the same name fails and nothing
is overwritten. fetch checks the sha256 before the file reaches PostgreSQL,
and downloads the following segments in parallel into pg_wal/.spiredb-prefetch.

With push --recipient (an age public key or a file of them) the compressed
file is encrypted to the recipients; fetch then needs --identity FILE (or
$SPIREDB_IDENTITY_FILE in the server's environment).

Exit codes follow PostgreSQL: 0 archived or restored; fetch exits 1 when the
store does not hold the file (PostgreSQL asks for such files as a matter of
course); any other failure is non-zero too, and logged.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	f.register(cmd.PersistentFlags(), false)
	cmd.AddCommand(newWALPushCmd(g, f), newWALFetchCmd(g, f), newWALListCmd(g, f))
	return cmd
}

func newWALPushCmd(g *globals, f *storeFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "push PATH",
		Short: "Archive one WAL file (archive_command's %p)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			boundStreamMemory()
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			res, err := backup.PushWAL(cmd.Context(), s, args[0], keys, g.logger)
			if err != nil {
				return err
			}
			if g.out.format == "json" {
				return g.out.print(res, nil)
			}
			return nil // archive_command's output goes to the server log: the log line says it
		},
	}
	f.keys.registerRecipients(cmd.Flags())
	return cmd
}

func newWALFetchCmd(g *globals, f *storeFlags) *cobra.Command {
	var prefetch int
	var spool string
	cmd := &cobra.Command{
		Use:   "fetch NAME PATH",
		Short: "Restore one archived WAL file (restore_command's %f %p)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if prefetch < 0 || prefetch > 64 {
				return usageErrorf("invalid --prefetch %d: want 0-64", prefetch)
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			if prefetch == 0 {
				prefetch = -1
			}
			err = backup.FetchWAL(cmd.Context(), backup.FetchOptions{Store: s, Name: args[0], Dest: args[1], Prefetch: prefetch, SpoolDir: spool, Keys: keys, Logger: g.logger})
			if errors.Is(err, backup.ErrNotFound) {
				// normal: the segment after the newest, the next timeline's history
				g.logger.Debug("not in the store", "name", args[0])
				return silentExit(exitFailure)
			}
			if errors.Is(err, backup.ErrNoIdentity) || errors.Is(err, backup.ErrWrongIdentity) {
				// the segment is there: any exit below 126 would tell
				// PostgreSQL it is missing and end the recovery early
				return &exitError{code: exitAbortRecovery, err: err}
			}
			return err
		},
	}
	cmd.Flags().IntVar(&prefetch, "prefetch", 8, "following segments to download in parallel (0: none)")
	cmd.Flags().StringVar(&spool, "spool-dir", "", "where prefetched segments wait (default: PATH's directory/.spiredb-prefetch)")
	f.keys.registerIdentities(cmd.Flags())
	return cmd
}

func newWALListCmd(g *globals, f *storeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the archived WAL files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			if err := s.Check(cmd.Context()); err != nil {
				return err
			}
			files, _, err := backup.ListWAL(cmd.Context(), s)
			if err != nil {
				return err
			}
			if files == nil {
				files = []backup.WALFile{}
			}
			return g.out.print(files, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSTORED\tARCHIVED")
				for _, f := range files {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, humanize.IBytes(uint64(f.Stored)), f.Modified.UTC().Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
}
