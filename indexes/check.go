package indexes

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// Finding is one index problem, with the SQL that fixes it.
type Finding struct {
	Kind     string `json:"kind"`     // invalid, duplicate, unused, bloat
	Severity string `json:"severity"` // error or warning
	Table    string `json:"table"`
	Index    string `json:"index"`
	Detail   string `json:"detail"`
	Fix      string `json:"fix"`
}

// Report is `indexes check`.
type Report struct {
	Schema string `json:"schema"`
	// StatsSince is when the index scan counters started (the database's
	// statistics reset, or the server's start).
	StatsSince time.Time `json:"stats_since"`
	// Replicas is how many standbys' scan counts were added.
	Replicas int       `json:"replicas"`
	Indexes  int       `json:"indexes"`
	Findings []Finding `json:"findings"`
}

// CheckOptions tune the check.
type CheckOptions struct {
	// Replicas are connections to standbys (SPIRE's ro_connection_string
	// reads there): an index scanned on any of them is not unused.
	Replicas []*pgx.Conn
	// MinBloatBytes and MinBloatRatio: an index is reported bloated when
	// it is larger than its estimated fresh size by both (default 1 MiB and
	// 2×).
	MinBloatBytes int64
	MinBloatRatio float64
	// MinUnusedBytes skips unused indexes smaller than this (default 0).
	MinUnusedBytes int64
}

// Check looks for invalid, duplicate, unused and bloated indexes on SPIRE's
// tables. It never proposes dropping a unique, primary-key or constraint
// index, nor one SPIRE creates; an index a standby scans is not unused.
func Check(ctx context.Context, conn *pgx.Conn, opts CheckOptions) (*Report, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.MinBloatBytes == 0 {
		opts.MinBloatBytes = 1 << 20
	}
	if opts.MinBloatRatio == 0 {
		opts.MinBloatRatio = 2
	}
	s, err := spireSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	live, err := ReadLive(ctx, conn, s.Schema)
	if err != nil {
		return nil, err
	}
	r := &Report{Schema: s.Schema, Indexes: len(live), Replicas: len(opts.Replicas), Findings: []Finding{}}
	since, err := statsSince(ctx, conn)
	if err != nil {
		return nil, err
	}
	r.StatsSince = since
	for i, rc := range opts.Replicas {
		replicaLive, err := ReadLive(ctx, rc, s.Schema)
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i+1, err)
		}
		scans := map[string]int64{}
		for _, l := range replicaLive {
			scans[l.Name] = l.Scans
		}
		for k := range live {
			live[k].Scans += scans[live[k].Name]
		}
		rs, err := statsSince(ctx, rc)
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i+1, err)
		}
		if rs.After(r.StatsSince) {
			r.StatsSince = rs
		}
	}
	r.Findings = append(r.Findings, invalidFindings(live)...)
	dups := duplicateFindings(live)
	r.Findings = append(r.Findings, dups...)
	for _, f := range unusedFindings(live, r.StatsSince, opts) {
		// a duplicate is already proposed for dropping
		if !slices.ContainsFunc(dups, func(d Finding) bool { return d.Index == f.Index }) {
			r.Findings = append(r.Findings, f)
		}
	}
	r.Findings = append(r.Findings, bloatFindings(live, opts)...)
	return r, nil
}

func statsSince(ctx context.Context, conn *pgx.Conn) (time.Time, error) {
	var t time.Time
	err := conn.QueryRow(ctx, pg.Marker+`SELECT coalesce((SELECT stats_reset FROM pg_catalog.pg_stat_database WHERE datname = pg_catalog.current_database()),
		pg_catalog.pg_postmaster_start_time())`).Scan(&t)
	if err != nil {
		return t, fmt.Errorf("reading the statistics reset time: %w", err)
	}
	return t, nil
}

func qualified(l Live) string { return pgx.Identifier{l.Schema, l.Name}.Sanitize() }

func invalidFindings(live []Live) []Finding {
	var out []Finding
	for _, l := range live {
		if l.Valid || l.Building {
			continue
		}
		fix := "DROP INDEX CONCURRENTLY " + qualified(l) + ";"
		if _, ok := Lookup(l.Name); ok {
			fix += " -- then: spiredb indexes apply --only " + l.Name
		} else {
			fix += " " + strings.Replace(l.Definition, "CREATE INDEX ", "CREATE INDEX CONCURRENTLY ", 1) + ";"
			if l.Unique {
				fix = "DROP INDEX CONCURRENTLY " + qualified(l) + "; " + strings.Replace(l.Definition, "CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX CONCURRENTLY ", 1) + ";"
			}
		}
		out = append(out, Finding{Kind: "invalid", Severity: "error", Table: l.Table, Index: l.Name,
			Detail: "INVALID (a failed or cancelled concurrent build): never used for reads, still maintained on every write",
			Fix:    fix})
	}
	return out
}

// covers reports whether index b makes a redundant: same table and access
// method and predicate, a's keys a prefix of b's, a's INCLUDE columns all in
// b, and a not enforcing a uniqueness b does not.
func covers(b, a Live) bool {
	if a.Table != b.Table || a.Method != b.Method || a.Predicate != b.Predicate || !b.Valid {
		return false
	}
	if len(a.Keys) > len(b.Keys) || !slices.Equal(a.Keys, b.Keys[:len(a.Keys)]) {
		return false
	}
	for _, c := range a.Include {
		if !slices.Contains(b.Keys, c) && !slices.Contains(b.Include, c) {
			return false
		}
	}
	if a.Unique && (!b.Unique || len(a.Keys) != len(b.Keys)) {
		return false
	}
	return a.Method == "btree" || len(a.Keys) == len(b.Keys)
}

func duplicateFindings(live []Live) []Finding {
	var out []Finding
	reported := map[string]bool{}
	for _, a := range live {
		if !a.Valid || a.Protected() || reported[a.Name] {
			continue
		}
		for _, b := range live {
			if a.Name == b.Name || !covers(b, a) {
				continue
			}
			// of two identical unprotected indexes, report one
			if covers(a, b) && !b.Protected() && b.Name < a.Name {
				continue
			}
			owner := ""
			if b.SpireOwned() {
				owner = " (SPIRE's own)"
			}
			what := "a prefix of"
			if slices.Equal(a.Keys, b.Keys) {
				what = "the same as"
			}
			out = append(out, Finding{Kind: "duplicate", Severity: "warning", Table: a.Table, Index: a.Name,
				Detail: fmt.Sprintf("%s is %s %s%s, which serves the same lookups: %s of writes and storage for nothing",
					strings.Join(a.Keys, ", "), what, b.Name, owner, humanize.IBytes(uint64(a.Bytes))),
				Fix: "DROP INDEX CONCURRENTLY " + qualified(a) + ";"})
			reported[a.Name] = true
			break
		}
	}
	return out
}

func unusedFindings(live []Live, since time.Time, opts CheckOptions) []Finding {
	var out []Finding
	for _, l := range live {
		if !l.Valid || l.Scans > 0 || l.Protected() || l.Bytes < opts.MinUnusedBytes {
			continue
		}
		if _, ok := Lookup(l.Name); ok {
			// the set is benchmark-proven; its prune indexes are used
			// every 5 minutes to 6 hours
			continue
		}
		where := "the primary"
		if len(opts.Replicas) > 0 {
			where = fmt.Sprintf("the primary or any of %d standbys", len(opts.Replicas))
		}
		out = append(out, Finding{Kind: "unused", Severity: "warning", Table: l.Table, Index: l.Name,
			Detail: fmt.Sprintf("no scan on %s since %s (%s): check standbys that serve reads with --replica-dsn before dropping",
				where, since.UTC().Format(time.DateTime), humanize.IBytes(uint64(l.Bytes))),
			Fix: "DROP INDEX CONCURRENTLY " + qualified(l) + ";"})
	}
	return out
}

func bloatFindings(live []Live, opts CheckOptions) []Finding {
	var out []Finding
	for _, l := range live {
		if !l.Valid || l.EstimatedBytes == 0 || l.Bytes-l.EstimatedBytes < opts.MinBloatBytes ||
			float64(l.Bytes) < opts.MinBloatRatio*float64(l.EstimatedBytes) {
			continue
		}
		out = append(out, Finding{Kind: "bloat", Severity: "warning", Table: l.Table, Index: l.Name,
			Detail: fmt.Sprintf("%s, about %s when rebuilt (estimate from row count and column widths)",
				humanize.IBytes(uint64(l.Bytes)), humanize.IBytes(uint64(l.EstimatedBytes))),
			Fix: "REINDEX INDEX CONCURRENTLY " + qualified(l) + ";"})
	}
	return out
}
