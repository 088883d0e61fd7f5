package backup

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Policy is a restic-style retention policy: a backup is kept when any rule
// keeps it (the union of the rules). Zero fields are off.
type Policy struct {
	KeepLast    int  `json:"keep_last,omitempty"`
	KeepWithin  Span `json:"keep_within,omitzero"`
	KeepDaily   int  `json:"keep_daily,omitempty"`
	KeepWeekly  int  `json:"keep_weekly,omitempty"`
	KeepMonthly int  `json:"keep_monthly,omitempty"`
}

// Empty reports whether no rule is set.
func (p Policy) Empty() bool {
	return p.KeepLast <= 0 && p.KeepWithin.IsZero() && p.KeepDaily <= 0 && p.KeepWeekly <= 0 && p.KeepMonthly <= 0
}

// Validate refuses an empty policy and negative counts.
func (p Policy) Validate() error {
	if p.KeepLast < 0 || p.KeepDaily < 0 || p.KeepWeekly < 0 || p.KeepMonthly < 0 {
		return errors.New("retention counts must not be negative")
	}
	if p.Empty() {
		return errors.New("empty retention policy: give at least one of --keep-last, --keep-within, --keep-daily, --keep-weekly, --keep-monthly")
	}
	return nil
}

// Span is a calendar duration: years, months, days and hours, applied with
// time.AddDate so that "1m" is a calendar month.
type Span struct {
	Years, Months, Days, Hours int
}

// IsZero reports whether s is empty.
func (s Span) IsZero() bool { return s == Span{} }

func (s Span) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{s.Years, "y"}, {s.Months, "m"}, {s.Days, "d"}, {s.Hours, "h"}} {
		if p.n != 0 {
			fmt.Fprintf(&b, "%d%s", p.n, p.unit)
		}
	}
	return b.String()
}

// MarshalText writes the span as ParseSpan reads it.
func (s Span) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Before returns t minus the span. Years and months are calendar steps
// clamped to the end of a shorter month (one month before March 31 is
// February 28, not March 3 as time.AddDate would normalize it).
func (s Span) Before(t time.Time) time.Time {
	y, m, d := t.Date()
	months := int(m) - 1 - s.Years*12 - s.Months
	ty, tm := y+floorDiv(months, 12), time.Month(months-12*floorDiv(months, 12)+1)
	lastDay := time.Date(ty, tm+1, 0, 0, 0, 0, 0, t.Location()).Day()
	hh, mm, ss := t.Clock()
	back := time.Date(ty, tm, min(d, lastDay), hh, mm, ss, t.Nanosecond(), t.Location())
	return back.AddDate(0, 0, -s.Days).Add(-time.Duration(s.Hours) * time.Hour)
}

func floorDiv(a, b int) int {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

var spanRE = regexp.MustCompile(`^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$`)

// ParseSpan reads restic's duration form: a sequence of NUMBER UNIT with
// units y (years), m (months), w (weeks), d (days), h (hours), in that
// order, e.g. "30d", "1y6m", "2w3d12h".
func ParseSpan(s string) (Span, error) {
	m := spanRE.FindStringSubmatch(strings.TrimSpace(s))
	if s == "" || m == nil || strings.TrimSpace(s) == "" {
		return Span{}, fmt.Errorf("invalid duration %q: want e.g. 30d, 12h, 2w, 6m (months), 1y or a combination like 1y6m", s)
	}
	var n [5]int
	for i := range n {
		if m[i+1] == "" {
			continue
		}
		v, err := strconv.Atoi(m[i+1])
		if err != nil || v > 100000 {
			return Span{}, fmt.Errorf("invalid duration %q: number out of range", s)
		}
		n[i] = v
	}
	return Span{Years: n[0], Months: n[1], Days: 7*n[2] + n[3], Hours: n[4]}, nil
}

// Decision is what the policy does with one backup.
type Decision struct {
	ID        string    `json:"id"`
	StartedAt time.Time `json:"started_at"`
	Keep      bool      `json:"keep"`
	Reasons   []string  `json:"reasons,omitempty"`
	// Source names the database or cluster the backup is of (prune
	// applies the policy to each source apart).
	Source string `json:"source,omitempty"`
}

// Select applies p to backups. It never drops the newest backup nor the
// newest successfully verified one. Time buckets are UTC; "within" counts
// back from the newest backup, not from the clock, so a skewed clock cannot
// make it delete everything.
func Select(backups []Manifest, p Policy) []Decision {
	bs := append([]Manifest(nil), backups...)
	sort.SliceStable(bs, func(i, j int) bool {
		if !bs[i].StartedAt.Equal(bs[j].StartedAt) {
			return bs[i].StartedAt.After(bs[j].StartedAt)
		}
		return bs[i].ID > bs[j].ID
	})
	out := make([]Decision, len(bs))
	for i, b := range bs {
		out[i] = Decision{ID: b.ID, StartedAt: b.StartedAt}
	}
	if len(bs) == 0 {
		return out
	}
	keep := func(i int, why string) {
		out[i].Keep = true
		out[i].Reasons = append(out[i].Reasons, why)
	}
	keep(0, "newest")
	for i := range bs {
		if bs[i].Verified() {
			if i > 0 {
				keep(i, "newest verified")
			}
			break
		}
	}
	for i := 0; i < len(bs) && i < p.KeepLast; i++ {
		keep(i, fmt.Sprintf("last %d", p.KeepLast))
	}
	if !p.KeepWithin.IsZero() {
		cutoff := p.KeepWithin.Before(bs[0].StartedAt)
		for i := range bs {
			if !bs[i].StartedAt.Before(cutoff) {
				keep(i, "within "+p.KeepWithin.String())
			}
		}
	}
	bucketRule := func(n int, name string, bucket func(time.Time) string) {
		last := ""
		for i := 0; i < len(bs) && n > 0; i++ {
			b := bucket(bs[i].StartedAt.UTC())
			if b == last {
				continue
			}
			last = b
			keep(i, name+" "+b)
			n--
		}
	}
	bucketRule(p.KeepDaily, "daily", func(t time.Time) string { return t.Format("2006-01-02") })
	bucketRule(p.KeepWeekly, "weekly", func(t time.Time) string {
		y, w := t.ISOWeek()
		return fmt.Sprintf("%d-W%02d", y, w)
	})
	bucketRule(p.KeepMonthly, "monthly", func(t time.Time) string { return t.Format("2006-01") })
	return out
}
