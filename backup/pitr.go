package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Window is what one base backup and the archive after it can restore: any
// point from the base's stop (its first consistent point) to the end of the
// WAL archived without a gap after its start.
type Window struct {
	BaseID   string    `json:"base_id"`
	FromTime time.Time `json:"from_time"`
	FromLSN  LSN       `json:"from_lsn"`
	// ToTime bounds the newest restorable moment: the last contiguous
	// segment was complete (written to its end) by then.
	ToTime time.Time `json:"to_time"`
	ToLSN  LSN       `json:"to_lsn"`
	// LastWAL is the last segment of the contiguous run.
	LastWAL string `json:"last_wal"`
	// Missing names the first segment absent after the run when the
	// archive holds later ones: a gap.
	Missing string `json:"missing,omitempty"`
	// Restorable is false when the archive lacks WAL the base itself needs.
	Restorable bool `json:"restorable"`
}

func (w Window) String() string {
	if !w.Restorable {
		return fmt.Sprintf("base %s: not restorable (the archive lacks %s)", w.BaseID, w.Missing)
	}
	return fmt.Sprintf("base %s: %s (%s) to %s (%s)", w.BaseID, w.FromTime.UTC().Format(time.RFC3339), w.FromLSN,
		w.ToTime.UTC().Format(time.RFC3339), w.ToLSN)
}

// walIndex is the archive's segments by number, for continuity checks.
type walIndex struct {
	bySeg map[uint64][]WALFile // segments (not .partial) by number
	max   uint64
}

func newWALIndex(files []WALFile, segSize int64) walIndex {
	ix := walIndex{bySeg: map[uint64][]WALFile{}}
	for _, f := range files {
		if f.Kind != WALSegment {
			continue
		}
		n := f.SegNo(segSize)
		ix.bySeg[n] = append(ix.bySeg[n], f)
		ix.max = max(ix.max, n)
	}
	return ix
}

// has reports whether segment n exists on timeline tli or a later one
// (recovery follows the newest timeline's history).
func (ix walIndex) has(n uint64, tli uint32) (WALFile, bool) {
	var best WALFile
	found := false
	for _, f := range ix.bySeg[n] {
		if f.TLI >= tli && (!found || f.TLI > best.TLI) {
			best, found = f, true
		}
	}
	return best, found
}

// segmentTimes reads archived segments' modification times from their
// headers, each once: the bases of a store mostly end their windows on the
// same segment.
type segmentTimes struct {
	s    Store
	seen map[string]time.Time
}

func newSegmentTimes(s Store) *segmentTimes { return &segmentTimes{s: s, seen: map[string]time.Time{}} }

func (st *segmentTimes) of(ctx context.Context, name string) (time.Time, error) {
	if t, ok := st.seen[name]; ok {
		return t, nil
	}
	h, _, closer, err := readWALHeader(ctx, st.s, name)
	if err != nil {
		return time.Time{}, err
	}
	closer.Close()
	st.seen[name] = h.MTime
	return h.MTime, nil
}

// windowOf computes m's window from the archive; ToTime is the last
// segment's modification time, from its header.
func windowOf(ctx context.Context, times *segmentTimes, m *Manifest, ix walIndex) (Window, error) {
	p := m.Physical
	w := Window{BaseID: m.ID, FromTime: m.FinishedAt, FromLSN: p.StopLSN}
	start := p.StartLSN.SegNo(p.SegmentSize)
	n := start
	var last WALFile
	for {
		f, ok := ix.has(n, p.Timeline)
		if !ok {
			break
		}
		last = f
		n++
	}
	if n <= p.StopLSN.SegNo(p.SegmentSize) {
		w.Missing = SegmentName(p.Timeline, n, p.SegmentSize)
		return w, nil
	}
	if ix.max >= n {
		w.Missing = SegmentName(last.TLI, n, p.SegmentSize)
	}
	w.Restorable = true
	w.LastWAL = last.Name
	w.ToLSN = LSN(n * uint64(p.SegmentSize))
	var err error
	w.ToTime, err = times.of(ctx, last.Name)
	return w, err
}

// Windows lists every physical base backup's restorable window, oldest
// first.
func Windows(ctx context.Context, s Store) ([]Window, error) {
	inv, err := Inspect(ctx, s)
	if err != nil {
		return nil, err
	}
	return WindowsOf(ctx, s, inv.Backups)
}

// WindowsOf is Windows for the base backups among backups (of s), in
// their order: those of one cluster, say (Source.Restores).
func WindowsOf(ctx context.Context, s Store, backups []Manifest) ([]Window, error) {
	files, _, err := ListWAL(ctx, s)
	if err != nil {
		return nil, err
	}
	return WindowsWith(ctx, s, backups, files)
}

// WindowsWith is WindowsOf over a listing of the archive already taken
// (ListWAL), for a caller that reads it for more than the windows.
func WindowsWith(ctx context.Context, s Store, backups []Manifest, files []WALFile) ([]Window, error) {
	var out []Window
	times := newSegmentTimes(s)
	for i := range backups {
		m := &backups[i]
		if !m.IsPhysical() {
			continue
		}
		w, err := windowOf(ctx, times, m, newWALIndex(files, m.Physical.SegmentSize))
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// Target is where a point-in-time restore stops: one of Time, LSN or
// Latest (the end of the archive).
type Target struct {
	Time   time.Time
	LSN    LSN
	Latest bool
}

func (t Target) String() string {
	switch {
	case t.Latest:
		return "the end of the archive"
	case !t.Time.IsZero():
		return t.Time.UTC().Format(time.RFC3339Nano)
	default:
		return t.LSN.String()
	}
}

func (t Target) validate() error {
	n := 0
	if t.Latest {
		n++
	}
	if !t.Time.IsZero() {
		n++
	}
	if t.LSN != 0 {
		n++
	}
	if n != 1 {
		return errors.New("name one recovery target: --to-time T, --to-lsn L or --latest")
	}
	return nil
}

// within reports whether w can restore to t.
func (t Target) within(w Window) bool {
	switch {
	case !w.Restorable:
		return false
	case t.Latest:
		return true
	case !t.Time.IsZero():
		return !t.Time.Before(w.FromTime) && !t.Time.After(w.ToTime)
	default:
		return t.LSN >= w.FromLSN && t.LSN <= w.ToLSN
	}
}

// OutsideWindowError says the target is not restorable, with the windows.
type OutsideWindowError struct {
	Target  Target
	Windows []Window
}

func (e *OutsideWindowError) Error() string {
	var parts []string
	for _, w := range e.Windows {
		parts = append(parts, w.String())
	}
	if len(parts) == 0 {
		return fmt.Sprintf("cannot restore to %s: the store has no physical base backup (backup run --physical)", e.Target)
	}
	return fmt.Sprintf("cannot restore to %s: outside every restorable window; %s", e.Target, strings.Join(parts, "; "))
}

// chooseBase picks the newest base whose window holds t (or the named one).
func chooseBase(ctx context.Context, s Store, id string, t Target, logger *slog.Logger) (*Manifest, Window, error) {
	inv, err := Inspect(ctx, s)
	if err != nil {
		return nil, Window{}, err
	}
	inv.Warn(logger)
	files, _, err := ListWAL(ctx, s)
	if err != nil {
		return nil, Window{}, err
	}
	var windows []Window
	var bases []*Manifest
	times := newSegmentTimes(s)
	for i := range inv.Backups {
		m := &inv.Backups[i]
		if !m.IsPhysical() || (id != "" && m.ID != id) {
			continue
		}
		w, err := windowOf(ctx, times, m, newWALIndex(files, m.Physical.SegmentSize))
		if err != nil {
			return nil, Window{}, err
		}
		windows = append(windows, w)
		bases = append(bases, m)
	}
	if id != "" && len(bases) == 0 {
		return nil, Window{}, fmt.Errorf("no physical base backup %q in %s (see backup list)", id, s)
	}
	// bases of two clusters share WAL file names, not WAL: a target time
	// cannot say which cluster is meant
	if id == "" {
		var ms []Manifest
		for _, b := range bases {
			ms = append(ms, *b)
		}
		if groups := GroupBySource(ms); len(groups) > 1 {
			return nil, Window{}, &AmbiguousLatestError{Choosing: "choosing a base backup", Store: s.String(), Sources: groups}
		}
	}
	for i := len(bases) - 1; i >= 0; i-- {
		if t.within(windows[i]) {
			return bases[i], windows[i], nil
		}
	}
	return nil, Window{}, &OutsideWindowError{Target: t, Windows: windows}
}

// continuity checks the archive from the base's start segment to the
// newest archived segment and names every missing one.
func continuity(m *Manifest, files []WALFile) (first, last string, missing []string) {
	p := m.Physical
	ix := newWALIndex(files, p.SegmentSize)
	start := p.StartLSN.SegNo(p.SegmentSize)
	first = SegmentName(p.Timeline, start, p.SegmentSize)
	end := max(ix.max, p.StopLSN.SegNo(p.SegmentSize))
	tli := p.Timeline
	for n := start; n <= end; n++ {
		f, ok := ix.has(n, p.Timeline)
		if !ok {
			missing = append(missing, SegmentName(tli, n, p.SegmentSize))
			continue
		}
		tli, last = f.TLI, f.Name
	}
	sort.Strings(missing)
	return first, last, missing
}

// emptyDir makes sure dir is absent or empty and returns a function that
// removes what a failed restore left (the directory too, when this run
// created it).
func emptyDir(dir string) (cleanup func(), err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// missing parents must let the server's OS user through
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, err
		}
		return func() { _ = os.RemoveAll(dir) }, nil
	case err != nil:
		return nil, err
	case len(entries) > 0:
		return nil, fmt.Errorf("data directory %s is not empty (%s, …): restore into a new or empty directory", dir, entries[0].Name())
	}
	return func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}, nil
}
