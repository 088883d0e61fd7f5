package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/migrations"
)

type runnerFlags struct {
	source   string
	lockWait time.Duration
	table    string
}

func (rf *runnerFlags) open(cmd *cobra.Command, g *globals) (*migrations.Runner, error) {
	o := migrations.Options{Source: rf.source, Table: rf.table, LockWait: rf.lockWait, LockTimeout: g.lockTimeout, Logger: g.logger}
	if err := o.Validate(); err != nil {
		return nil, usageErrorf("%w", err)
	}
	r, err := migrations.Open(cmd.Context(), g.pgOptions(), o)
	var ve *migrations.VersionTableError
	if err != nil && (strings.HasPrefix(err.Error(), "--source") || errors.As(err, &ve)) {
		return nil, usageErrorf("%w", err)
	}
	return r, err
}

// with runs fn over an open runner, closed afterwards.
func (rf *runnerFlags) with(cmd *cobra.Command, g *globals, fn func(r *migrations.Runner) error) error {
	r, err := rf.open(cmd, g)
	if err != nil {
		return err
	}
	defer r.Close(context.WithoutCancel(cmd.Context()))
	return fn(r)
}

func printApplied(g *globals, done []migrations.Applied, err error) error {
	if done == nil {
		done = []migrations.Applied{}
	}
	if perr := g.out.print(done, func(w io.Writer) error {
		if len(done) == 0 && err == nil {
			_, err := fmt.Fprintln(w, "nothing to migrate")
			return err
		}
		for _, a := range done {
			fmt.Fprintf(w, "%s %d %s in %s\n", a.Direction, a.Version, a.Name, a.Duration.Round(time.Millisecond))
		}
		return nil
	}); perr != nil {
		return perr
	}
	return err
}

func newMigrateUpCmd(g *globals, rf *runnerFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "up [N]",
		Short: "Apply pending migrations (N: at most N)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := countArg(args, 0)
			if err != nil {
				return err
			}
			return rf.with(cmd, g, func(r *migrations.Runner) error {
				done, err := r.Up(cmd.Context(), n)
				return printApplied(g, done, err)
			})
		},
	}
}

func newMigrateDownCmd(g *globals, rf *runnerFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down [N] --dsn DSN",
		Short: "Revert the last N applied migrations (default 1)",
		Long: `Revert the last N applied migrations (default 1): their down files run,
dropping what their up files created. The target comes only from --dsn, never
from the environment; off a terminal, --yes confirms.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := countArg(args, 1)
			if err != nil {
				return err
			}
			if err := explicit(cmd, "dsn"); err != nil {
				return err
			}
			if err := g.confirm(cmd, fmt.Sprintf("revert the last %d migration(s) on %s: their down files drop what their up files created", n, g.target(g.pgOptions()))); err != nil {
				return err
			}
			return rf.with(cmd, g, func(r *migrations.Runner) error {
				done, err := r.Down(cmd.Context(), n)
				return printApplied(g, done, err)
			})
		},
	}
	addYes(cmd)
	return cmd
}

func countArg(args []string, def int) (int, error) {
	if len(args) == 0 {
		return def, nil
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return 0, usageErrorf("N must be a positive number, not %q", args[0])
	}
	return n, nil
}

func newMigrateStatusCmd(g *globals, rf *runnerFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Applied and pending versions, and any failed run with its statement and what to do (exit 1: a failure is recorded)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st *migrations.Status
			if err := rf.with(cmd, g, func(r *migrations.Runner) (err error) {
				st, err = r.GetStatus(cmd.Context())
				return err
			}); err != nil {
				return err
			}
			if err := g.out.print(st, func(w io.Writer) error {
				fmt.Fprintf(w, "%s: version %d", st.Table, st.Version)
				if st.Dirty {
					fmt.Fprint(w, " (dirty: set by another tool; check, then migrate force)")
				}
				fmt.Fprintf(w, "\napplied: %s\npending: %s\n", versions(st.Applied), versions(st.Pending))
				for _, f := range st.Failures {
					fmt.Fprintf(w, "\nFAILED %s %d at %s", f.Direction, f.Version, f.At.UTC().Format(time.DateTime))
					if f.Statement != nil {
						fmt.Fprintf(w, ", statement %d: %s", *f.Statement, clip(*f.SQL, 100))
					}
					fmt.Fprintf(w, "\n  error: %s\n  what to do: %s\n", f.Error, f.Advice)
				}
				return nil
			}); err != nil {
				return err
			}
			if len(st.Failures) > 0 || st.Dirty {
				return silentExit(exitFailure)
			}
			return nil
		},
	}
}

func versions(vs []int64) string {
	if len(vs) == 0 {
		return "none"
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = strconv.FormatInt(v, 10)
	}
	return strings.Join(parts, ", ")
}

func newMigrateForceCmd(g *globals, rf *runnerFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "force VERSION --dsn DSN",
		Short: "Set the version without running anything (-1: none), after fixing a database by hand",
		Long: `Set the version without running anything (-1: none), after fixing a database
by hand. Later runs trust it: a wrong VERSION skips or repeats migrations. The
target comes only from --dsn, never from the environment; off a terminal,
--yes confirms.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.Atoi(args[0])
			if err != nil || v < -1 {
				return usageErrorf("VERSION must be a migration version or -1, not %q", args[0])
			}
			if err := explicit(cmd, "dsn"); err != nil {
				return err
			}
			if err := g.confirm(cmd, fmt.Sprintf("set the migration version of %s to %d without running anything", g.target(g.pgOptions()), v)); err != nil {
				return err
			}
			return rf.with(cmd, g, func(r *migrations.Runner) error {
				if err := r.Force(cmd.Context(), v); err != nil {
					return err
				}
				g.logger.Info("version forced", "version", v)
				return nil
			})
		},
	}
	addYes(cmd)
	return cmd
}

var migrationName = regexp.MustCompile(`^[a-z0-9_]+$`)
var versionPrefix = regexp.MustCompile(`^(\d+)_`)

func newMigrateCreateCmd(g *globals) *cobra.Command {
	var dir string
	var noTx bool
	cmd := &cobra.Command{
		Use:   "create NAME --dir DIR",
		Short: "Create the next NNNN_NAME.up.sql and .down.sql in DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			name := args[0]
			if !migrationName.MatchString(name) {
				return usageErrorf("NAME must be lower-case letters, digits and underscores, not %q", name)
			}
			if dir == "" {
				return usageErrorf("give --dir DIR")
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			next := 1
			for _, e := range entries {
				if m := versionPrefix.FindStringSubmatch(e.Name()); m != nil {
					if v, err := strconv.Atoi(m[1]); err == nil && v >= next {
						next = v + 1
					}
				}
			}
			header := "-- " + name + "\n"
			if noTx {
				header = migrations.NoTransaction + "\n" + header
			}
			var made []string
			for _, dirn := range []string{"up", "down"} {
				p := filepath.Join(dir, fmt.Sprintf("%04d_%s.%s.sql", next, name, dirn))
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					return err
				}
				_, werr := f.WriteString(header)
				if err := errors.Join(werr, f.Close()); err != nil {
					return err
				}
				made = append(made, p)
			}
			return g.out.print(made, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, strings.Join(made, "\n"))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the migrations directory")
	cmd.Flags().BoolVar(&noTx, "no-transaction", false, "start the files with "+migrations.NoTransaction)
	return cmd
}
