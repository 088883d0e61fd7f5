package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/logging"
	"github.com/spiredb/spiredb/pg"
)

// globals are the flags every command shares.
type globals struct {
	dsn              string
	output           string
	logLevel         string
	logFormat        string
	lockTimeout      time.Duration
	statementTimeout time.Duration

	stdout, stderr io.Writer
	status         *statusWriter // stderr when it is a terminal, else nil
	logger         *slog.Logger
	out            *printer
}

// pgOptions returns the connection options: --dsn, else $SPIREDB_DSN, else
// libpq's PG* variables (pgx reads them when the DSN is empty).
func (g *globals) pgOptions() pg.Options {
	d := g.dsn
	if d == "" {
		d = os.Getenv("SPIREDB_DSN")
	}
	return pg.Options{DSN: d, LockTimeout: g.lockTimeout, StatementTimeout: g.statementTimeout}
}

// target names a connection target for a confirmation, without secrets.
func (g *globals) target(o pg.Options) string {
	cfg, err := pg.ParseConfig(o)
	if err != nil {
		return "the database"
	}
	return pg.Describe(cfg)
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "spiredb",
		Short: "Run SPIRE's PostgreSQL datastore in production",
		Long: `spiredb is the operator's toolkit for the PostgreSQL database behind SPIRE:
health checks, migrations, indexes, tuning, replication and backups.

Connection: --dsn, else $SPIREDB_DSN, else libpq's PG* environment variables
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ...). Passwords never appear
in spiredb's output or logs.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// secrets the environment carries are masked in every output,
			// whatever path they take to it
			dsn.Remember(os.Getenv("PGPASSWORD"), os.Getenv("AWS_SECRET_ACCESS_KEY"), os.Getenv("AWS_SESSION_TOKEN"))
			dsn.RememberDSN(g.pgOptions().DSN)
			if err := finiteFlags(cmd); err != nil {
				return err
			}
			if g.statementTimeout < 0 {
				return usageErrorf("invalid --statement-timeout %s: want 0 (the server's) or more", g.statementTimeout)
			}
			logw := stderr
			if g.status = newStatusWriter(stderr); g.status != nil {
				logw = g.status
			}
			logger, err := logging.New(logw, g.logLevel, g.logFormat)
			if err != nil {
				return usageErrorf("%w", err)
			}
			g.logger = logger
			if g.out, err = newPrinter(g.output, stdout); err != nil {
				return err
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErrorf("%w", err) })
	pf := root.PersistentFlags()
	pf.StringVar(&g.dsn, "dsn", "", "PostgreSQL connection string (URL or key=value); default $SPIREDB_DSN, then PG* variables")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json (tune recommend also: conf, sql)")
	pf.StringVar(&g.logLevel, "log-level", envOr("SPIREDB_LOG_LEVEL", "info"), "log level: debug, info, warn or error (default $SPIREDB_LOG_LEVEL, else info)")
	pf.StringVar(&g.logFormat, "log-format", envOr("SPIREDB_LOG_FORMAT", "text"), "log format: text or json, to stderr (default $SPIREDB_LOG_FORMAT, else text)")
	pf.DurationVar(&g.lockTimeout, "lock-timeout", pg.DefaultLockTimeout, "lock_timeout of spiredb's sessions, migrations and backfill batches (unless set in the DSN; -1s: leave the server's setting)")
	pf.String("push-gateway", os.Getenv("SPIREDB_PUSH_GATEWAY"), "after the command, push its spiredb_job_* metrics to this Prometheus Pushgateway (for CronJobs; default $SPIREDB_PUSH_GATEWAY)")
	pf.DurationVar(&g.statementTimeout, "statement-timeout", 0, "statement_timeout of spiredb's sessions (0: the server's)")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(newVersionCmd(g), newDoctorCmd(g), newBackupCmd(g), newReplicaCmd(g), newStatsCmd(g), newTuneCmd(g), newIndexesCmd(g), newViewsCmd(g), newMigrateCmd(g), newScheduleCmd(g), newWALCmd(g), newSpireCmd(g))
	return root
}

// run executes the CLI and returns the process exit code. Every error is
// printed as one line, with secrets masked.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	start := time.Now()
	cmd, err := root.ExecuteContextC(ctx)
	code := exitOK
	if err != nil {
		var ee *exitError
		switch {
		case errors.As(err, &ee) && ee.err == nil:
			code = ee.code
		default:
			code = exitCodeOf(err)
			if code == exitFailure && isCobraUsage(err) {
				code = exitUsage
			}
			fmt.Fprintln(stderr, "spiredb: "+oneLine(dsn.RedactText(err.Error())))
		}
	}
	if gw, _ := root.PersistentFlags().GetString("push-gateway"); gw != "" && cmd != nil && cmd != root && code != exitUsage {
		if perr := pushRun(ctx, gw, cmd, code, time.Since(start)); perr != nil {
			fmt.Fprintln(stderr, "spiredb: pushing metrics: "+oneLine(dsn.RedactText(perr.Error())))
		}
	}
	return code
}

// isCobraUsage recognises cobra's own argument errors (unknown command,
// wrong number of args), which it does not type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// groupRunE makes a command group fail on an unknown subcommand (cobra
// prints help and exits 0 otherwise) and print its help when called bare.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}

// withConn opens a session on the command's database (--dsn), runs fn with
// it and closes it.
func (g *globals) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	return pg.WithConn(ctx, g.pgOptions(), fn)
}

// finiteFlags refuses NaN and Inf in any float flag: every range check
// (x < 0 || x > 10) lets NaN through.
func finiteFlags(cmd *cobra.Command) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if err != nil || f.Value.Type() != "float64" {
			return
		}
		if v, perr := strconv.ParseFloat(f.Value.String(), 64); perr == nil && (math.IsNaN(v) || math.IsInf(v, 0)) {
			err = usageErrorf("invalid --%s %s: want a finite number", f.Name, f.Value)
		}
	})
	return err
}
