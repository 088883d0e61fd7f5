package backup_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
)

// hourly makes one backup an hour over days days, ending at end.
func hourly(end time.Time, days int) []backup.Manifest {
	var out []backup.Manifest
	for t := end.Add(-time.Duration(days*24-1) * time.Hour); !t.After(end); t = t.Add(time.Hour) {
		out = append(out, backup.Manifest{ID: t.Format("20060102T150405Z"), StartedAt: t})
	}
	return out
}

func kept(ds []backup.Decision) []string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.ID)
		}
	}
	sort.Strings(out)
	return out
}

func ids(times ...string) []string {
	out := make([]string, len(times))
	for i, s := range times {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		out[i] = t.Format("20060102T150405Z")
	}
	sort.Strings(out)
	return out
}

func TestSelectOnNinetyDaysOfHourlyBackups(t *testing.T) {
	t.Parallel()
	end := time.Date(2026, 3, 31, 23, 0, 0, 0, time.UTC)
	h := hourly(end, 90)
	require.Len(t, h, 2160)

	cases := []struct {
		name   string
		policy backup.Policy
		want   []string
		count  int
	}{
		{"last 3", backup.Policy{KeepLast: 3}, ids("2026-03-31T21:00:00Z", "2026-03-31T22:00:00Z", "2026-03-31T23:00:00Z"), 3},
		{"daily 3: the newest of each day", backup.Policy{KeepDaily: 3}, ids("2026-03-29T23:00:00Z", "2026-03-30T23:00:00Z", "2026-03-31T23:00:00Z"), 3},
		{"monthly 3", backup.Policy{KeepMonthly: 3}, ids("2026-01-31T23:00:00Z", "2026-02-28T23:00:00Z", "2026-03-31T23:00:00Z"), 3},
		// ISO weeks: 2026-03-31 is a Tuesday (W14); W13 ends Sunday 03-29, W12 ends 03-22
		{"weekly 3", backup.Policy{KeepWeekly: 3}, ids("2026-03-22T23:00:00Z", "2026-03-29T23:00:00Z", "2026-03-31T23:00:00Z"), 3},
		{"within 1d (inclusive)", backup.Policy{KeepWithin: backup.Span{Days: 1}}, nil, 25},
		{"within 1m is a calendar month", backup.Policy{KeepWithin: backup.Span{Months: 1}}, nil, 31*24 + 1},
		// union: 24 hourly + 6 older dailies + weekly/monthly beyond them
		{"last 24 + daily 7 + weekly 4 + monthly 3", backup.Policy{KeepLast: 24, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 3}, nil, 24 + 6 + 2 + 2},
	}
	for _, c := range cases {
		got := kept(backup.Select(h, c.policy))
		if c.want != nil {
			require.Equal(t, c.want, got, c.name)
		}
		require.Len(t, got, c.count, c.name)
	}
}

func TestSelectAcrossGaps(t *testing.T) {
	t.Parallel()
	// daily backups at 02:00, with 10 days missing (an outage)
	var bs []backup.Manifest
	for d := 1; d <= 30; d++ {
		if d >= 11 && d <= 20 {
			continue
		}
		ts := time.Date(2026, 6, d, 2, 0, 0, 0, time.UTC)
		bs = append(bs, backup.Manifest{ID: ts.Format("20060102T150405Z"), StartedAt: ts})
	}
	// keep-daily counts days that have a backup: it reaches across the gap
	got := kept(backup.Select(bs, backup.Policy{KeepDaily: 12}))
	require.Len(t, got, 12)
	require.Equal(t, "20260609T020000Z", got[0])
	// keep-within counts back from the newest backup: the gap is not refilled
	got = kept(backup.Select(bs, backup.Policy{KeepWithin: backup.Span{Days: 15}}))
	require.Len(t, got, 10) // days 21-30; day 15 would be in range but does not exist
}

func TestSelectWithClockSkew(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	bs := []backup.Manifest{
		// IDs sort differently from times: a node with a slow clock named it
		{ID: "b-zzz", StartedAt: base.Add(-5 * time.Minute)},
		{ID: "b-aaa", StartedAt: base},
		{ID: "b-mmm", StartedAt: base.Add(-24 * time.Hour)},
		// two backups with the same second
		{ID: "b-tie1", StartedAt: base.Add(-48 * time.Hour)},
		{ID: "b-tie2", StartedAt: base.Add(-48 * time.Hour)},
	}
	ds := backup.Select(bs, backup.Policy{KeepLast: 1})
	require.Equal(t, []string{"b-aaa"}, kept(ds), "the newest by time, not by name")
	require.Equal(t, []string{"b-aaa", "b-mmm", "b-tie2"}, kept(backup.Select(bs, backup.Policy{KeepDaily: 3})))
	require.Len(t, ds, len(bs))
}

func TestNewestAndNewestVerifiedAreNeverDeleted(t *testing.T) {
	t.Parallel()
	end := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	h := hourly(end, 3)
	h[10].Verification = &backup.VerifyResult{OK: true}
	h[20].Verification = &backup.VerifyResult{OK: true}
	h[40].Verification = &backup.VerifyResult{OK: false} // newer, but failed
	ds := backup.Select(h, backup.Policy{KeepLast: 1})
	got := kept(ds)
	require.Equal(t, []string{h[20].ID, h[len(h)-1].ID}, got)
	for _, d := range ds {
		if d.ID == h[20].ID {
			require.Contains(t, d.Reasons, "newest verified")
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	require.ErrorContains(t, backup.Policy{}.Validate(), "empty retention policy")
	require.ErrorContains(t, backup.Policy{KeepLast: -1}.Validate(), "negative")
	require.NoError(t, backup.Policy{KeepWithin: backup.Span{Hours: 1}}.Validate())
}

func TestParseSpan(t *testing.T) {
	t.Parallel()
	good := map[string]backup.Span{
		"30d":        {Days: 30},
		"12h":        {Hours: 12},
		"2w":         {Days: 14},
		"6m":         {Months: 6},
		"1y":         {Years: 1},
		"1y6m2w3d4h": {Years: 1, Months: 6, Days: 17, Hours: 4},
	}
	for in, want := range good {
		got, err := backup.ParseSpan(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", " ", "30", "d", "1.5d", "-3d", "3d1y", "30s", "1 d", "99999999999999999999d"} {
		_, err := backup.ParseSpan(in)
		require.Error(t, err, "%q", in)
	}
}

// FuzzParseSpan: no panic; what parses prints back to the same span.
func FuzzParseSpan(f *testing.F) {
	for _, s := range []string{"30d", "1y6m", "2w3d12h", "", "5", "m", "1y1y", "0d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		span, err := backup.ParseSpan(s)
		if err != nil {
			return
		}
		if span.IsZero() {
			return
		}
		again, err := backup.ParseSpan(span.String())
		require.NoError(t, err)
		require.Equal(t, span, again)
	})
}

// FuzzRetention: whatever the flags and history, the invariants hold.
func FuzzRetention(f *testing.F) {
	f.Add(uint64(1), 3, "30d", 7, 4, 12, 100)
	f.Add(uint64(2), 0, "", 0, 0, 1, 5)
	f.Add(uint64(3), 1, "1y", 0, 0, 0, 1)
	f.Fuzz(func(t *testing.T, seed uint64, last int, within string, daily, weekly, monthly, n int) {
		if n < 0 || n > 500 {
			return
		}
		p := backup.Policy{KeepLast: last, KeepDaily: daily, KeepWeekly: weekly, KeepMonthly: monthly}
		if within != "" {
			span, err := backup.ParseSpan(within)
			if err != nil {
				return
			}
			p.KeepWithin = span
		}
		if p.Validate() != nil {
			return
		}
		r := rand.New(rand.NewPCG(seed, 99))
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		bs := make([]backup.Manifest, n)
		newest, newestVerified := -1, -1
		for i := range bs {
			ts := base.Add(time.Duration(r.Int64N(int64(400 * 24 * time.Hour))))
			bs[i] = backup.Manifest{ID: fmt.Sprintf("b%04d", i), StartedAt: ts}
			if r.IntN(5) == 0 {
				bs[i].Verification = &backup.VerifyResult{OK: r.IntN(2) == 0}
			}
		}
		for i := range bs {
			if newest < 0 || bs[i].StartedAt.After(bs[newest].StartedAt) || (bs[i].StartedAt.Equal(bs[newest].StartedAt) && bs[i].ID > bs[newest].ID) {
				newest = i
			}
		}
		for i := range bs {
			if !bs[i].Verified() {
				continue
			}
			if newestVerified < 0 || bs[i].StartedAt.After(bs[newestVerified].StartedAt) || (bs[i].StartedAt.Equal(bs[newestVerified].StartedAt) && bs[i].ID > bs[newestVerified].ID) {
				newestVerified = i
			}
		}
		ds := backup.Select(bs, p)
		require.Len(t, ds, n)
		keep := map[string]bool{}
		nKept := 0
		for _, d := range ds {
			keep[d.ID] = d.Keep
			if d.Keep {
				nKept++
				require.NotEmpty(t, d.Reasons)
			} else {
				require.Empty(t, d.Reasons)
			}
		}
		if n > 0 {
			require.True(t, keep[bs[newest].ID], "newest deleted")
			require.GreaterOrEqual(t, nKept, min(max(last, 1), n))
		}
		if newestVerified >= 0 {
			require.True(t, keep[bs[newestVerified].ID], "newest verified deleted")
		}
	})
}

func TestSpanBeforeClampsToMonthEnd(t *testing.T) {
	t.Parallel()
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	cases := []struct {
		span backup.Span
		from string
		want string
	}{
		{backup.Span{Months: 1}, "2026-03-31T23:00:00Z", "2026-02-28T23:00:00Z"},
		{backup.Span{Months: 1}, "2024-03-31T10:00:00Z", "2024-02-29T10:00:00Z"},
		{backup.Span{Months: 13}, "2026-01-15T00:00:00Z", "2024-12-15T00:00:00Z"},
		{backup.Span{Years: 1}, "2028-02-29T00:00:00Z", "2027-02-28T00:00:00Z"},
		{backup.Span{Days: 1, Hours: 2}, "2026-03-01T01:00:00Z", "2026-02-27T23:00:00Z"},
	}
	for _, c := range cases {
		require.Equal(t, at(c.want), c.span.Before(at(c.from)), "%s before %s", c.span, c.from)
	}
}

// TestGroupBySource: backups are told apart by kind, cluster and database;
// a manifest written before the cluster was recorded joins the one group
// of its database that has it, and stays apart when two clusters hold a
// database of that name (it cannot be told which it belongs to).
func TestGroupBySource(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	mk := func(db, sysid string, physical bool) backup.Manifest {
		n++
		m := backup.Manifest{ID: fmt.Sprintf("b%02d", n), StartedAt: t0.Add(time.Duration(n) * time.Hour), Database: db, SystemIdentifier: sysid}
		if physical {
			m.Kind = backup.KindPhysical
			m.Physical = &backup.PhysicalInfo{SystemIdentifier: sysid}
			m.SystemIdentifier = ""
		}
		return m
	}
	ids := func(gs []backup.SourceGroup) [][]string {
		var out [][]string
		for _, g := range gs {
			var s []string
			for _, m := range g.Backups {
				s = append(s, m.ID)
			}
			out = append(out, s)
		}
		return out
	}

	// one deployment across an upgrade of spiredb: one group
	upgrade := []backup.Manifest{mk("spire", "", false), mk("spire", "", false), mk("spire", "71", false), mk("spire", "71", true)}
	require.Equal(t, [][]string{{"b01", "b02", "b03"}, {"b04"}}, ids(backup.GroupBySource(upgrade)))

	// two clusters with a database named spire, and old manifests of it
	n = 0
	shared := []backup.Manifest{mk("spire", "", false), mk("spire", "71", false), mk("spire", "72", false), mk("spire", "71", false), mk("other", "71", false)}
	gs := backup.GroupBySource(shared)
	require.Equal(t, [][]string{{"b01"}, {"b03"}, {"b02", "b04"}, {"b05"}}, ids(gs), "groups in the order of their newest backups")
	require.Equal(t, "database spire", gs[0].Source.String())
	require.Equal(t, "database spire of cluster 72", gs[1].Source.String())
	require.Equal(t, "database other of cluster 71", gs[3].Source.String())

	// retention per group: keep-last 1 keeps each group's newest
	var kept []string
	for _, d := range backup.Select(shared, backup.Policy{KeepLast: 1}) {
		if d.Keep {
			kept = append(kept, d.ID)
		}
	}
	require.Equal(t, []string{"b05"}, kept, "Select alone sees one list")
}

// A physical manifest without its physical block (damaged, hand-written)
// is a source of unknown cluster, not a panic.
func TestSourceOfAPhysicalManifestWithoutItsBlock(t *testing.T) {
	m := backup.Manifest{ID: "b1", Kind: backup.KindPhysical}
	require.Equal(t, "cluster (unknown)", m.Source().String())
	require.Len(t, backup.GroupBySource([]backup.Manifest{m}), 1)
	require.False(t, backup.Source{Kind: backup.KindLogical, SystemIdentifier: "7", Database: "spire"}.Restores(&m))
}
