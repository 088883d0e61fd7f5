package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/indexes/views"
	"github.com/spiredb/spiredb/pg"
)

func newViewsCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "views",
		Short: "Operator-facing materialized views over SPIRE's tables: create, refresh, status",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.PersistentFlags().StringVar(&name, "view", "", "one view (default: all)")
	selected := func() ([]views.View, error) {
		vs, err := views.Select(name)
		if err != nil {
			return nil, usageErrorf("--view: %w", err)
		}
		return vs, nil
	}
	// onViews runs fn over the --view selection and a session to the
	// database, closed afterwards.
	onViews := func(fn func(ctx context.Context, conn *pgx.Conn, vs []views.View) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			vs, err := selected()
			if err != nil {
				return err
			}
			return g.withConn(cmd.Context(), func(conn *pgx.Conn) error {
				if cmd.Name() != "status" {
					// REFRESH … CONCURRENTLY under a session advisory lock
					if err := pg.RequireSession(cmd.Context(), conn, g.pgOptions()); err != nil {
						return err
					}
				}
				return fn(cmd.Context(), conn, vs)
			})
		}
	}
	printResults := func(rs []views.Result) error {
		return g.out.print(rs, func(w io.Writer) error {
			for _, r := range rs {
				switch {
				case r.Skipped:
					fmt.Fprintf(w, "%s: refresh already running (another holds its lock); skipped\n", r.View)
				case r.Concurrently:
					fmt.Fprintf(w, "%s: refreshed concurrently in %s, %d rows\n", r.View, r.Duration.Round(time.Millisecond), r.Rows)
				default:
					fmt.Fprintf(w, "%s: populated in %s, %d rows\n", r.View, r.Duration.Round(time.Millisecond), r.Rows)
				}
			}
			return nil
		})
	}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create the views (schema spiredb) with their unique index and populate them",
		Args:  cobra.NoArgs,
		RunE: onViews(func(ctx context.Context, conn *pgx.Conn, vs []views.View) error {
			rs, err := views.Create(ctx, conn, vs)
			if err != nil {
				return err
			}
			return printResults(rs)
		}),
	}
	refresh := &cobra.Command{
		Use:   "refresh",
		Short: "Refresh CONCURRENTLY; skip (exit 0) when another refresh of the view is running",
		Args:  cobra.NoArgs,
		RunE: onViews(func(ctx context.Context, conn *pgx.Conn, vs []views.View) error {
			var rs []views.Result
			for _, v := range vs {
				r, err := views.Refresh(ctx, conn, v)
				if errors.Is(err, views.ErrNotCreated) {
					return usageErrorf("%w", err)
				}
				if err != nil {
					return err
				}
				rs = append(rs, r)
			}
			return printResults(rs)
		}),
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Last refresh, its duration, and SPIRE entry changes since",
		Args:  cobra.NoArgs,
		RunE: onViews(func(ctx context.Context, conn *pgx.Conn, vs []views.View) error {
			st, err := views.GetStatus(ctx, conn, vs)
			if err != nil {
				return err
			}
			return g.out.print(st, func(w io.Writer) error {
				for _, s := range st {
					switch {
					case !s.Exists:
						fmt.Fprintf(w, "%s: not created (spiredb views create)\n", s.View)
					case s.RefreshedAt == nil:
						fmt.Fprintf(w, "%s: never refreshed\n", s.View)
					default:
						fmt.Fprintf(w, "%s: %d rows, refreshed %s ago (%s, took %.0f ms); %d entry changes since\n", s.View, s.Rows,
							s.Age.Round(time.Second), s.RefreshedAt.UTC().Format(time.DateTime), s.DurationMs, s.ChangesSince)
					}
				}
				return nil
			})
		}),
	}
	cmd.AddCommand(create, refresh, status)
	return cmd
}
