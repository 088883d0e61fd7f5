package backup

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
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
	// Problems are backup-like things spiredb cannot prove it wrote as
	// they are (unreadable or copied manifests, unknown objects in a backup
	// directory): reported, left alone.
	Problems []Problem `json:"problems"`
	// Foreign are top-level names that are not backup IDs: never touched.
	Foreign []string `json:"foreign"`
	// WALDeleted counts archived WAL files older than the oldest kept base
	// backup's start (removed, or to remove on a dry run); WALKeptFrom is
	// that start segment. Without a kept base no WAL is removed.
	WALDeleted  int    `json:"wal_deleted"`
	WALKeptFrom string `json:"wal_kept_from,omitempty"`
}

// Prune applies the retention policy, removes leftovers of failed runs and
// aborts stale incomplete uploads. It deletes only what it can prove
// spiredb wrote: the objects Run and Verify name (dump, manifest.json,
// verify.json) inside a directory named like a backup ID, whose manifest,
// when there is one, names that directory. Everything else is reported and
// left alone.
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
	check := o.Store.Check
	if !o.DryRun {
		check = func(ctx context.Context) error { return checkWrite(ctx, o.Store) }
	}
	if err := check(ctx); err != nil {
		return nil, err
	}
	inv, err := Inspect(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	inv.Warn(logger)
	res := &PruneResult{DryRun: o.DryRun, Decisions: selectBySource(inv.Backups, o.Policy), Problems: inv.Problems, Foreign: inv.Foreign}
	if res.Problems == nil {
		res.Problems = []Problem{}
	}
	if res.Foreign == nil {
		res.Foreign = []string{}
	}

	complete := map[string]bool{}
	for _, b := range inv.Backups {
		complete[b.ID] = true
	}
	withProblem := map[string]bool{}
	for _, p := range inv.Problems {
		id, _, _ := strings.Cut(p.Key, "/")
		withProblem[id] = true
	}
	// own returns the objects of a backup directory spiredb wrote, and
	// reports any other object found there
	own := func(id string) []string {
		var keys []string
		for _, ob := range inv.objects[id] {
			if _, name, _ := strings.Cut(ob.Key, "/"); slices.Contains(ownNames, name) {
				keys = append(keys, ob.Key)
				continue
			}
			res.Problems = append(res.Problems, Problem{Key: ob.Key, Reason: "not an object spiredb writes: left alone"})
		}
		return keys
	}
	cutoff := now().Add(-o.StaleAfter)
	ids := slices.Sorted(maps.Keys(inv.objects))
	for _, id := range ids {
		if complete[id] || withProblem[id] {
			continue
		}
		obs := inv.objects[id]
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
		keys := own(id)
		if len(keys) == 0 {
			continue
		}
		res.Leftovers = append(res.Leftovers, id)
		if !o.DryRun {
			if err := o.Store.Delete(ctx, keys...); err != nil {
				return res, fmt.Errorf("removing leftover %s: %w", id, err)
			}
		}
	}
	uploads, err := o.Store.Incomplete(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range uploads {
		id, name, _ := strings.Cut(u.Key, "/")
		if !IsBackupID(id) || !slices.Contains(ownNames, name) {
			continue // not an upload of spiredb's
		}
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

	if err := pruneWAL(ctx, o, inv, res, logger); err != nil {
		return res, err
	}
	for _, d := range res.Decisions {
		if d.Keep {
			continue
		}
		res.Deleted = append(res.Deleted, d.ID)
		keys := own(d.ID)
		if o.DryRun {
			continue
		}
		// the manifest goes first: from then on the backup no longer
		// exists, and whatever a crash leaves is a leftover for next time
		if err := o.Store.Delete(ctx, manifestKey(d.ID)); err != nil {
			return res, fmt.Errorf("deleting %s: %w", d.ID, err)
		}
		if err := o.Store.Delete(ctx, keys...); err != nil {
			return res, fmt.Errorf("deleting %s: %w", d.ID, err)
		}
		logger.Info("backup deleted", "id", d.ID)
	}
	return res, nil
}

// selectBySource applies the policy to each source's backups apart:
// logical and physical ones (keep-last 7 keeps seven of each, so frequent
// dumps never push the base backups, and with them the WAL, out), and the
// backups of each database and cluster (another deployment's backups in
// the same store never push this one's out; restic groups by host alike).
func selectBySource(backups []Manifest, p Policy) []Decision {
	var out []Decision
	for _, g := range GroupBySource(backups) {
		ds := Select(g.Backups, p)
		for i := range ds {
			ds[i].Source = g.Source.String()
		}
		out = append(out, ds...)
	}
	slices.SortStableFunc(out, func(a, b Decision) int {
		if c := b.StartedAt.Compare(a.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out
}

// pruneWAL removes the archived WAL no kept base backup needs: everything
// before the oldest kept base's start segment. Timeline history files stay
// (tiny, and recovery reads them to follow timelines). WAL is deleted
// before the bases, so a crash in between leaves bases that still have all
// their WAL.
func pruneWAL(ctx context.Context, o PruneOptions, inv *Inventory, res *PruneResult, logger *slog.Logger) error {
	keep := map[string]bool{}
	for _, d := range res.Decisions {
		keep[d.ID] = d.Keep
	}
	var kept []Manifest
	for _, b := range inv.Backups {
		if b.IsPhysical() && keep[b.ID] {
			kept = append(kept, b)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	files, _, err := ListWAL(ctx, o.Store)
	if err != nil {
		return err
	}
	names, from := WALToPrune(kept, files)
	res.WALDeleted, res.WALKeptFrom = len(names), from
	if o.DryRun || len(names) == 0 {
		return nil
	}
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = walKey(n)
	}
	for chunk := range slices.Chunk(keys, 1000) {
		if err := o.Store.Delete(ctx, chunk...); err != nil {
			return fmt.Errorf("deleting archived WAL: %w", err)
		}
	}
	logger.Info("archived WAL before the oldest kept base deleted", "files", len(names), "kept_from", from)
	return nil
}

// WALToPrune returns the archived files that no base in kept needs (all of
// them before the oldest kept base's start segment, whatever the
// timeline), and that segment's name. Timeline history files are never
// returned; with no kept base, nothing is.
func WALToPrune(kept []Manifest, files []WALFile) (names []string, keptFrom string) {
	var oldest *Manifest
	for i := range kept {
		m := &kept[i]
		if m.Physical == nil {
			continue
		}
		if oldest == nil || m.Physical.StartLSN < oldest.Physical.StartLSN {
			oldest = m
		}
	}
	if oldest == nil {
		return nil, ""
	}
	p := oldest.Physical
	from := p.StartLSN.SegNo(p.SegmentSize)
	for _, f := range files {
		if f.Kind == WALTimelineHistory {
			continue
		}
		if f.SegNo(p.SegmentSize) < from {
			names = append(names, f.Name)
		}
	}
	return names, p.StartWAL
}
