package tuning

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/spire"
)

const (
	reloadFirstPage = `WITH listing AS ( SELECT id AS e_id FROM registered_entries ORDER BY id ASC LIMIT $1 ) SELECT id AS e_id, entry_id FROM registered_entries WHERE id IN (SELECT e_id FROM listing)`
	bundlesIn1      = `SELECT * FROM "bundles" WHERE (trust_domain in ($1))`
	bundlesIn3      = `SELECT * FROM "bundles" WHERE (trust_domain in ($1,$2,$3))`
)

func TestGroupStatementsMergesShapes(t *testing.T) {
	stmts := []Statement{
		{UserID: 10, QueryID: 1, Query: bundlesIn1, Calls: 10, ExecMs: 10, Rows: 10, SharedHit: 90, SharedRead: 10},
		{UserID: 10, QueryID: 2, Query: bundlesIn3, Calls: 5, ExecMs: 20, Rows: 15},
		// the same query id run by another role
		{UserID: 11, QueryID: 1, Query: bundlesIn1, Calls: 1, ExecMs: 2, PlanMs: 1, Rows: 1},
		{UserID: 10, QueryID: 3, Query: "SELECT 1", Calls: 100, ExecMs: 67},
		// a truncated text: its own group, keyed by query id
		{UserID: 10, QueryID: 4, Query: "SELECT * FROM registered_entries WHERE", Calls: 1, ExecMs: 0},
	}
	groups := GroupStatements(stmts)
	require.Len(t, groups, 3)

	top := groups[0]
	assert.Equal(t, "SELECT 1", top.Query)
	assert.InDelta(t, 0.67, top.Share, 1e-9)

	b := groups[1]
	assert.Equal(t, []int64{1, 1, 2}, b.QueryIDs, "two query ids and two users in one shape")
	assert.Equal(t, int64(16), b.Calls)
	assert.InDelta(t, 33, b.TotalMs, 1e-9)
	assert.InDelta(t, 1, b.PlanMs, 1e-9)
	assert.InDelta(t, 33.0/16, b.MeanMs, 1e-9)
	assert.Equal(t, int64(26), b.Rows)
	assert.InDelta(t, 90, b.HitPercent(), 1e-9)
	assert.Equal(t, bundlesIn3, b.Query, "the text of the member with the most time")
	assert.Equal(t, "bundle fetch", b.Label, "labelled from the SPIRE catalog")

	bad := groups[2]
	assert.Equal(t, "queryid:4", bad.Fingerprint)
	assert.NotEmpty(t, bad.ParseError)
	assert.Empty(t, bad.Label)

	var share float64
	for _, g := range groups {
		share += g.Share
	}
	assert.InDelta(t, 1, share, 1e-9)
}

func TestSortGroups(t *testing.T) {
	groups := []Group{
		{Fingerprint: "a", TotalMs: 10, MeanMs: 10, Calls: 1, Rows: 5, SharedRead: 0},
		{Fingerprint: "b", TotalMs: 5, MeanMs: 0.5, Calls: 10, Rows: 50, SharedRead: 7, TempBlocks: 1},
		{Fingerprint: "c", TotalMs: 1, MeanMs: 1, Calls: 1, Rows: 1, SharedRead: 9},
	}
	for by, want := range map[string]string{"total": "abc", "mean": "acb", "calls": "bac", "rows": "bac", "io": "cba"} {
		SortGroups(groups, by)
		got := ""
		for _, g := range groups {
			got += g.Fingerprint
		}
		assert.Equal(t, want, got, by)
	}
}

func TestOperationsSumPerLabel(t *testing.T) {
	ops := Operations([]Group{
		{Label: "cache reload page", TotalMs: 90, Share: 0.9, Calls: 2},
		{Label: "", TotalMs: 4, Share: 0.04, Calls: 4},
		{Label: "cache reload page", TotalMs: 5, Share: 0.05, Calls: 1},
		{Label: "events poll", TotalMs: 1, Share: 0.01, Calls: 9},
	})
	require.Len(t, ops, 3)
	assert.Equal(t, Operation{Label: "cache reload page", Shapes: 2, Calls: 3, TotalMs: 95, Share: 0.95}, roundOp(ops[0]))
	assert.Equal(t, "", ops[1].Label)
	assert.Equal(t, "events poll", ops[2].Label)
}

func roundOp(o Operation) Operation {
	o.Share = math.Round(o.Share*1e9) / 1e9
	return o
}

func TestNewReportRejectsUnknownOrder(t *testing.T) {
	_, err := NewReport(nil, Source{}, TopOptions{By: "total_time"})
	assert.ErrorContains(t, err, "invalid sort key")
	r, err := NewReport(nil, Source{}, TopOptions{})
	require.NoError(t, err)
	assert.Empty(t, r.Groups)
	assert.NotNil(t, r.Groups, "an empty list, not null, in JSON")
}

func TestUnknownStatementsStayUnlabelled(t *testing.T) {
	fp, err := spire.Fingerprint(reloadFirstPage)
	require.NoError(t, err)
	assert.Empty(t, spire.Label(fp), "a statement SPIRE does not run stays unlabelled")
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

func snap(at time.Time, reset *time.Time, stmts ...Statement) *Snapshot {
	return &Snapshot{Format: snapshotFormat, TakenAt: at, Source: Source{Database: "spire", StatsReset: reset}, Statements: stmts}
}

func TestDiffSnapshots(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	a := snap(t0, &t0,
		Statement{UserID: 10, QueryID: 1, Query: bundlesIn1, Calls: 10, ExecMs: 10},
		Statement{UserID: 10, QueryID: 3, Query: "SELECT 1", Calls: 100, ExecMs: 100},
		Statement{UserID: 10, QueryID: 5, Query: "SELECT 2 FROM pg_am", Calls: 7, ExecMs: 7},
	)
	b := snap(t0.Add(time.Minute), &t0,
		// same shape under a new query id: merged with qid 1's delta
		Statement{UserID: 10, QueryID: 1, Query: bundlesIn1, Calls: 12, ExecMs: 14},
		Statement{UserID: 10, QueryID: 2, Query: bundlesIn3, Calls: 2, ExecMs: 6},
		// slower: 10 more calls at 5 ms
		Statement{UserID: 10, QueryID: 3, Query: "SELECT 1", Calls: 110, ExecMs: 150},
		// evicted and re-added: counts from zero
		Statement{UserID: 10, QueryID: 5, Query: "SELECT 2 FROM pg_am", Calls: 3, ExecMs: 3},
		// new
		Statement{UserID: 10, QueryID: 6, Query: "SELECT 3 FROM pg_class", Calls: 1, ExecMs: 0.5},
	)
	d, err := DiffSnapshots(a, b, TopOptions{})
	require.NoError(t, err)
	assert.False(t, d.Reset)
	assert.InDelta(t, 50+4+6+3+0.5, d.TotalMs, 1e-9)
	require.Len(t, d.Changes, 4)
	byQuery := map[string]Change{}
	for _, c := range d.Changes {
		byQuery[c.Query] = c
	}
	sel1 := byQuery["SELECT 1"]
	assert.Equal(t, int64(10), sel1.Calls)
	assert.InDelta(t, 5, sel1.MeanMs, 1e-9)
	assert.InDelta(t, 1, sel1.MeanBeforeMs, 1e-9)
	assert.InDelta(t, 5, sel1.Slowdown, 1e-9)
	assert.False(t, sel1.New)

	bundles := byQuery[bundlesIn3]
	assert.Equal(t, int64(4), bundles.Calls, "2 more calls of qid 1 and 2 of qid 2")
	assert.InDelta(t, 10, bundles.TotalMs, 1e-9)
	assert.False(t, bundles.New, "the shape ran before, under another query id")

	assert.Equal(t, int64(3), byQuery["SELECT 2 FROM pg_am"].Calls)
	assert.True(t, byQuery["SELECT 3 FROM pg_class"].New)
	assert.Equal(t, "SELECT 1", d.Changes[0].Query, "largest delta first")

	// a full reset in between: everything counts from the reset
	t1 := t0.Add(30 * time.Second)
	b.Source.StatsReset = &t1
	d, err = DiffSnapshots(a, b, TopOptions{})
	require.NoError(t, err)
	assert.True(t, d.Reset)
	assert.InDelta(t, 14+6+150+3+0.5, d.TotalMs, 1e-9)

	_, err = DiffSnapshots(b, a, TopOptions{})
	assert.ErrorIs(t, err, ErrSnapshotOrder)
	other := snap(t0.Add(time.Hour), nil)
	other.Source.Database = "postgres"
	_, err = DiffSnapshots(a, other, TopOptions{})
	assert.ErrorContains(t, err, "different databases")
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	s := snap(t0, nil, Statement{UserID: 10, QueryID: -42, Query: "SELECT 1", Calls: 3, ExecMs: 1.5, StatsSince: &t0})
	path := filepath.Join(dir, "a.json")
	require.NoError(t, s.WriteFile(path))
	got, err := ReadSnapshot(path)
	require.NoError(t, err)
	assert.Equal(t, s.Statements, got.Statements)
	assert.True(t, got.TakenAt.Equal(t0))

	_, err = ReadSnapshot(filepath.Join(dir, "missing.json"))
	assert.Error(t, err)
	require.NoError(t, writeFile(filepath.Join(dir, "other.json"), `{"statements": []}`))
	_, err = ReadSnapshot(filepath.Join(dir, "other.json"))
	assert.ErrorContains(t, err, "not a spiredb stats snapshot")
	require.NoError(t, writeFile(filepath.Join(dir, "garbage.json"), `{`))
	_, err = ReadSnapshot(filepath.Join(dir, "garbage.json"))
	assert.ErrorContains(t, err, "not a spiredb stats snapshot")
}

// BenchmarkGroupStatements groups and labels 10,000 rows shaped like a busy
// SPIRE database's pg_stat_statements: two thirds SPIRE's catalog statements
// (long reload texts included), one third others. Every text is distinct (a
// comment keeps SPIRE's shapes), so each of the 10,000 is parsed: the worst
// case, where rows of several roles sharing one text would be parsed once.
func BenchmarkGroupStatements(b *testing.B) {
	c, err := spire.Statements()
	require.NoError(b, err)
	stmts := make([]Statement, 10000)
	for i := range stmts {
		q := fmt.Sprintf("/* client %d */ %s", i, c.Statements[i%len(c.Statements)].Query)
		if i%3 == 0 {
			// statements SPIRE does not run, all different
			q = fmt.Sprintf("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = $1 AND n_live_tup > %d", i)
		}
		stmts[i] = Statement{UserID: uint32(10 + i%7), QueryID: int64(i), Query: q, Calls: int64(i%100 + 1), ExecMs: float64(i % 977)}
	}
	b.ResetTimer()
	for b.Loop() {
		groups := GroupStatements(stmts)
		if len(groups) == 0 {
			b.Fatal("no groups")
		}
	}
}
