package tuning

import (
	"cmp"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/spire"
)

// Group is one statement shape: every pg_stat_statements row whose text has
// the same pg_query fingerprint, across query ids, users and IN-list
// lengths. Times are milliseconds.
type Group struct {
	Fingerprint string `json:"fingerprint"`
	// Label is the SPIRE operation, "" for a statement SPIRE does not run.
	Label string `json:"label,omitempty"`
	// Query is the text of the member with the most time.
	Query    string  `json:"query"`
	QueryIDs []int64 `json:"queryids"`
	// UserIDs are the roles (oids) that ran the shape's statements.
	UserIDs []uint32 `json:"userids"`
	// ParseError is set when the text could not be parsed (a truncated or
	// foreign statement): the group is then its query id alone.
	ParseError  string  `json:"parse_error,omitempty"`
	Calls       int64   `json:"calls"`
	TotalMs     float64 `json:"total_ms"`
	ExecMs      float64 `json:"exec_ms"`
	PlanMs      float64 `json:"plan_ms"`
	MeanMs      float64 `json:"mean_ms"`
	Rows        int64   `json:"rows"`
	SharedHit   int64   `json:"shared_blks_hit"`
	SharedRead  int64   `json:"shared_blks_read"`
	TempBlocks  int64   `json:"temp_blks"`
	IOMs        float64 `json:"io_ms"`
	Share       float64 `json:"share"`
	topMemberMs float64
}

// HitPercent is the share of shared-buffer reads served from the cache
// (100 when nothing was read).
func (g *Group) HitPercent() float64 {
	if n := g.SharedHit + g.SharedRead; n > 0 {
		return 100 * float64(g.SharedHit) / float64(n)
	}
	return 100
}

func (g *Group) add(s Statement) {
	g.QueryIDs = append(g.QueryIDs, s.QueryID)
	if !slices.Contains(g.UserIDs, s.UserID) {
		g.UserIDs = append(g.UserIDs, s.UserID)
	}
	g.Calls += s.Calls
	g.ExecMs += s.ExecMs
	g.PlanMs += s.PlanMs
	g.TotalMs += s.TotalMs()
	g.Rows += s.Rows
	g.SharedHit += s.SharedHit
	g.SharedRead += s.SharedRead
	g.TempBlocks += s.TempRead + s.TempWritten
	g.IOMs += s.IOMs
	if g.Query == "" || s.TotalMs() > g.topMemberMs {
		g.Query, g.topMemberMs = s.Query, s.TotalMs()
	}
}

// Operation is the database time of one SPIRE operation ("" for statements
// SPIRE does not run).
type Operation struct {
	Label   string  `json:"label"`
	Shapes  int     `json:"shapes"`
	Calls   int64   `json:"calls"`
	TotalMs float64 `json:"total_ms"`
	Share   float64 `json:"share"`
}

type fingerprinted struct {
	fp, err string
}

// fingerprintAll fingerprints texts on every core: pg_query parses in C
// and 10,000 rows of SPIRE's long reload statements take a while on one.
func fingerprintAll(stmts []Statement) []fingerprinted {
	out := make([]fingerprinted, len(stmts))
	// rows of different users share a text: parse each text once
	first := make(map[string]int, len(stmts))
	var todo []int
	for i, s := range stmts {
		if _, ok := first[s.Query]; !ok {
			first[s.Query] = i
			todo = append(todo, i)
		}
	}
	workers := min(runtime.GOMAXPROCS(0), max(1, len(todo)/64))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := w; k < len(todo); k += workers {
				i := todo[k]
				fp, err := spire.Fingerprint(stmts[i].Query)
				if err != nil {
					out[i] = fingerprinted{fp: fmt.Sprintf("queryid:%d", stmts[i].QueryID), err: err.Error()}
					continue
				}
				out[i] = fingerprinted{fp: fp}
			}
		})
	}
	wg.Wait()
	for i, s := range stmts {
		if j := first[s.Query]; j != i {
			out[i] = out[j]
		}
	}
	return out
}

// GroupStatements merges statements by fingerprint, labels each group with
// its SPIRE operation, and computes each group's share of the total time.
// Groups come out by total time, largest first.
func GroupStatements(stmts []Statement) []Group {
	fps := fingerprintAll(stmts)
	index := make(map[string]int)
	var groups []Group
	var total float64
	for i, s := range stmts {
		total += s.TotalMs()
		k, ok := index[fps[i].fp]
		if !ok {
			k = len(groups)
			index[fps[i].fp] = k
			groups = append(groups, Group{Fingerprint: fps[i].fp, ParseError: fps[i].err})
			if fps[i].err == "" {
				groups[k].Label = spire.Label(fps[i].fp)
			}
		}
		groups[k].add(s)
	}
	for i := range groups {
		g := &groups[i]
		if g.Calls > 0 {
			g.MeanMs = g.TotalMs / float64(g.Calls)
		}
		if total > 0 {
			g.Share = g.TotalMs / total
		}
		slices.Sort(g.QueryIDs)
		slices.Sort(g.UserIDs)
	}
	SortGroups(groups, "total")
	return groups
}

// SortKeys are the orders `stats top --by` accepts.
var SortKeys = []string{"total", "mean", "calls", "io", "rows"}

// SortGroups orders groups by a SortKeys key, largest first: io is blocks
// read from outside shared buffers (shared reads and temp files), which
// needs no track_io_timing.
func SortGroups(groups []Group, by string) {
	key := func(g *Group) float64 {
		switch by {
		case "mean":
			return g.MeanMs
		case "calls":
			return float64(g.Calls)
		case "io":
			return float64(g.SharedRead + g.TempBlocks)
		case "rows":
			return float64(g.Rows)
		}
		return g.TotalMs
	}
	slices.SortStableFunc(groups, func(a, b Group) int {
		if c := cmp.Compare(key(&b), key(&a)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.TotalMs, a.TotalMs); c != 0 {
			return c
		}
		return cmp.Compare(a.Fingerprint, b.Fingerprint)
	})
}

// Operations sums groups per SPIRE operation, largest first; statements
// SPIRE does not run are one line with an empty label.
func Operations(groups []Group) []Operation {
	index := map[string]int{}
	var ops []Operation
	for _, g := range groups {
		k, ok := index[g.Label]
		if !ok {
			k = len(ops)
			index[g.Label] = k
			ops = append(ops, Operation{Label: g.Label})
		}
		ops[k].Shapes++
		ops[k].Calls += g.Calls
		ops[k].TotalMs += g.TotalMs
		ops[k].Share += g.Share
	}
	slices.SortStableFunc(ops, func(a, b Operation) int {
		if c := cmp.Compare(b.TotalMs, a.TotalMs); c != 0 {
			return c
		}
		return cmp.Compare(a.Label, b.Label)
	})
	return ops
}

// TopOptions select and order a report.
type TopOptions struct {
	By    string // a SortKeys key; default total
	Limit int    // groups to keep; 0 keeps all
}

// Report is `stats top`: the statement shapes of one database.
type Report struct {
	Source     Source      `json:"source"`
	TotalMs    float64     `json:"total_ms"`
	Statements int         `json:"statements"`
	Shapes     int         `json:"shapes"`
	By         string      `json:"by"`
	Groups     []Group     `json:"groups"`
	Operations []Operation `json:"operations"`
}

// TopStatements reads pg_stat_statements and reports its statement shapes.
func TopStatements(ctx context.Context, conn *pgx.Conn, opts TopOptions) (*Report, error) {
	stmts, src, err := ReadStatements(ctx, conn)
	if err != nil {
		return nil, err
	}
	return NewReport(stmts, src, opts)
}

// NewReport groups statements into a report.
func NewReport(stmts []Statement, src Source, opts TopOptions) (*Report, error) {
	if opts.By == "" {
		opts.By = "total"
	}
	if !slices.Contains(SortKeys, opts.By) {
		return nil, fmt.Errorf("invalid sort key %q: want one of %v", opts.By, SortKeys)
	}
	groups := GroupStatements(stmts)
	r := &Report{Source: src, Statements: len(stmts), Shapes: len(groups), By: opts.By, Operations: Operations(groups)}
	for _, s := range stmts {
		r.TotalMs += s.TotalMs()
	}
	SortGroups(groups, opts.By)
	if opts.Limit > 0 && len(groups) > opts.Limit {
		groups = groups[:opts.Limit]
	}
	r.Groups = groups
	if r.Groups == nil {
		r.Groups = []Group{}
	}
	if r.Operations == nil {
		r.Operations = []Operation{}
	}
	return r, nil
}
