package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
)

func newSpireCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "spire",
		Short: "Checks that know spire-server: its datastore configuration",
	}
	cmd.AddCommand(newSpireCheckConfigCmd(g), newSpireUpgradeCheckCmd(g))
	return cmd
}

func newSpireUpgradeCheckCmd(g *globals) *cobra.Command {
	sf := &storeFlags{g: g}
	var to, spireServer, scratchDSN, trustDomain, backupID, tempDir string
	var maxBackupAge, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "upgrade-check --to VERSION",
		Short: "Check that the datastore can move to a spire-server release, and rehearse it",
		Long: `upgrade-check checks the datastore at --dsn before its spire-servers move to
release --to:

  - SPIRE's version rule: within one minor version of the datastore's
    migrations.code_version (the release that last ran on it); a larger step
    is an error with the supported path, release by release;
  - views on SPIRE's tables (spiredb's materialized views, or anyone's): a
    migration that alters a column they read fails;
  - with --store: a verified backup newer than --max-backup-age, since
    SPIRE does not migrate back;
  - with --spire-server PATH (the --to release's binary; --store needed):
    the newest verified backup (or --backup-id) is restored into a scratch
    database (--scratch-dsn, default --dsn; the role needs CREATEDB), the
    binary starts on it as the upgrade would (it migrates at start-up), and
    the report gives the time until it was healthy, the schema version
    before and after, and the relation locks its sessions took (sampled
    every millisecond). The scratch database is dropped; the live datastore is
    only read.

Exit 0, 4 (warnings) or 1 (errors).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return usageErrorf("--to VERSION is required (e.g. --to 1.14.0)")
			}
			v, err := spire.ParseVersion(to)
			if err != nil {
				return usageErrorf("--to: %w", err)
			}
			o := doctor.UpgradeOptions{Conn: g.pgOptions(), To: v, MaxBackupAge: maxBackupAge}
			if sf.url != "" || os.Getenv("SPIREDB_STORE") != "" {
				if o.Store, err = sf.open(cmd); err != nil {
					return err
				}
			}
			if spireServer != "" {
				if o.Store == nil {
					return usageErrorf("--spire-server rehearses on a restored backup: give --store")
				}
				out, err := exec.CommandContext(cmd.Context(), spireServer, "--version").CombinedOutput()
				if err != nil {
					return usageErrorf("--spire-server %s: %v", spireServer, err)
				}
				if got, err := spire.ParseVersion(strings.TrimSpace(string(out))); err != nil || got != v {
					return usageErrorf("--spire-server %s is release %s, not --to %s", spireServer, strings.TrimSpace(string(out)), v)
				}
				keys, err := sf.keys.keys()
				if err != nil {
					return err
				}
				scratch := g.pgOptions()
				if scratchDSN != "" {
					scratch.DSN = scratchDSN
				}
				o.Rehearse = backup.RehearseOptions{Store: o.Store, ID: backupID, Scratch: scratch, SpireServer: spireServer,
					TrustDomain: trustDomain, Timeout: timeout, TempDir: tempDir, Tools: sf.tools(), Keys: keys, Logger: g.logger}
			}
			r, err := doctor.CheckUpgrade(cmd.Context(), o)
			if err != nil {
				return err
			}
			if err := g.out.print(r, func(w io.Writer) error { return writeUpgradeCheck(w, r) }); err != nil {
				return err
			}
			return worstExit(r.Worst)
		},
	}
	sf.register(cmd.Flags(), true)
	sf.keys.registerIdentities(cmd.Flags())
	cmd.Flags().StringVar(&to, "to", "", "the spire-server release to move to (e.g. 1.14.0)")
	cmd.Flags().DurationVar(&maxBackupAge, "max-backup-age", 24*time.Hour, "--store: the newest verified backup may be this old")
	cmd.Flags().StringVar(&spireServer, "spire-server", "", "the --to release's spire-server binary: rehearse its start-up migration on a scratch restore")
	cmd.Flags().StringVar(&scratchDSN, "scratch-dsn", "", "server for the rehearsal's scratch database (default: --dsn); the role needs CREATEDB")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the rehearsal server's trust domain (default: the one most entries are in)")
	cmd.Flags().StringVar(&backupID, "backup-id", "", "the backup to rehearse on (default: the newest verified)")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "how long the rehearsal server may take to become healthy")
	cmd.Flags().StringVar(&tempDir, "temp-dir", "", "directory for the rehearsal's download and server files (default: $TMPDIR)")
	return cmd
}

func writeUpgradeCheck(w io.Writer, r *doctor.UpgradeReport) error {
	fmt.Fprintf(w, "datastore: SPIRE schema %d, code_version %s; moving to %s\n", r.Schema.Version, orNone(r.Schema.CodeVersion), r.Step.To)
	if b := r.Backup; b != nil {
		fmt.Fprintf(w, "newest verified backup: %s (%s ago)\n", b.ID, time.Since(b.Finished).Round(time.Minute))
	}
	if reh := r.Rehearsal; reh != nil {
		fmt.Fprintf(w, "rehearsal: spire-server %s on backup %s: healthy after %s, schema %d → %d, code_version %s → %s\n",
			reh.ServerVersion, reh.ID, reh.Duration.Round(time.Millisecond), reh.Before.Version, reh.After.Version, orNone(reh.Before.CodeVersion), orNone(reh.After.CodeVersion))
		for _, l := range reh.Locks {
			fmt.Fprintf(w, "  lock %-22s %s\n", l.Mode, l.Relation)
		}
	}
	if len(r.Findings) == 0 {
		_, err := fmt.Fprintln(w, "no findings")
		return err
	}
	writeFindings(w, r.Findings)
	return nil
}

func newSpireCheckConfigCmd(g *globals) *cobra.Command {
	var servers int
	var connect, expandEnv bool
	var maxLag string
	cmd := &cobra.Command{
		Use:   "check-config SERVER.CONF",
		Short: "Check a spire-server configuration's sql DataStore against SPIRE and PostgreSQL",
		Long: `check-config reads a spire-server configuration (HCL, parsed with the library
spire-server uses) and checks its DataStore "sql" plugin_data:

  - only the keys SPIRE 1.13 knows (it ignores any other without a word);
  - connection_string and ro_connection_string as lib/pq, SPIRE's driver,
    reads them: parameters it would send to PostgreSQL as settings that
    PostgreSQL refuses (pgxpool's pool_max_conns, libpq's
    target_session_attrs, ...), several hosts, sslmode values lib/pq does not
    support (prefer, allow), sslmode=disable across the network; lib/pq's
    default sslmode is require;
  - max_open_conns (default 100) × --servers against max_connections;
  - disable_migration when several servers share the datastore.

With --connect it connects with the file's own connection strings, as SPIRE
would: connection_string must reach a primary, ro_connection_string a
streaming standby of that same cluster within --max-lag, and every run-time
parameter must be a setting the server knows. Passwords in the file are
never printed.

Exit 0 when nothing is wrong, 4 with warnings only, 1 with errors, 2 when the
file cannot be read or is not a spire-server configuration with a sql
DataStore.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if servers < 1 {
				return usageErrorf("invalid --servers %d: want 1 or more", servers)
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return usageErrorf("reading the configuration: %w", err)
			}
			if expandEnv {
				data = []byte(os.ExpandEnv(string(data)))
			}
			o := doctor.SPIREConfigOptions{Servers: servers, Connect: connect, Base: g.pgOptions()}
			if maxLag != "" {
				l, err := replication.ParseLimit(maxLag)
				if err != nil {
					return usageErrorf("--max-lag: %w", err)
				}
				o.MaxLag = l
			}
			r, err := doctor.CheckSPIREConfig(cmd.Context(), data, o)
			var se *doctor.ConfigSyntaxError
			if errors.As(err, &se) {
				return usageErrorf("%s: %w", args[0], err)
			}
			if err != nil {
				return err
			}
			if err := g.out.print(r, func(w io.Writer) error { return writeSpireConfig(w, args[0], r) }); err != nil {
				return err
			}
			return worstExit(r.Worst)
		},
	}
	cmd.Flags().IntVar(&servers, "servers", 1, "spire-servers sharing the datastore with this configuration")
	cmd.Flags().BoolVar(&connect, "connect", false, "connect with the file's connection strings (primary, standby, max_connections)")
	cmd.Flags().BoolVar(&expandEnv, "expand-env", false, "expand $VARIABLES in the file first, as spire-server -expandEnv does")
	cmd.Flags().StringVar(&maxLag, "max-lag", "16MB", "--connect: the standby's allowed replay lag (size or duration)")
	return cmd
}

func writeSpireConfig(w io.Writer, file string, r *doctor.SPIREConfigReport) error {
	fmt.Fprintf(w, "%s: DataStore \"sql\", database_type %s, max_open_conns %d × %d servers", file, orNone(r.DatabaseType), r.MaxOpenConns, r.Servers)
	if r.MaxConnections > 0 {
		fmt.Fprintf(w, " (max_connections %d, %d for ordinary roles)", r.MaxConnections, r.Available)
	}
	fmt.Fprintln(w)
	if len(r.Findings) == 0 {
		_, err := fmt.Fprintln(w, "no findings")
		return err
	}
	writeFindings(w, r.Findings)
	return nil
}
