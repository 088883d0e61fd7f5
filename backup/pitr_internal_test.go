package backup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func walFiles(t *testing.T, names ...string) []WALFile {
	t.Helper()
	var out []WALFile
	for _, n := range names {
		w, ok := ParseWALName(n)
		require.True(t, ok, n)
		out = append(out, WALFile{WALName: w})
	}
	return out
}

// TestContinuity: a gap anywhere from the base's start to the newest
// segment is named; a later timeline carries on where the earlier one
// stops; segments before the base do not matter.
func TestContinuity(t *testing.T) {
	t.Parallel()
	m := &Manifest{Physical: &PhysicalInfo{StartLSN: 3 << 24, StopLSN: 3<<24 + 0x100, Timeline: 1, SegmentSize: 16 << 20}}
	first, last, missing := continuity(m, walFiles(t, "000000010000000000000001", "000000010000000000000003",
		"000000010000000000000004", "000000010000000000000005"))
	require.Equal(t, "000000010000000000000003", first)
	require.Equal(t, "000000010000000000000005", last)
	require.Empty(t, missing)

	_, _, missing = continuity(m, walFiles(t, "000000010000000000000003", "000000010000000000000005"))
	require.Equal(t, []string{"000000010000000000000004"}, missing)

	// after a promotion: timeline 2 continues from segment 5
	_, last, missing = continuity(m, walFiles(t, "000000010000000000000003", "000000010000000000000004",
		"000000010000000000000005.partial", "000000020000000000000005", "000000020000000000000006", "00000002.history"))
	require.Empty(t, missing)
	require.Equal(t, "000000020000000000000006", last)

	// the base's own stop segment missing
	_, _, missing = continuity(m, walFiles(t, "000000010000000000000004"))
	require.Equal(t, []string{"000000010000000000000003"}, missing)
}

func TestTargetWithin(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	w := Window{Restorable: true, FromTime: now, ToTime: now.Add(time.Hour), FromLSN: 100, ToLSN: 200}
	require.True(t, Target{Time: now}.within(w))
	require.True(t, Target{Time: now.Add(time.Hour)}.within(w))
	require.False(t, Target{Time: now.Add(-time.Second)}.within(w))
	require.False(t, Target{Time: now.Add(time.Hour + time.Second)}.within(w))
	require.True(t, Target{LSN: 150}.within(w))
	require.False(t, Target{LSN: 99}.within(w))
	require.True(t, Target{Latest: true}.within(w))
	require.False(t, Target{Latest: true}.within(Window{}))
	require.Error(t, Target{}.validate())
	require.Error(t, Target{Latest: true, LSN: 5}.validate())
	require.NoError(t, Target{LSN: 5}.validate())
}

func TestRecoverySettings(t *testing.T) {
	t.Parallel()
	s := recoverySettings("spiredb wal fetch %f %p", Target{Time: time.Date(2026, 12, 2, 4, 5, 6, 500000000, time.FixedZone("x", 3600))})
	require.Equal(t, "2026-12-02 03:05:06.5+00", s["recovery_target_time"])
	require.Equal(t, "pause", s["recovery_target_action"])
	require.Equal(t, "latest", s["recovery_target_timeline"])
	s = recoverySettings("x", Target{Latest: true})
	require.NotContains(t, s, "recovery_target_action")
	require.NotContains(t, s, "recovery_target_time")
}

// TestReachedArchiveEndFollowsTheRecoveredTimeline: a recovery to the
// archive's end stopped short when the archive holds a segment of the
// timeline it ended on past the point reached; segments of a timeline it
// did not follow (an old primary archiving after a failover) do not count.
func TestReachedArchiveEndFollowsTheRecoveredTimeline(t *testing.T) {
	const seg = 16 << 20
	ctx := t.Context()
	store := func(names ...string) Store {
		s, err := NewFileStore(t.TempDir())
		require.NoError(t, err)
		for _, n := range names {
			_, err := s.Put(ctx, walKey(n), strings.NewReader("x"))
			require.NoError(t, err)
		}
		return s
	}
	restored := func(newTLI uint32, history string) *PhysicalRestoreResult {
		dir := t.TempDir()
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "pg_wal"), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "pg_wal", fmt.Sprintf("%08X.history", newTLI)), []byte(history), 0o600))
		return &PhysicalRestoreResult{DataDir: dir, Timeline: newTLI}
	}
	latest := Target{Latest: true}

	// timeline 1 to its end (segment 6): replayed through it
	res := restored(2, "1\t0/7000000\tno recovery target specified\n")
	res.ReachedLSN = LSN(7 * seg)
	s := store("000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006")
	require.NoError(t, reachedArchiveEnd(ctx, s, res, seg, latest))

	// stopped at the start of segment 4, which the archive holds
	res.ReachedLSN = LSN(4 * seg)
	err := reachedArchiveEnd(ctx, s, res, seg, latest)
	var short *ShortOfArchiveError
	require.ErrorAs(t, err, &short)
	require.Equal(t, "000000010000000000000004", short.Segment)
	require.Equal(t, "000000010000000000000006", short.LastWAL)

	// stopped inside segment 4: segment 5 is the one it could not read
	res.ReachedLSN = LSN(4*seg + 4096)
	require.ErrorAs(t, reachedArchiveEnd(ctx, s, res, seg, latest), &short)
	require.Equal(t, "000000010000000000000005", short.Segment)

	// recovery followed timeline 2 to its end; timeline 1 goes further (the
	// old primary kept archiving after the failover): not short
	s = store("000000010000000000000004", "000000010000000000000005", "000000010000000000000006", "000000010000000000000007",
		"000000020000000000000005", "000000020000000000000006", "00000002.history")
	res = restored(3, "1\t0/5000100\tno recovery target specified\n2\t0/6001000\tno recovery target specified\n")
	res.ReachedLSN = LSN(6*seg + 8192)
	require.NoError(t, reachedArchiveEnd(ctx, s, res, seg, latest))

	// no history file (nothing promoted): nothing to compare
	res.DataDir = t.TempDir()
	require.NoError(t, reachedArchiveEnd(ctx, s, res, seg, latest))
}
