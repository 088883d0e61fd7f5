package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
)

// storeFlags are shared by every backup command.
type storeFlags struct {
	g *globals // its logger, for the S3 SDK's messages
	// restoreCommand overrides the restore_command of PITR restores
	restoreCommand string
	// keys: recipients and identities of the commands that take them
	keys        keyFlags
	url         string
	s3Endpoint  string
	s3Region    string
	s3PathStyle bool
	sse         string
	sseKMSKeyID string
	pgBin       string
}

// register adds the store flags (and --pg-bin, for commands that run
// pg_dump or pg_restore).
func (f *storeFlags) register(fs *pflag.FlagSet, pgBin bool) {
	fs.StringVar(&f.url, "store", "", "backup store: s3://bucket/prefix or file:///dir (default $SPIREDB_STORE)")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint URL (default: AWS, or $AWS_ENDPOINT_URL_S3)")
	fs.StringVar(&f.s3Region, "s3-region", "", "S3 region (default: from the AWS configuration, else us-east-1)")
	fs.BoolVar(&f.s3PathStyle, "s3-path-style", false, "address the bucket as a path (MinIO, versitygw, …; default $SPIREDB_S3_PATH_STYLE)")
	fs.StringVar(&f.sse, "sse", "", "server-side encryption: AES256 or aws:kms")
	fs.StringVar(&f.sseKMSKeyID, "sse-kms-key-id", "", "KMS key for --sse aws:kms")
	if pgBin {
		fs.StringVar(&f.pgBin, "pg-bin", "", "directory of pg_dump and pg_restore (default: $PATH)")
	}
}

// envPathStyle reads SPIREDB_S3_PATH_STYLE: S3-compatible servers that
// need path-style addressing, for what takes no flags (the schedule's
// state collection; a Pod's environment for every command). The AWS SDK
// reads no such setting of its own.
func envPathStyle() (bool, error) {
	v := os.Getenv("SPIREDB_S3_PATH_STYLE")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, usageErrorf("SPIREDB_S3_PATH_STYLE=%q: want true or false", v)
	}
	return b, nil
}

func (f *storeFlags) open(cmd *cobra.Command) (backup.Store, error) {
	u := f.url
	if u == "" {
		u = os.Getenv("SPIREDB_STORE")
	}
	if u == "" {
		return nil, usageErrorf("no store: pass --store s3://bucket/prefix or file:///dir (or set SPIREDB_STORE)")
	}
	pathStyle, err := envPathStyle()
	if err != nil {
		return nil, err
	}
	s, err := backup.OpenStore(cmd.Context(), u, backup.StoreOptions{
		S3Endpoint: f.s3Endpoint, S3Region: f.s3Region, S3PathStyle: f.s3PathStyle || pathStyle, SSE: f.sse, SSEKMSKeyID: f.sseKMSKeyID,
		Logger: f.logger(),
	})
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	return s, nil
}

// fetchCommand is the restore_command that reaches this store with the
// same flags: this executable's wal fetch, every argument shell-quoted.
// Credentials are not in it: PostgreSQL runs it with spiredb's
// environment (the AWS credential chain).
func (f *storeFlags) fetchCommand() (string, error) {
	if f.restoreCommand != "" {
		if !strings.Contains(f.restoreCommand, "%f") || !strings.Contains(f.restoreCommand, "%p") {
			return "", usageErrorf("--restore-command must contain %%f and %%p")
		}
		return f.restoreCommand, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding spiredb's executable for restore_command: %w", err)
	}
	u := f.url
	if u == "" {
		u = os.Getenv("SPIREDB_STORE")
	}
	args := []string{exe, "wal", "fetch", "%f", "%p", "--store", u}
	if f.s3Endpoint != "" {
		args = append(args, "--s3-endpoint", f.s3Endpoint)
	}
	if f.s3Region != "" {
		args = append(args, "--s3-region", f.s3Region)
	}
	// the server that runs it may not have spiredb's environment (a
	// --prepare-only directory started by the operator)
	pathStyle, err := envPathStyle()
	if err != nil {
		return "", err
	}
	if f.s3PathStyle || pathStyle {
		args = append(args, "--s3-path-style")
	}
	args = append(args, f.keys.fetchArgs()...)
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " "), nil
}

// shellQuote quotes s for /bin/sh, leaving plain words (and %f, %p) bare.
func shellQuote(s string) string {
	plain := s != ""
	for _, r := range s {
		word := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:%=@+,", r)
		if !word {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (f *storeFlags) logger() *slog.Logger {
	if f.g == nil {
		return nil
	}
	return f.g.logger
}

func (f *storeFlags) tools() backup.Tools { return backup.Tools{BinDir: f.pgBin} }

func newBackupCmd(g *globals) *cobra.Command {
	f := &storeFlags{g: g}
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up, list, verify, restore and prune SPIRE datastore backups",
		Long: `Logical backups of the SPIRE datastore: pg_dump's custom format streamed to S3 or
a local directory with no temporary file, a manifest written after the data
(a backup without one does not exist), verification by a real restore,
restore, and restic-style retention.

Stores: s3://bucket/prefix (AWS default credential chain; --s3-endpoint or
AWS_ENDPOINT_URL_S3 for S3-compatible servers) or file:///dir.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	f.register(cmd.PersistentFlags(), true)
	cmd.AddCommand(newBackupRunCmd(g, f), newBackupListCmd(g, f), newBackupVerifyCmd(g, f), newBackupRestoreCmd(g, f), newBackupPruneCmd(g, f), newBackupRekeyCmd(g, f), newBackupDiffCmd(g, f))
	return cmd
}

func newBackupRunCmd(g *globals, f *storeFlags) *cobra.Command {
	var compress string
	var label, checkpoint, maxRate string
	var physical bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Stream a pg_dump of the database into the store",
		Long: `run streams pg_dump -Fc into the store (no temporary file; memory bounded by
the upload part size), then writes the manifest: ids, times, versions, SPIRE's
schema version and the row count of every SPIRE table taken in the snapshot
pg_dump dumps, codec, size and sha256.

By default pg_dump writes its archive uncompressed and spiredb compresses the
stream with zstd on two cores (--compress zstd): faster and smaller than
pg_dump's single-threaded gzip. --compress 0-9 keeps pg_dump's own gzip at that
level (-1: its default), as every backup before zstd was; restore and verify
read both.

With --physical it takes a base backup for point-in-time recovery instead:
pg_basebackup's tar stream compressed with zstd into the store (no local
copy), start and stop LSN, timeline and SPIRE's rows in the manifest. The WAL
comes from the archive (archive_command = 'spiredb wal push %p --store ...'):
the manifest is written only once the store holds the WAL from the base's
start to its stop segment, so a base the archive cannot complete never
counts.

With --recipient (an age public key, or a file of them; repeatable) the data
object is encrypted on this machine before it is uploaded: a random key per
backup encrypts it (age), and the manifest holds that key wrapped to the
recipients. restore and verify need an --identity that opens it; backup rekey
rewraps the key to new recipients by rewriting manifests only.

When another backup of the same kind of the same database is running (two
CronJob pods), it says so and exits 0 without writing anything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			boundStreamMemory()
			codec, level, err := parseCompress(compress)
			if err != nil {
				return err
			}
			if checkpoint != "fast" && checkpoint != "spread" {
				return usageErrorf("invalid --checkpoint %q: want fast or spread", checkpoint)
			}
			if physical && cmd.Flags().Changed("compress") {
				return usageErrorf("--compress is for logical backups: a --physical base is always zstd-compressed")
			}
			if !physical && (cmd.Flags().Changed("checkpoint") || maxRate != "") {
				return usageErrorf("--checkpoint and --max-rate go with --physical")
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			progress, endProgress := progressReporter(g, "backup")
			var m *backup.Manifest
			if physical {
				m, err = backup.RunPhysical(cmd.Context(), backup.PhysicalOptions{Conn: g.pgOptions(), Store: s, Label: label,
					SpreadCheckpoint: checkpoint == "spread", MaxRate: maxRate, Keys: keys, Tools: f.tools(), Logger: g.logger, Progress: progress})
			} else {
				m, err = backup.Run(cmd.Context(), backup.RunOptions{Conn: g.pgOptions(), Store: s, Codec: codec, Compress: level,
					Label: label, Keys: keys, Tools: f.tools(), Logger: g.logger, Progress: progress})
			}
			endProgress()
			if errors.Is(err, backup.ErrBackupRunning) {
				g.logger.Info(err.Error() + "; nothing written")
				return g.out.print(map[string]any{"skipped": true, "reason": err.Error()}, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, err.Error()+"; nothing written")
					return err
				})
			}
			if err != nil {
				return err
			}
			return g.out.print(m, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "backup %s: %s in %s, sha256 %s\n", m.ID, humanize.IBytes(uint64(m.Size)),
					m.FinishedAt.Sub(m.StartedAt).Round(10*time.Millisecond), m.SHA256)
				if err == nil && m.Physical != nil {
					_, err = fmt.Fprintf(w, "base backup on timeline %d from %s to %s (WAL %s to %s): restorable from %s on\n",
						m.Physical.Timeline, m.Physical.StartLSN, m.Physical.StopLSN, m.Physical.StartWAL, m.Physical.StopWAL,
						m.FinishedAt.Format(time.RFC3339))
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&physical, "physical", false, "a base backup for point-in-time recovery (pg_basebackup; needs WAL archiving with wal push)")
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "fast", "--physical: fast (an immediate checkpoint) or spread (wait for the next one; gentler)")
	cmd.Flags().StringVar(&maxRate, "max-rate", "", "--physical: throttle the transfer (pg_basebackup --max-rate, e.g. 50M)")
	cmd.Flags().StringVar(&compress, "compress", "zstd", "zstd (pg_dump uncompressed, zstd on two cores), or pg_dump's own gzip level 0-9 (-1: its default)")
	cmd.Flags().StringVar(&label, "label", "", "free text stored in the manifest")
	f.keys.registerRecipients(cmd.Flags())
	return cmd
}

func newBackupListCmd(g *globals, f *storeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List complete backups, oldest first, with their last verification",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			if err := s.Check(cmd.Context()); err != nil {
				return err
			}
			inv, err := backup.Inspect(cmd.Context(), s)
			if err != nil {
				return err
			}
			inv.Warn(g.logger)
			ms := inv.Backups
			if ms == nil {
				ms = []backup.Manifest{}
			}
			return g.out.print(ms, func(w io.Writer) error {
				if len(ms) == 0 {
					_, err := fmt.Fprintf(w, "no backups in %s\n", s)
					return err
				}
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tKIND\tSTARTED\tSIZE\tDURATION\tSPIRE\tENTRIES\tENCRYPTED\tVERIFIED\tLABEL")
				for _, m := range ms {
					sp := "-"
					if m.SPIRE != nil {
						sp = fmt.Sprintf("v%d", m.SPIRE.SchemaVersion)
					}
					enc := "-"
					if m.Encryption != nil {
						enc = "age"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", m.ID, m.KindName(), m.StartedAt.Format(time.RFC3339),
						humanize.IBytes(uint64(m.Size)), m.FinishedAt.Sub(m.StartedAt).Round(10*time.Millisecond),
						sp, m.RowCounts["registered_entries"], enc, verifiedText(m.Verification), m.Label)
				}
				return tw.Flush()
			})
		},
	}
}

func verifiedText(v *backup.VerifyResult) string {
	if v == nil {
		return "never"
	}
	state := "ok"
	if !v.OK {
		state = "FAILED"
		if c := v.Failed(); c != nil {
			state += " (" + c.Name + ")"
		}
	}
	return fmt.Sprintf("%s %s %s", state, v.Level, v.Time.Format("2006-01-02T15:04Z"))
}

func newBackupVerifyCmd(g *globals, f *storeFlags) *cobra.Command {
	var id, level, scratchDSN, tempDir string
	var latest bool
	var jobs int
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify a backup: checksum, table of contents, or a real restore (default)",
		Long: `verify checks a backup at one of three levels, each including the previous:
  checksum  stream the stored object; compare size and sha256 with the manifest
  toc       also read its table of contents with pg_restore --list
  restore   also restore it into a new scratch database (on --scratch-dsn, default
            the --dsn server), compare SPIRE's schema version and every table's row
            count with the manifest, run amcheck's bt_index_check when available,
            and drop the scratch database
  pitr      for a --physical base: the checksum, then WAL continuity from the
            base's start to the newest archived segment (a gap fails), then
            the base and all WAL restored into a scratch data directory under
            --temp-dir and recovered to the archive's end by a private
            postgres (Unix socket only, no archiving), amcheck, SPIRE's rows

--latest picks the newest backup of the kind the level needs (logical for toc
and restore, physical for pitr).

With --jobs N > 1 (default 2) the restore level downloads the dump to a
temporary file, checks it, and restores with pg_restore -j N; --jobs 1 streams
with no temporary file.

The result is stored next to the manifest and shown by list. Exit 1 when a
check fails; the message names the check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch level {
			case backup.LevelChecksum, backup.LevelTOC, backup.LevelRestore, backup.LevelPITR:
			default:
				return usageErrorf("invalid --level %q: want checksum, toc, restore or pitr", level)
			}
			if latest == (id != "") {
				return usageErrorf("name a backup with --id ID or --latest (one of them)")
			}
			if jobs < 1 {
				return usageErrorf("invalid --jobs %d: want 1 or more", jobs)
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			scratch := g.pgOptions()
			if scratchDSN != "" {
				scratch.DSN = scratchDSN
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			fetch := ""
			if level == backup.LevelPITR {
				if fetch, err = f.fetchCommand(); err != nil {
					return err
				}
			}
			res, err := backup.Verify(cmd.Context(), backup.VerifyOptions{Store: s, ID: id, Latest: latest, Level: level,
				Scratch: scratch, Jobs: jobs, TempDir: tempDir, Tools: f.tools(), Keys: keys, FetchCommand: fetch, Logger: g.logger})
			if err != nil {
				return err
			}
			if err := g.out.print(res, func(w io.Writer) error { return writeVerify(w, res) }); err != nil {
				return err
			}
			if !res.OK {
				c := res.Failed()
				return &exitError{code: exitFailure, err: fmt.Errorf("backup %s failed verification: %s: %s", res.ID, c.Name, c.Detail)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "backup ID (see backup list)")
	cmd.Flags().BoolVar(&latest, "latest", false, "the newest backup (in a store shared by several databases, the newest of any, with a warning)")
	cmd.Flags().StringVar(&level, "level", backup.LevelRestore, "checksum, toc, restore or pitr")
	cmd.Flags().StringVar(&scratchDSN, "scratch-dsn", "", "server for the scratch database (default: --dsn); the role needs CREATEDB")
	cmd.Flags().IntVar(&jobs, "jobs", 2, "parallel restore and amcheck sessions (1: stream, no temporary file)")
	cmd.Flags().StringVar(&tempDir, "temp-dir", "", "directory for the --jobs download and the pitr scratch data directory (default: $TMPDIR)")
	cmd.Flags().StringVar(&f.restoreCommand, "restore-command", "", "pitr: the restore_command (default: this spiredb's wal fetch %f %p with the store flags)")
	f.keys.registerIdentities(cmd.Flags())
	return cmd
}

func writeVerify(w io.Writer, r *backup.VerifyResult) error {
	state := "OK"
	if !r.OK {
		state = "FAILED"
	}
	fmt.Fprintf(w, "backup %s: %s (level %s, %s)\n", r.ID, state, r.Level, r.Duration.Round(10*time.Millisecond))
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-12s %s\n", mark, c.Name, c.Detail)
	}
	return nil
}

func newBackupRestoreCmd(g *globals, f *storeFlags) *cobra.Command {
	var id, targetDSN, tempDir, toTime, toLSN, dataDir, scratchDSN string
	var latest, clean, physical, prepareOnly, plan, acceptLoss, allowSessions bool
	var jobs int
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Restore a backup into a database",
		Long: `restore loads a backup into --target-dsn. Connect as the role SPIRE uses:
objects are created owned by the connecting role. A target that already has
tables is refused unless --clean, which asks on a terminal and needs --yes
elsewhere.

A --clean target that is a SPIRE datastore is first compared with the backup
(restored into a scratch database on --scratch-dsn, default --target-dsn;
see backup diff): entries created, changed or deleted since, agents attested,
renewed or banned since, bundles, CA journals and join tokens. The plan is
printed, and when the target changed since the backup the restore is refused
(exit 1) unless --accept-loss. --plan prints the plan and writes nothing.
A --clean target that other sessions are connected to is refused too (exit
1, naming them; spiredb's own sessions do not count): a spire-server that
stays connected keeps its entry cache and events cursor from before the
restore, and what it writes meanwhile is lost. Stop the spire-servers first,
or pass --allow-sessions.

With --jobs 1 (default) the dump streams into one pg_restore in a single
transaction, and the end of the stream is held back until the checksum is
verified, so a corrupted object leaves the target unchanged. With --jobs N > 1
the dump is first downloaded to a temporary file (pg_restore cannot run
parallel from a pipe) and checked before the parallel restore starts.

Afterwards it prints the SPIRE schema version found and which spire-server
releases can start on it.

With --physical it is a point-in-time restore into a new data directory:
  --to-time T   the state at T (RFC 3339, e.g. 2026-12-02T04:05:06.5Z)
  --to-lsn L    the state at WAL position L (e.g. 0/3000148)
  --latest      the end of the archive
It picks the newest base backup whose window holds the target (or --id), and
refuses a target outside every window, printing them. It unpacks the base into
--data-dir (absent or empty), then recovers it with a private postgres of the
base's major (Unix socket only, no archiving, restore_command = spiredb wal
fetch with this store's flags), ends recovery at the target on a new timeline
and shuts down cleanly: start your server on the directory. With --prepare-only
it leaves recovery.signal and the recovery settings in postgresql.auto.conf for
your server to do the recovery when it starts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if physical {
				if plan || acceptLoss || scratchDSN != "" {
					return usageErrorf("--plan, --accept-loss and --scratch-dsn go with a logical restore (a point-in-time restore writes a new data directory and replaces nothing)")
				}
				return runPhysicalRestore(cmd, g, f, id, latest, toTime, toLSN, dataDir, prepareOnly)
			}
			if toTime != "" || toLSN != "" || dataDir != "" || prepareOnly {
				return usageErrorf("--to-time, --to-lsn, --data-dir and --prepare-only go with --physical")
			}
			if latest == (id != "") {
				return usageErrorf("name a backup with --id ID or --latest (one of them)")
			}
			if targetDSN == "" {
				return usageErrorf("--target-dsn is required")
			}
			if allowSessions && !clean {
				return usageErrorf("--allow-sessions goes with --clean")
			}
			if plan && (clean || acceptLoss) {
				return usageErrorf("--plan writes nothing: leave out --clean and --accept-loss")
			}
			if jobs < 1 {
				return usageErrorf("invalid --jobs %d: want 1 or more", jobs)
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			target := g.pgOptions()
			target.DSN = targetDSN
			if clean {
				if err := g.confirm(cmd, "restore --clean into "+g.target(target)+": its objects that the backup also has are dropped first"); err != nil {
					return err
				}
			}
			var scratch *pg.Options
			if scratchDSN != "" {
				o := g.pgOptions()
				o.DSN = scratchDSN
				scratch = &o
			}
			res, err := backup.Restore(cmd.Context(), backup.RestoreOptions{Store: s, ID: id, Latest: latest, Target: target,
				Clean: clean, AcceptLoss: acceptLoss, AllowSessions: allowSessions, Plan: plan, Scratch: scratch, Jobs: jobs, TempDir: tempDir, Keys: keys,
				Tools: f.tools(), Logger: g.logger})
			var loss *backup.LossError
			var connected *backup.ConnectedError
			if errors.As(err, &connected) {
				return &exitError{code: exitFailure, err: err}
			}
			if errors.As(err, &loss) {
				// the plan first: it is what the operator must read
				if perr := g.out.print(res, func(w io.Writer) error { return writeDiff(w, loss.Plan, "target") }); perr != nil {
					return perr
				}
				return &exitError{code: exitFailure, err: err}
			}
			if err != nil {
				return err
			}
			if res.Planned {
				return g.out.print(res, func(w io.Writer) error {
					if res.Plan == nil {
						fmt.Fprintf(w, "target %s holds no SPIRE datastore: a restore replaces no SPIRE data\n", res.Database)
						return nil
					}
					return writeDiff(w, res.Plan, "target")
				})
			}
			return g.out.print(res, func(w io.Writer) error {
				if res.Plan != nil && res.Plan.Findings > 0 {
					if err := writeDiff(w, res.Plan, "target"); err != nil {
						return err
					}
				}
				fmt.Fprintf(w, "restored %s into %s in %s (jobs %d)\n", res.ID, res.Database, res.Duration.Round(10*time.Millisecond), res.Jobs)
				if len(res.SkippedExtensions) > 0 {
					fmt.Fprintf(w, "left out %s: this role cannot create it (monitoring only, no SPIRE data); a superuser can CREATE EXTENSION it later\n",
						strings.Join(res.SkippedExtensions, ", "))
				}
				if res.SPIRE.Present {
					fmt.Fprintf(w, "SPIRE schema version %d, code_version %s: %d registration entries\n",
						res.SPIRE.Version, orNone(res.SPIRE.CodeVersion), res.RowCounts["registered_entries"])
					fmt.Fprintf(w, "spire-server releases that can start on it: %s\n", res.Compatible.Servers)
					if res.Compatible.Note != "" {
						fmt.Fprintf(w, "  (%s)\n", res.Compatible.Note)
					}
					fmt.Fprintln(w, "remember: the server's CA keys are not in the database; restore the KeyManager's keys too")
				} else {
					fmt.Fprintln(w, "no SPIRE schema in this backup")
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "backup ID (see backup list)")
	cmd.Flags().BoolVar(&latest, "latest", false, "the newest backup (refused when the store holds backups of more than one database: name one with --id)")
	cmd.Flags().StringVar(&targetDSN, "target-dsn", "", "database to restore into (required for a logical backup)")
	cmd.Flags().BoolVar(&physical, "physical", false, "point-in-time restore of a base backup and the archived WAL into --data-dir")
	cmd.Flags().StringVar(&toTime, "to-time", "", "--physical: restore to this time (RFC 3339)")
	cmd.Flags().StringVar(&toLSN, "to-lsn", "", "--physical: restore to this WAL position")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "--physical: the new data directory (absent or empty)")
	cmd.Flags().BoolVar(&prepareOnly, "prepare-only", false, "--physical: write the base and recovery settings; your server recovers when it starts")
	cmd.Flags().StringVar(&f.restoreCommand, "restore-command", "", "--physical: the restore_command (default: this spiredb's wal fetch %f %p with the store flags; set it with --prepare-only when the server's spiredb is elsewhere)")
	cmd.Flags().BoolVar(&clean, "clean", false, "drop the target's conflicting objects first (asks, or --yes)")
	cmd.Flags().BoolVar(&allowSessions, "allow-sessions", false, "--clean: restore although other sessions are connected to the target (running spire-servers keep their caches)")
	cmd.Flags().BoolVar(&plan, "plan", false, "compare the backup with the target SPIRE datastore and print what a restore would lose; write nothing")
	cmd.Flags().BoolVar(&acceptLoss, "accept-loss", false, "restore over a SPIRE datastore that changed since the backup (see --plan)")
	cmd.Flags().StringVar(&scratchDSN, "scratch-dsn", "", "server for the comparison's scratch database (default: --target-dsn); the role needs CREATEDB")
	addYes(cmd)
	cmd.Flags().IntVar(&jobs, "jobs", 1, "parallel restore jobs (N > 1 downloads to a temporary file first)")
	cmd.Flags().StringVar(&tempDir, "temp-dir", "", "directory for the --jobs download (default: $TMPDIR)")
	f.keys.registerIdentities(cmd.Flags())
	return cmd
}

func newBackupRekeyCmd(g *globals, f *storeFlags) *cobra.Command {
	var id string
	var all bool
	cmd := &cobra.Command{
		Use:   "rekey",
		Short: "Rewrap encrypted backups' data keys to new recipients (rewrites manifests only)",
		Long: `rekey rotates the recipients of encrypted backups: it opens each backup's data
key with --identity and wraps it to the --recipient keys (the new set: keys
left out can no longer open these backups), rewriting only the manifests.
The dumps and bases are neither read nor written. Every key is opened before
the first manifest is written, so an identity that opens only some of them
changes nothing.

Archived WAL (wal push --recipient) is encrypted to the recipients it was
pushed with: keep the old identity until retention has removed those
segments (they are needed only back to the oldest kept base).

The store comes only from --store (never $SPIREDB_STORE); on a terminal
spiredb asks, elsewhere it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all == (id != "") {
				return usageErrorf("name a backup with --id ID or --all (one of them)")
			}
			keys, err := f.keys.keys()
			if err != nil {
				return err
			}
			if len(keys.Recipients) == 0 {
				return usageErrorf("rekey needs the new recipients: --recipient")
			}
			if len(keys.Identities) == 0 {
				return usageErrorf("rekey needs an identity that opens the backups: --identity")
			}
			if err := explicit(cmd, "store"); err != nil {
				return err
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			which := "backup " + id
			if all {
				which = "every encrypted backup"
			}
			if err := g.confirm(cmd, fmt.Sprintf("rekey %s in %s to %d recipient(s): keys left out can no longer open them", which, s.String(), len(keys.Recipients))); err != nil {
				return err
			}
			res, err := backup.Rekey(cmd.Context(), s, id, all, keys, g.logger)
			if err != nil {
				return err
			}
			return g.out.print(res, func(w io.Writer) error {
				noun := "backups"
				if len(res.Rekeyed) == 1 {
					noun = "backup"
				}
				fmt.Fprintf(w, "rekeyed %d %s to %s\n", len(res.Rekeyed), noun, strings.Join(res.Recipients, ", "))
				if len(res.Unencrypted) > 0 {
					fmt.Fprintf(w, "not encrypted, left as they are: %s\n", strings.Join(res.Unencrypted, ", "))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "backup ID (see backup list)")
	cmd.Flags().BoolVar(&all, "all", false, "every encrypted backup in the store")
	addYes(cmd)
	f.keys.registerRecipients(cmd.Flags())
	f.keys.registerIdentities(cmd.Flags())
	return cmd
}

func newBackupPruneCmd(g *globals, f *storeFlags) *cobra.Command {
	var p backup.Policy
	var within string
	var dryRun bool
	var staleAfter time.Duration
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete backups that no retention rule keeps; clean up after failed runs",
		Long: `prune keeps the union of what each rule keeps (restic-style), and never deletes
the newest backup nor the newest successfully verified one. It refuses an
empty policy. It also removes leftovers of failed runs (data without a
manifest) and aborts incomplete uploads, once older than --stale-after.

  --keep-last N      the N newest
  --keep-within D    everything within D of the newest backup (30d, 12h, 2w, 6m, 1y)
  --keep-daily N     the newest of each of the N most recent days with a backup (UTC)
  --keep-weekly N    likewise per ISO week
  --keep-monthly N   likewise per month

The rules apply to each source apart: logical and physical backups, and
the backups of each database and cluster (system identifier), so that
another deployment's backups in the same store never push this one's out.

It deletes only what it can prove spiredb wrote: dump, manifest.json and
verify.json inside a directory named like a backup ID whose manifest names that
directory. Copied or unreadable backups, unknown files and every other name
are reported and left alone. Without --dry-run the store comes only from
--store (never $SPIREDB_STORE), and off a terminal it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if within != "" {
				span, err := backup.ParseSpan(within)
				if err != nil {
					return usageErrorf("--keep-within: %w", err)
				}
				p.KeepWithin = span
			}
			if err := p.Validate(); err != nil {
				return usageErrorf("%w", err)
			}
			s, err := f.open(cmd)
			if err != nil {
				return err
			}
			if staleAfter < 0 {
				return usageErrorf("invalid --stale-after %s: want 0 or more", staleAfter)
			}
			if staleAfter == 0 {
				staleAfter = -1 // the library's "any age"
			}
			if !dryRun {
				if err := explicit(cmd, "store"); err != nil {
					return err
				}
				if err := g.confirm(cmd, "prune "+s.String()+": delete the backups no rule keeps and spiredb's stale leftovers"); err != nil {
					return err
				}
			}
			res, err := backup.Prune(cmd.Context(), backup.PruneOptions{Store: s, Policy: p, DryRun: dryRun, StaleAfter: staleAfter, Logger: g.logger})
			if err != nil {
				return err
			}
			return g.out.print(res, func(w io.Writer) error { return writePrune(w, res) })
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&p.KeepLast, "keep-last", 0, "keep the N newest backups")
	fl.StringVar(&within, "keep-within", "", "keep backups within this span of the newest (e.g. 30d, 2w, 6m, 1y)")
	fl.IntVar(&p.KeepDaily, "keep-daily", 0, "keep the newest backup of each of the last N days")
	fl.IntVar(&p.KeepWeekly, "keep-weekly", 0, "keep the newest backup of each of the last N weeks")
	fl.IntVar(&p.KeepMonthly, "keep-monthly", 0, "keep the newest backup of each of the last N months")
	fl.BoolVar(&dryRun, "dry-run", false, "print what would be kept and deleted, delete nothing")
	addYes(cmd)
	fl.DurationVar(&staleAfter, "stale-after", 24*time.Hour, "age after which leftovers and incomplete uploads are removed (0s: any age; only when no backup is running)")
	return cmd
}

func writePrune(w io.Writer, r *backup.PruneResult) error {
	verb := "deleted"
	if r.DryRun {
		verb = "would delete"
	}
	// a store shared by several databases: say which each backup is of
	// (the policy applies to each apart)
	sources := map[string]bool{}
	for _, d := range r.Decisions {
		sources[d.Source] = true
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, d := range r.Decisions {
		action := "keep"
		if !d.Keep {
			action = verb
		}
		of := ""
		if len(sources) > 1 {
			of = "\t" + d.Source
		}
		fmt.Fprintf(tw, "%s\t%s\t%s%s\t%s\n", action, d.ID, d.StartedAt.Format(time.RFC3339), of, strings.Join(d.Reasons, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, id := range r.Leftovers {
		fmt.Fprintf(w, "%s leftover of a failed run: %s\n", verb, id)
	}
	for _, k := range r.Aborted {
		fmt.Fprintf(w, "aborted incomplete upload: %s\n", k)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "left alone: %s\n", p)
	}
	if len(r.Foreign) > 0 {
		fmt.Fprintf(w, "left alone: %d name(s) that are not spiredb backups (%s)\n", len(r.Foreign), clip(strings.Join(r.Foreign, " "), 120))
	}
	_, err := fmt.Fprintf(w, "%d kept, %d %s\n", len(r.Decisions)-len(r.Deleted), len(r.Deleted), verb)
	return err
}

// progressReporter shows bytes, rate and elapsed time: a live line on a
// terminal, a log line every 10 seconds otherwise. Call end when done.
func progressReporter(g *globals, what string) (progress backup.Progress, end func()) {
	var lastLog time.Time
	bar := newBar(g, what, -1, true)
	end = func() {
		if bar != nil {
			_ = bar.Finish()
			g.status.End()
		}
	}
	return func(done int64, elapsed time.Duration) {
		if bar != nil {
			_ = bar.Set64(done)
			return
		}
		rate := float64(done) / max(elapsed.Seconds(), 0.001)
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			g.logger.Info(what+" progress", "bytes", done, "rate_bytes_per_s", int64(rate), "elapsed", elapsed.Round(time.Second).String())
		}
	}, end
}

func runPhysicalRestore(cmd *cobra.Command, g *globals, f *storeFlags, id string, latest bool, toTime, toLSN, dataDir string, prepareOnly bool) error {
	var t backup.Target
	t.Latest = latest
	if toTime != "" {
		v, err := parseTime(toTime)
		if err != nil {
			return usageErrorf("invalid --to-time %q: want RFC 3339, e.g. 2026-12-02T04:05:06Z", toTime)
		}
		t.Time = v
	}
	if toLSN != "" {
		v, err := backup.ParseLSN(toLSN)
		if err != nil {
			return usageErrorf("invalid --to-lsn: %w", err)
		}
		t.LSN = v
	}
	n := 0
	for _, set := range []bool{t.Latest, toTime != "", toLSN != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return usageErrorf("--physical needs one target: --to-time T, --to-lsn L or --latest")
	}
	if dataDir == "" {
		return usageErrorf("--physical needs --data-dir DIR (a new or empty directory)")
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return usageErrorf("invalid --data-dir: %w", err)
	}
	keys, err := f.keys.keys()
	if err != nil {
		return err
	}
	s, err := f.open(cmd)
	if err != nil {
		return err
	}
	fetch, err := f.fetchCommand()
	if err != nil {
		return err
	}
	res, err := backup.RestorePhysical(cmd.Context(), backup.PhysicalRestoreOptions{Store: s, ID: id, Target: t, DataDir: abs,
		FetchCommand: fetch, PrepareOnly: prepareOnly, Keys: keys, Tools: f.tools(), Logger: g.logger})
	var ow *backup.OutsideWindowError
	if errors.As(err, &ow) {
		return &exitError{code: exitFailure, err: err}
	}
	if err != nil {
		return err
	}
	return g.out.print(res, func(w io.Writer) error {
		if res.Prepared {
			fmt.Fprintf(w, "base %s unpacked into %s with recovery settings to %s: start PostgreSQL on it to recover\n", res.BaseID, res.DataDir, res.Target)
			return nil
		}
		reached := "no transaction replayed after the base"
		if res.ReachedTime != nil {
			reached = "last transaction committed at " + res.ReachedTime.Format(time.RFC3339Nano)
		}
		fmt.Fprintf(w, "restored base %s to %s in %s: WAL position %s, %s; new timeline %d\n", res.BaseID, res.Target,
			res.Duration.Round(10*time.Millisecond), res.ReachedLSN, reached, res.Timeline)
		if res.EndOfArchive {
			fmt.Fprintln(w, "no transaction after the target was archived: the end of the archive is the state at the target")
		}
		fmt.Fprintf(w, "the directory is shut down cleanly; start PostgreSQL on %s\n", res.DataDir)
		fmt.Fprintln(w, "archive_mode is off there (postgresql.auto.conf), so that the copy never archives into this store; once it is the primary: ALTER SYSTEM RESET archive_mode, and restart")
		return nil
	})
}

// parseTime reads RFC 3339 and PostgreSQL's "2006-01-02 15:04:05+00" form.
func parseTime(s string) (time.Time, error) {
	var firstErr error
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07"} {
		t, err := time.Parse(layout, s)
		if err == nil {
			return t, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return time.Time{}, firstErr
}

// parseCompress reads --compress: "zstd", or pg_dump's level -1..9.
func parseCompress(v string) (codec string, level int, err error) {
	if v == "zstd" {
		return backup.CodecZstd, -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 || n > 9 {
		return "", 0, usageErrorf("invalid --compress %q: want zstd, or pg_dump's level 0-9 (-1: its default)", v)
	}
	return backup.CodecPgDump, n, nil
}

// streamMemoryLimit is the Go runtime's soft memory limit for the commands
// that stream a database or WAL into the store (backup run, wal push): with
// it the collector runs before the heap doubles, which keeps a CronJob
// pod's peak RSS about 6 MiB lower (docs/BENCHMARKS.md). It is soft: no
// allocation fails, and the runtime caps the collector's CPU. GOMEMLIMIT,
// when set, wins. The reading side (verify, restore, wal fetch) is left
// alone: its time is what matters there.
const streamMemoryLimit = 40 << 20

func boundStreamMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(streamMemoryLimit)
	}
}
