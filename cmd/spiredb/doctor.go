package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/doctor"
)

func newDoctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the SPIRE datastore and its PostgreSQL server",
		Long: `doctor connects to the database and reports the server version, whether it is
a primary or a standby, the database size, whether pg_stat_statements is usable,
and SPIRE's schema (migrations.version and code_version) with the number of
registration entries, agents and bundles. Each problem found comes with the
command or setting that fixes it.

Exit code: 0 healthy, 4 warnings only, 1 an error finding, 3 unreachable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := doctor.Run(cmd.Context(), g.pgOptions())
			if err != nil {
				return err
			}
			if err := g.out.print(r, func(w io.Writer) error { return writeDoctor(w, r) }); err != nil {
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
	} else {
		fmt.Fprintf(tw, "SPIRE schema\tno SPIRE schema here\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Findings) == 0 {
		_, err := fmt.Fprintln(w, "\nno findings")
		return err
	}
	fmt.Fprintln(w, "\nfindings:")
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  [%s] %s: %s\n", f.Severity, f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
	return nil
}
