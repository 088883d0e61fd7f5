package tuning

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// snapshotFormat is the version of the snapshot file layout.
const snapshotFormat = 1

// Snapshot is pg_stat_statements of one database at one moment, as `stats
// snapshot` writes it.
type Snapshot struct {
	Format     int         `json:"format"`
	TakenAt    time.Time   `json:"taken_at"`
	Source     Source      `json:"source"`
	Statements []Statement `json:"statements"`
}

// TakeSnapshot reads pg_stat_statements now.
func TakeSnapshot(ctx context.Context, conn *pgx.Conn) (*Snapshot, error) {
	stmts, src, err := ReadStatements(ctx, conn)
	if err != nil {
		return nil, err
	}
	var now time.Time
	if err := conn.QueryRow(ctx, Marker+"SELECT pg_catalog.now()").Scan(&now); err != nil {
		return nil, err
	}
	if stmts == nil {
		stmts = []Statement{}
	}
	return &Snapshot{Format: snapshotFormat, TakenAt: now.UTC(), Source: src, Statements: stmts}, nil
}

// WriteFile writes the snapshot atomically (a temporary file renamed into
// place), readable by its owner only: statement texts can be sensitive.
func (s *Snapshot) WriteFile(path string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot reads a file `stats snapshot` wrote.
func ReadSnapshot(path string) (*Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading snapshot: %w", err)
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("reading snapshot %s: not a spiredb stats snapshot: %w", path, err)
	}
	if s.Format != snapshotFormat || s.TakenAt.IsZero() {
		return nil, fmt.Errorf("reading snapshot %s: not a spiredb stats snapshot (format %d)", path, s.Format)
	}
	return &s, nil
}

// Change is one statement shape between two snapshots: its Group holds the
// deltas (calls, time, rows, blocks during the interval, MeanMs the mean
// during it); MeanBeforeMs is its mean up to the first snapshot.
type Change struct {
	Group
	New          bool    `json:"new"`
	MeanBeforeMs float64 `json:"mean_before_ms"`
	// Slowdown is MeanMs / MeanBeforeMs (0 for a new shape).
	Slowdown float64 `json:"slowdown"`
}

// Diff is `stats diff`: what ran between two snapshots.
type Diff struct {
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Database string    `json:"database"`
	// Reset is set when pg_stat_statements was reset between the
	// snapshots: rows are then counted from the reset.
	Reset      bool        `json:"reset"`
	TotalMs    float64     `json:"total_ms"`
	By         string      `json:"by"`
	Changes    []Change    `json:"changes"`
	Operations []Operation `json:"operations"`
}

// ErrSnapshotOrder is returned when the second snapshot is not later.
var ErrSnapshotOrder = errors.New("the second snapshot must be taken after the first")

// DiffSnapshots computes what ran between a and b. Rows are matched on
// (userid, queryid); a row that went backwards (reset or evicted and
// re-added) counts from zero. Only shapes that ran in the interval are
// reported.
func DiffSnapshots(a, b *Snapshot, opts TopOptions) (*Diff, error) {
	if !b.TakenAt.After(a.TakenAt) {
		return nil, ErrSnapshotOrder
	}
	if a.Source.Database != b.Source.Database {
		return nil, fmt.Errorf("the snapshots are of different databases (%q and %q)", a.Source.Database, b.Source.Database)
	}
	if opts.By == "" {
		opts.By = "total"
	}
	if !slices.Contains(SortKeys, opts.By) {
		return nil, fmt.Errorf("invalid sort key %q: want one of %v", opts.By, SortKeys)
	}
	d := &Diff{From: a.TakenAt, To: b.TakenAt, Database: b.Source.Database, By: opts.By}
	if b.Source.StatsReset != nil && (a.Source.StatsReset == nil || b.Source.StatsReset.After(*a.Source.StatsReset)) {
		d.Reset = true
	}
	before := slices.Clone(a.Statements)
	slices.SortFunc(before, compareKey)
	var delta []Statement
	for _, s := range b.Statements {
		i, found := slices.BinarySearchFunc(before, s, compareKey)
		if found && !d.Reset && s.Calls >= before[i].Calls && sameSince(before[i], s) {
			p := before[i]
			s.Calls -= p.Calls
			s.ExecMs -= p.ExecMs
			s.PlanMs -= p.PlanMs
			s.Rows -= p.Rows
			s.SharedHit -= p.SharedHit
			s.SharedRead -= p.SharedRead
			s.TempRead -= p.TempRead
			s.TempWritten -= p.TempWritten
			s.IOMs -= p.IOMs
		}
		if s.Calls > 0 {
			delta = append(delta, s)
		}
	}
	for _, s := range delta {
		d.TotalMs += s.TotalMs()
	}
	// the mean before, per shape, from the first snapshot
	beforeGroups := GroupStatements(a.Statements)
	meanBefore := make(map[string]float64, len(beforeGroups))
	for _, g := range beforeGroups {
		meanBefore[g.Fingerprint] = g.MeanMs
	}
	groups := GroupStatements(delta)
	d.Operations = Operations(groups)
	SortGroups(groups, opts.By)
	for _, g := range groups {
		c := Change{Group: g}
		if m, ok := meanBefore[g.Fingerprint]; ok {
			c.MeanBeforeMs = m
			if m > 0 {
				c.Slowdown = g.MeanMs / m
			}
		} else {
			c.New = true
		}
		d.Changes = append(d.Changes, c)
	}
	if opts.Limit > 0 && len(d.Changes) > opts.Limit {
		d.Changes = d.Changes[:opts.Limit]
	}
	if d.Changes == nil {
		d.Changes = []Change{}
	}
	if d.Operations == nil {
		d.Operations = []Operation{}
	}
	return d, nil
}

// sameSince reports whether two readings of a row count from the same start
// (PostgreSQL 17 records it; before, a drop in calls is the only sign).
func sameSince(a, b Statement) bool {
	if a.StatsSince == nil || b.StatsSince == nil {
		return true
	}
	return a.StatsSince.Equal(*b.StatsSince)
}
