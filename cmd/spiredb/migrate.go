package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/migrations/lint"
	"github.com/spiredb/spiredb/pg"
)

func newMigrateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Migrations for a live SPIRE database: runner, batched backfills, safety linter",
		Long: `migrate applies spiredb's own migrations (embedded; its spiredb schema and
bookkeeping tables) or, with --source, an operator's directory of
golang-migrate files (NNNN_name.up.sql / .down.sql), on a database SPIRE keeps
writing to. Each migration runs in one transaction under lock_timeout, retried
on lock timeouts; a failure rolls back and leaves the version as it was:
never dirty. A file whose first line is "-- spiredb:no-transaction" runs
statement by statement outside a transaction (CREATE INDEX CONCURRENTLY).
SPIRE's own tables are SPIRE's to migrate: spiredb never touches its
migrations table.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	rf := &runnerFlags{}
	cmd.PersistentFlags().StringVar(&rf.source, "source", "", "an operator's migrations directory (file://DIR or DIR); default: spiredb's own")
	cmd.PersistentFlags().DurationVar(&rf.lockWait, "lock-wait", 30*time.Second, "how long to wait for another run's migration lock")
	cmd.PersistentFlags().StringVar(&rf.table, "version-table", "", "version table in the spiredb schema (default schema_migrations; operator_migrations with --source)")
	cmd.AddCommand(newMigrateUpCmd(g, rf), newMigrateDownCmd(g, rf), newMigrateStatusCmd(g, rf), newMigrateForceCmd(g, rf),
		newMigrateCreateCmd(g), newMigrateBackfillCmd(g), newMigrateLintCmd(g))
	return cmd
}

func newMigrateLintCmd(g *globals) *cobra.Command {
	var (
		pgVersion     int
		spireVersion  string
		failOn        string
		runnerTimeout bool
		useCatalog    bool
	)
	cmd := &cobra.Command{
		Use:   "lint [FILE|DIR ...]",
		Short: "Find what would lock, rewrite or break a live SPIRE database, with the safe rewrite",
		Long: `lint parses migrations with PostgreSQL's own parser (pg_query) and reports
statements that take strong locks, rewrite tables, fail in a transaction,
batch inside one transaction, or do not fit SPIRE's schema — each with a safe
rewrite. A directory means its *.sql files; - reads standard input. With
--dsn, tables, columns and indexes are resolved against the database and lock
findings weighed by table size.

Silence one rule on one statement with a comment on the line before it:
  -- spiredb:ignore RULE reason

Exit: 0 clean, 1 findings at or above --fail-on, 2 usage or parse error.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("give migration files or directories (or - for standard input)")
			}
			if pgVersion < 13 || pgVersion > 18 {
				return usageErrorf("--pg-version must be 13 to 18")
			}
			if spireVersion != "1.13" {
				return usageErrorf("--spire-version: spiredb knows SPIRE 1.13's schema (the one a real spire-server 1.13.3 created)")
			}
			if lint.SeverityRank(failOn) < lint.SeverityRank(lint.Warning) {
				return usageErrorf("--fail-on must be error or warning")
			}
			files, err := readMigrations(args, cmd.InOrStdin())
			if err != nil {
				return usageErrorf("%w", err)
			}
			opts := lint.Options{PGVersion: pgVersion, RunnerSetsLockTimeout: runnerTimeout}
			if useCatalog || g.dsn != "" || os.Getenv("SPIREDB_DSN") != "" {
				conn, err := pg.Connect(cmd.Context(), g.pgOptions())
				if err != nil {
					return err
				}
				defer conn.Close(cmd.Context())
				if opts.Catalog, err = lint.LoadCatalog(cmd.Context(), conn); err != nil {
					return err
				}
			}
			findings, err := lint.Lint(files, opts)
			var pe *lint.ParseError
			if errors.As(err, &pe) {
				return usageErrorf("parse error in %w", err)
			}
			if err != nil {
				return err
			}
			if findings == nil {
				findings = []lint.Finding{}
			}
			if err := g.out.print(findings, func(w io.Writer) error { return printFindings(w, findings) }); err != nil {
				return err
			}
			for _, f := range findings {
				if lint.SeverityRank(f.Severity) >= lint.SeverityRank(failOn) {
					return silentExit(exitFailure)
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&pgVersion, "pg-version", 15, "target PostgreSQL major version (13-18)")
	fl.StringVar(&spireVersion, "spire-version", "1.13", "SPIRE version whose schema the migrations run beside")
	fl.StringVar(&failOn, "fail-on", lint.Error, "exit 1 on findings of this severity or worse: error or warning")
	fl.BoolVar(&runnerTimeout, "runner-lock-timeout", true, "the files run through spiredb's runner, which sets lock_timeout (false: they must SET it themselves)")
	fl.BoolVar(&useCatalog, "catalog", false, "resolve against the database of --dsn / $SPIREDB_DSN / PG* (implied by --dsn)")
	return cmd
}

func printFindings(w io.Writer, findings []lint.Finding) error {
	for _, f := range findings {
		fmt.Fprintf(w, "%s:%d:%d %s %s %s\n", f.File, f.Line, f.Column, f.Severity, f.Rule, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "    fix: %s\n", f.Fix)
		}
	}
	return nil
}

// readMigrations reads files, the *.sql files of directories (sorted), or
// standard input for "-".
func readMigrations(args []string, stdin io.Reader) ([]lint.File, error) {
	var files []lint.File
	for _, a := range args {
		if a == "-" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, err
			}
			files = append(files, lint.File{Name: "<stdin>", SQL: string(b)})
			continue
		}
		fi, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		paths := []string{a}
		if fi.IsDir() {
			paths, err = filepath.Glob(filepath.Join(a, "*.sql"))
			if err != nil {
				return nil, err
			}
			if len(paths) == 0 {
				return nil, fmt.Errorf("%s: no *.sql files", a)
			}
			sort.Strings(paths)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			if !strings.HasSuffix(p, ".sql") && fi.IsDir() {
				continue
			}
			files = append(files, lint.File{Name: p, SQL: string(b)})
		}
	}
	return files, nil
}
