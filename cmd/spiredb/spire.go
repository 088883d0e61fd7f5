package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/replication"
)

func newSpireCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "spire",
		Short: "Checks that know spire-server: its datastore configuration",
	}
	cmd.AddCommand(newSpireCheckConfigCmd(g))
	return cmd
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
			switch r.Worst {
			case doctor.Error:
				return silentExit(exitFailure)
			case doctor.Warning:
				return silentExit(exitWarning)
			}
			return nil
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
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  [%s] %s: %s\n", f.Severity, f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
	return nil
}
