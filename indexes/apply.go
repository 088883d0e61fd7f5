package indexes

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// ApplyOptions select and shape an apply.
type ApplyOptions struct {
	// Only limits apply to these set indexes (by name); empty is all.
	Only []string
	// DryRun returns the SQL without running it.
	DryRun bool
	// Retry governs retries on lock timeouts: a concurrent build waits for
	// every transaction that could use the table, and lock_timeout bounds
	// each wait.
	Retry  pg.RetryPolicy
	Logger *slog.Logger
}

// Action is what apply did (or, dry, would do) for one set index.
type Action struct {
	Name     string        `json:"name"`
	Table    string        `json:"table"`
	Action   string        `json:"action"` // created, rebuilt, present, skipped, would create, would rebuild
	Reason   string        `json:"reason,omitempty"`
	SQL      []string      `json:"sql,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
}

// UnknownIndexError names an --only index that is not in the set.
type UnknownIndexError struct{ Name string }

func (e *UnknownIndexError) Error() string {
	names := make([]string, len(spireSet))
	for i, ix := range spireSet {
		names[i] = ix.Name
	}
	return fmt.Sprintf("no index %q in spiredb's SPIRE index set (%v)", e.Name, names)
}

// Apply builds the set's missing indexes with CREATE INDEX CONCURRENTLY, one
// at a time and outside any transaction, so SPIRE keeps reading and writing.
// An INVALID index left by an earlier failed or cancelled build, or an
// index of a set name with another definition, is dropped concurrently and
// rebuilt. A build that fails leaves no INVALID index behind. Apply is
// idempotent: present indexes are left alone.
func Apply(ctx context.Context, conn *pgx.Conn, opts ApplyOptions) ([]Action, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	plan, err := MakePlan(ctx, conn)
	if err != nil {
		return nil, err
	}
	var actions []Action
	for _, p := range plan.Indexes {
		if len(opts.Only) > 0 && !slices.Contains(opts.Only, p.Name) {
			continue
		}
		a := Action{Name: p.Name, Table: p.Table}
		switch {
		case !p.Applicable:
			a.Action, a.Reason = "skipped", fmt.Sprintf("verified for SPIRE schema versions %d-%d, this database has %d", p.SchemaVersions[0], p.SchemaVersions[1], plan.SchemaVersion)
		case p.State == Present:
			a.Action = "present"
		case p.State == Building:
			a.Action, a.Reason = "skipped", "another CREATE INDEX CONCURRENTLY of it is running"
		default:
			if p.State == Invalid || p.State == Different {
				a.SQL = append(a.SQL, p.DropSQL(plan.Schema))
				a.Reason = string(p.State)
			}
			a.SQL = append(a.SQL, p.CreateSQL(plan.Schema))
			rebuild := p.State != Missing
			if opts.DryRun {
				a.Action = "would create"
				if rebuild {
					a.Action = "would rebuild"
				}
				break
			}
			start := time.Now()
			logger.Info("building index", "index", p.Name, "table", p.Table, "state", string(p.State))
			if err := build(ctx, conn, plan.Schema, p.Index, rebuild, opts.Retry, logger); err != nil {
				return actions, fmt.Errorf("index %s: %w", p.Name, err)
			}
			a.Duration = time.Since(start)
			a.Action = "created"
			if rebuild {
				a.Action = "rebuilt"
			}
			logger.Info("index built", "index", p.Name, "duration", a.Duration.Round(time.Millisecond))
		}
		actions = append(actions, a)
	}
	return actions, nil
}

// build (re)creates one index, retrying on lock timeouts; after any failed
// attempt it drops the INVALID index the failed build leaves.
func build(ctx context.Context, conn *pgx.Conn, schema string, ix Index, drop bool, policy pg.RetryPolicy, logger *slog.Logger) error {
	if policy.OnRetry == nil {
		policy.OnRetry = func(attempt int, wait time.Duration, err error) {
			logger.Warn("index build waited too long for a lock; retrying", "index", ix.Name, "attempt", attempt, "wait", wait, "err", err)
		}
	}
	return pg.Retry(ctx, policy, func(ctx context.Context) error {
		if drop {
			if _, err := conn.Exec(ctx, pg.Marker+ix.DropSQL(schema)); err != nil {
				return fmt.Errorf("dropping the old index: %w", err)
			}
		}
		_, err := conn.Exec(ctx, pg.Marker+ix.CreateSQL(schema))
		if err == nil {
			return nil
		}
		// a failed concurrent build leaves an INVALID index: drop it so a
		// retry (or the next apply) starts clean
		drop = true
		if cleanupErr := dropInvalid(context.WithoutCancel(ctx), conn, schema, ix); cleanupErr != nil {
			// the drop waits for the same transactions: leave it to the
			// next apply, which drops INVALID set indexes first
			return fmt.Errorf("%w (the build left an INVALID index that could not be dropped now: %s; the next apply drops and rebuilds it)", err, cleanupErr.Error())
		}
		return err
	})
}

func dropInvalid(ctx context.Context, conn *pgx.Conn, schema string, ix Index) error {
	var invalid *bool
	err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT NOT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = pg_catalog.to_regclass($1))",
		pgx.Identifier{schema, ix.Name}.Sanitize()).Scan(&invalid)
	if err != nil || invalid == nil || !*invalid {
		return err
	}
	_, err = conn.Exec(ctx, pg.Marker+ix.DropSQL(schema))
	return err
}
