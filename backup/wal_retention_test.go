package backup_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
)

// TestWALRetentionProperty: for random archives (segments on several
// timelines, gaps, backup and timeline history files), random base backups
// and random policies, prune never removes WAL a kept base needs: every
// file from the oldest kept base's start on survives, so no gap opens
// inside the kept window; only files before it go; history files stay.
func TestWALRetentionProperty(t *testing.T) {
	t.Parallel()
	const segSize = 16 << 20
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 17))
		nSegs := 1 + r.IntN(600)
		var files []backup.WALFile
		for n := range uint64(nSegs) {
			if r.IntN(10) == 0 {
				continue // a gap the archive already had
			}
			tli := uint32(1 + r.IntN(3))
			w, _ := backup.ParseWALName(backup.SegmentName(tli, n, segSize))
			files = append(files, backup.WALFile{WALName: w})
			if r.IntN(20) == 0 {
				w, _ := backup.ParseWALName(fmt.Sprintf("%s.%08X.backup", backup.SegmentName(tli, n, segSize), r.IntN(1<<24)))
				files = append(files, backup.WALFile{WALName: w})
			}
		}
		for tli := 2; tli <= 3; tli++ {
			w, _ := backup.ParseWALName(fmt.Sprintf("%08X.history", tli))
			files = append(files, backup.WALFile{WALName: w})
		}
		var bases []backup.Manifest
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := range 1 + r.IntN(12) {
			seg := uint64(r.IntN(nSegs))
			lsn := backup.LSN(seg*segSize + uint64(r.IntN(segSize)))
			bases = append(bases, backup.Manifest{ID: fmt.Sprintf("b%02d", i), Kind: backup.KindPhysical,
				StartedAt: start.Add(time.Duration(seg) * time.Minute), Physical: &backup.PhysicalInfo{StartLSN: lsn, SegmentSize: segSize,
					StartWAL: backup.SegmentName(1, seg, segSize)}})
		}
		policy := backup.Policy{KeepLast: r.IntN(4), KeepDaily: r.IntN(3)}
		decisions := backup.Select(bases, policy)
		keep := map[string]bool{}
		for _, d := range decisions {
			keep[d.ID] = d.Keep
		}
		var kept []backup.Manifest
		for _, b := range bases {
			if keep[b.ID] {
				kept = append(kept, b)
			}
		}
		require.NotEmpty(t, kept, "the newest base is always kept")
		oldest := slices.MinFunc(kept, func(a, b backup.Manifest) int { return cmpLSN(a, b) })
		from := oldest.Physical.StartLSN.SegNo(segSize)

		deleted, keptFrom := backup.WALToPrune(kept, files)
		require.Equal(t, oldest.Physical.StartWAL, keptFrom)
		gone := map[string]bool{}
		for _, n := range deleted {
			gone[n] = true
		}
		for _, f := range files {
			switch {
			case f.Kind == backup.WALTimelineHistory:
				require.False(t, gone[f.Name], "seed %d: history file %s deleted", seed, f.Name)
			case f.SegNo(segSize) >= from:
				require.False(t, gone[f.Name], "seed %d: %s deleted inside the kept window (from %d)", seed, f.Name, from)
			default:
				require.True(t, gone[f.Name], "seed %d: %s before every kept base left", seed, f.Name)
			}
		}
		for _, b := range kept {
			bFrom := b.Physical.StartLSN.SegNo(segSize)
			for _, f := range files {
				if f.Kind == backup.WALSegment && f.SegNo(segSize) >= bFrom {
					require.False(t, gone[f.Name], "seed %d: kept base %s lost %s", seed, b.ID, f.Name)
				}
			}
		}
	}
	names, from := backup.WALToPrune(nil, []backup.WALFile{{WALName: mustWAL(t, "000000010000000000000001")}})
	require.Empty(t, names, "no kept base: no WAL removed")
	require.Empty(t, from)
}

func cmpLSN(a, b backup.Manifest) int {
	switch {
	case a.Physical.StartLSN < b.Physical.StartLSN:
		return -1
	case a.Physical.StartLSN > b.Physical.StartLSN:
		return 1
	}
	return 0
}

func mustWAL(t *testing.T, name string) backup.WALName {
	w, ok := backup.ParseWALName(name)
	require.True(t, ok)
	return w
}
