package backup

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// PruneOptions configure Prune.
type PruneOptions struct {
	Store  Store
	Policy Policy
	DryRun bool
	// StaleAfter is how old a leftover (data without a manifest) or an
	// incomplete upload must be before it is removed; 0 means 24h, so that
	// a backup running right now is never touched. Negative means "any
	// age" (only when no backup can be running).
	StaleAfter time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
}

// PruneResult reports what Prune did (or would do, on a dry run).
type PruneResult struct {
	DryRun    bool       `json:"dry_run"`
	Decisions []Decision `json:"decisions"`
	Deleted   []string   `json:"deleted"`
	// Leftovers are backup directories without a manifest (a killed run)
	// old enough to remove.
	Leftovers []string `json:"leftovers"`
	// Aborted are incomplete uploads old enough to abort.
	Aborted []string `json:"aborted_uploads"`
}

// Prune applies the retention policy, removes leftovers of failed runs and
// aborts stale incomplete uploads.
func Prune(ctx context.Context, o PruneOptions) (*PruneResult, error) {
	logger := orDiscard(o.Logger)
	if err := o.Policy.Validate(); err != nil {
		return nil, err
	}
	switch {
	case o.StaleAfter == 0:
		o.StaleAfter = 24 * time.Hour
	case o.StaleAfter < 0:
		o.StaleAfter = 0
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if err := o.Store.Check(ctx); err != nil {
		return nil, err
	}
	backups, err := List(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	res := &PruneResult{DryRun: o.DryRun, Decisions: Select(backups, o.Policy)}

	objs, err := o.Store.List(ctx, "")
	if err != nil {
		return nil, err
	}
	byID := map[string][]Object{}
	for _, ob := range objs {
		if id, _, ok := strings.Cut(ob.Key, "/"); ok {
			byID[id] = append(byID[id], ob)
		}
	}
	complete := map[string]bool{}
	for _, b := range backups {
		complete[b.ID] = true
	}
	cutoff := now().Add(-o.StaleAfter)
	for id, obs := range byID {
		if complete[id] {
			continue
		}
		newest := time.Time{}
		for _, ob := range obs {
			if ob.Modified.After(newest) {
				newest = ob.Modified
			}
		}
		if !newest.Before(cutoff) && o.StaleAfter > 0 {
			logger.Info("leftover too recent to remove (a backup may be running)", "id", id)
			continue
		}
		res.Leftovers = append(res.Leftovers, id)
		if !o.DryRun {
			if err := o.Store.Delete(ctx, keysOf(obs)...); err != nil {
				return res, fmt.Errorf("removing leftover %s: %w", id, err)
			}
		}
	}
	uploads, err := o.Store.Incomplete(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range uploads {
		if !u.Initiated.Before(cutoff) && o.StaleAfter > 0 {
			continue
		}
		res.Aborted = append(res.Aborted, u.Key)
		if !o.DryRun {
			if err := o.Store.Abort(ctx, u); err != nil {
				return res, err
			}
		}
	}

	for _, d := range res.Decisions {
		if d.Keep {
			continue
		}
		res.Deleted = append(res.Deleted, d.ID)
		if o.DryRun {
			continue
		}
		// the manifest goes first: from then on the backup no longer
		// exists, and whatever a crash leaves is a leftover for next time
		if err := o.Store.Delete(ctx, manifestKey(d.ID)); err != nil {
			return res, fmt.Errorf("deleting %s: %w", d.ID, err)
		}
		if err := o.Store.Delete(ctx, keysOf(byID[d.ID])...); err != nil {
			return res, fmt.Errorf("deleting %s: %w", d.ID, err)
		}
		logger.Info("backup deleted", "id", d.ID)
	}
	return res, nil
}

func keysOf(obs []Object) []string {
	out := make([]string, len(obs))
	for i, o := range obs {
		out[i] = o.Key
	}
	return out
}
