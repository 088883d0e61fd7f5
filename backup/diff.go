package backup

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// DiffOptions configure Diff.
type DiffOptions struct {
	Store  Store
	ID     string
	Latest bool
	// Live is the SPIRE datastore the backup is compared with.
	Live pg.Options
	// Scratch is the server the backup is restored on for the comparison
	// (any database there; the role needs CREATEDB).
	Scratch pg.Options
	Jobs    int
	TempDir string
	Tools   Tools
	Keys    Keys
	// Sample is how many keys each change lists (default 10).
	Sample int
	Logger *slog.Logger
}

// DiffResult is what a restore of the backup over the live datastore would
// change, in SPIRE's terms.
type DiffResult struct {
	ID       string    `json:"id"`
	TakenAt  time.Time `json:"taken_at"`
	Database string    `json:"database"`
	*spire.DatastoreDiff
}

// LossError refuses a restore over a live SPIRE datastore that changed
// since the backup, without AcceptLoss.
type LossError struct {
	Database string
	Plan     *DiffResult
}

func (e *LossError) Error() string {
	return fmt.Sprintf("target %s is a live SPIRE datastore with %d changes since backup %s (see the plan above, or restore --plan): pass --accept-loss to restore over them",
		e.Database, e.Plan.Findings, e.Plan.ID)
}

// Diff restores the backup into a scratch database and compares it with the
// live SPIRE datastore: entries, agents, bundles, CA journals, join tokens
// and federation relationships created, changed or deleted since. The live
// database is only read.
func Diff(ctx context.Context, o DiffOptions) (*DiffResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m, err := openLogical(ctx, o.Store, o.ID, o.Latest, o.Keys, o.Logger)
	if err != nil {
		return nil, err
	}
	return diffManifest(ctx, o, m)
}

// diffManifest compares an opened manifest's backup with o.Live.
func diffManifest(ctx context.Context, o DiffOptions, m *Manifest) (*DiffResult, error) {
	logger := orDiscard(o.Logger)
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	live, err := pg.Connect(ctx, o.Live)
	if err != nil {
		return nil, err
	}
	defer live.Close(context.WithoutCancel(ctx))
	res := &DiffResult{ID: m.ID, TakenAt: m.StartedAt}
	if err := live.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.current_database()").Scan(&res.Database); err != nil {
		return nil, err
	}
	// fail before the scratch restore when there is nothing to compare
	s, err := spire.ReadSchema(ctx, live)
	if err != nil {
		return nil, err
	}
	if !s.Present {
		return nil, fmt.Errorf("database %s has no SPIRE schema (no migrations table): nothing to compare the backup with", res.Database)
	}
	if m.SPIRE == nil {
		return nil, fmt.Errorf("backup %s has no SPIRE schema: nothing to compare", m.ID)
	}
	logger.Info("restoring the backup into a scratch database for the comparison", "id", m.ID)
	vo := VerifyOptions{Store: o.Store, Scratch: o.Scratch, Jobs: o.Jobs, TempDir: o.TempDir, Tools: o.Tools, Keys: o.Keys, Logger: o.Logger}
	var checks VerifyResult
	err = withScratchRestore(ctx, vo, m, "spiredb_diff_", &checks, logger, func(sopts pg.Options) error {
		then, err := pg.Connect(ctx, sopts)
		if err != nil {
			return err
		}
		defer then.Close(context.WithoutCancel(ctx))
		res.DatastoreDiff, err = spire.Diff(ctx, then, live, spire.DiffOptions{Sample: o.Sample})
		return err
	})
	if err != nil {
		return nil, err
	}
	if c := checks.Failed(); c != nil {
		return nil, fmt.Errorf("backup %s could not be restored for the comparison: %s: %s", m.ID, c.Name, c.Detail)
	}
	logger.Info("compared", "id", m.ID, "database", res.Database, "findings", res.Findings)
	return res, nil
}
