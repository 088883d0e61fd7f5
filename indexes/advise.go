package indexes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// AdviseOptions tune the advisor.
type AdviseOptions struct {
	// MinGain is the least fraction of planner cost an index must cut from
	// a statement to be recommended (default 0.5: half).
	MinGain float64
	// Statements is how many of pg_stat_statements' top shapes (by total
	// time) are tried (default 20).
	Statements int
}

// Advice is one recommended index and the statements it speeds up.
type Advice struct {
	Candidate
	SQL string `json:"sql"`
	// EstimatedBytes is hypopg's estimate of the index's size.
	EstimatedBytes int64      `json:"estimated_bytes"`
	Statements     []Improved `json:"statements"`
	WriteCost      WriteCost  `json:"write_cost"`
	InSet          string     `json:"in_set,omitempty"` // the set index it matches, if any
}

// Improved is a statement an advised index makes cheaper.
type Improved struct {
	Label      string  `json:"label,omitempty"`
	Query      string  `json:"query"`
	Calls      int64   `json:"calls"`
	TotalMs    float64 `json:"total_ms"`
	CostBefore float64 `json:"cost_before"`
	CostAfter  float64 `json:"cost_after"`
	Gain       float64 `json:"gain"`
}

// WriteCost estimates what another index costs the table's writes.
type WriteCost struct {
	Table string `json:"table"`
	// Writes are the table's inserts, non-HOT updates and deletes since
	// the statistics reset: each will also maintain the new index.
	Writes  int64 `json:"writes"`
	Indexes int   `json:"indexes"` // indexes the table has now
}

// AdviseReport is `indexes advise`.
type AdviseReport struct {
	Hypopg     string   `json:"hypopg"`
	Considered int      `json:"considered"`
	Skipped    []string `json:"skipped"`
	Advice     []Advice `json:"advice"`
}

// HypopgError says hypopg cannot be used and how to get it.
type HypopgError struct {
	Database  string
	Available bool
}

func (e *HypopgError) Error() string {
	if e.Available {
		return fmt.Sprintf("hypopg is installed on the server but not created in database %q: run CREATE EXTENSION hypopg; there (it only adds functions; hypothetical indexes live in the session)", e.Database)
	}
	return fmt.Sprintf("hypopg is not installed on the server: install it (Debian: apt install postgresql-15-hypopg; RDS and Cloud SQL ship it), then CREATE EXTENSION hypopg; in database %q", e.Database)
}

// Advise tries candidate indexes for pg_stat_statements' top statements as
// hypothetical indexes (hypopg: no index is built, nothing is locked) and
// recommends those that cut a statement's planner cost by at least
// MinGain. Statements are planned as SPIRE sent them (the catalog's
// examples with their parameters) or, from PostgreSQL 16, as generic plans.
func Advise(ctx context.Context, conn *pgx.Conn, opts AdviseOptions) (*AdviseReport, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.MinGain <= 0 {
		opts.MinGain = 0.5
	}
	if opts.Statements <= 0 {
		opts.Statements = 20
	}
	s, err := spireSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	r := &AdviseReport{Skipped: []string{}, Advice: []Advice{}}
	var hypo string
	if r.Hypopg, hypo, err = hypopgVersion(ctx, conn); err != nil {
		return nil, err
	}
	top, err := tuning.TopStatements(ctx, conn, tuning.TopOptions{By: "total", Limit: opts.Statements})
	if err != nil {
		return nil, err
	}
	live, err := ReadLive(ctx, conn, s.Schema)
	if err != nil {
		return nil, err
	}
	tables, err := tablesIn(ctx, conn, s.Schema)
	if err != nil {
		return nil, err
	}
	generic := top.Source.ServerVersionNum >= 160000
	examples, err := spireExamples()
	if err != nil {
		return nil, err
	}
	self, roles, err := roleNames(ctx, conn)
	if err != nil {
		return nil, err
	}
	byKey := map[string]*Advice{}
	var order []string
	for _, g := range top.Groups {
		sql, params, how := executable(g, examples, generic)
		if _, known := examples[g.Fingerprint]; sql != "" && !known && slices.ContainsFunc(g.UserIDs, func(u uint32) bool { return u != self }) {
			// The planner evaluates immutable functions in the text: costing
			// another role's text would run its code with spiredb's
			// privileges. Only spiredb's own role's texts and SPIRE's known
			// statements (the catalog's text, not the recorded one) are
			// planned.
			sql, how = "", "run by role "+strings.Join(rolesOf(g.UserIDs, self, roles), ", ")+
				": spiredb plans only its own role's statements and SPIRE's known ones, never another role's text with its privileges"
		}
		if sql == "" {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: %s", clipQuery(g.Query), how))
			continue
		}
		if !isPlannable(sql) {
			continue
		}
		r.Considered++
		cands, err := candidatesFor(sql, params)
		if err != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: %v", clipQuery(g.Query), err))
			continue
		}
		cands = slices.DeleteFunc(cands, func(c Candidate) bool { return !tables[c.Table] || existing(live, c) })
		if len(cands) == 0 {
			continue
		}
		before, err := planCost(ctx, conn, sql, params, generic && params == nil)
		if err != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: EXPLAIN: %v", clipQuery(g.Query), err))
			continue
		}
		var best *Improved
		var bestCand Candidate
		var bestBytes int64
		for _, c := range cands {
			after, bytes, err := hypotheticalCost(ctx, conn, hypo, c.DDL(s.Schema), sql, params, generic && params == nil)
			if err != nil {
				r.Skipped = append(r.Skipped, fmt.Sprintf("%s with %s: %v", clipQuery(g.Query), c.DDL(s.Schema), err))
				continue
			}
			if before <= 0 {
				continue
			}
			gain := 1 - after/before
			if gain >= opts.MinGain && (best == nil || gain > best.Gain) {
				best = &Improved{Label: g.Label, Query: g.Query, Calls: g.Calls, TotalMs: g.TotalMs, CostBefore: before, CostAfter: after, Gain: gain}
				bestCand, bestBytes = c, bytes
			}
		}
		if best == nil {
			continue
		}
		a, ok := byKey[bestCand.key()]
		if !ok {
			a = &Advice{Candidate: bestCand, EstimatedBytes: bestBytes, SQL: createConcurrently(s.Schema, bestCand)}
			a.InSet = inSet(bestCand)
			byKey[bestCand.key()] = a
			order = append(order, bestCand.key())
		}
		a.Statements = append(a.Statements, *best)
	}
	for _, k := range order {
		a := byKey[k]
		wc, err := writeCost(ctx, conn, s.Schema, a.Table, live)
		if err != nil {
			return nil, err
		}
		a.WriteCost = wc
		r.Advice = append(r.Advice, *a)
	}
	return r, nil
}

// roleNames returns the oid of the session's role and every role's name.
func roleNames(ctx context.Context, conn *pgx.Conn) (uint32, map[uint32]string, error) {
	var self uint32
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user").Scan(&self); err != nil {
		return 0, nil, fmt.Errorf("reading the session's role: %w", err)
	}
	rows, err := conn.Query(ctx, pg.Marker+"SELECT oid, rolname FROM pg_catalog.pg_roles")
	if err != nil {
		return 0, nil, fmt.Errorf("reading roles: %w", err)
	}
	names := map[uint32]string{}
	var oid uint32
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&oid, &name}, func() error { names[oid] = name; return nil }); err != nil {
		return 0, nil, fmt.Errorf("reading roles: %w", err)
	}
	return self, names, nil
}

// rolesOf names the roles other than self.
func rolesOf(ids []uint32, self uint32, names map[uint32]string) []string {
	var out []string
	for _, id := range ids {
		if id == self {
			continue
		}
		if n, ok := names[id]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("oid %d", id))
		}
	}
	return out
}

// tablesIn lists the tables of a schema: candidates are kept to SPIRE's
// schema (catalog queries, information_schema, other schemas are left).
func tablesIn(ctx context.Context, conn *pgx.Conn, schema string) (map[string]bool, error) {
	rows, err := conn.Query(ctx, pg.Marker+`SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')`, schema)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// hypopgVersion returns hypopg's version and the schema its functions are
// in: spiredb calls them by that qualified name, so that a function of the
// same name another role put earlier on the search_path is never called.
func hypopgVersion(ctx context.Context, conn *pgx.Conn) (version, schema string, err error) {
	var db string
	var ver, nsp *string
	var available bool
	err = conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_database(),
		(SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hypopg'),
		(SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hypopg'),
		EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'hypopg')`).Scan(&db, &ver, &nsp, &available)
	if err != nil {
		return "", "", err
	}
	if ver == nil || nsp == nil {
		return "", "", &HypopgError{Database: db, Available: available}
	}
	return *ver, *nsp, nil
}

// spireExamples maps fingerprints to the catalog's executions.
func spireExamples() (map[string]*spire.Example, error) {
	c, err := spire.Statements()
	if err != nil {
		return nil, err
	}
	out := map[string]*spire.Example{}
	for _, st := range c.Statements {
		if st.Example == nil {
			continue
		}
		fp, err := spire.Fingerprint(st.Query)
		if err != nil {
			return nil, err
		}
		out[fp] = st.Example
	}
	return out, nil
}

// executable returns SQL the planner can cost for a statement shape.
func executable(g tuning.Group, examples map[string]*spire.Example, generic bool) (sql string, params []*string, why string) {
	if ex, ok := examples[g.Fingerprint]; ok {
		return ex.SQL, ex.Params, ""
	}
	if !strings.Contains(g.Query, "$") {
		return g.Query, nil, ""
	}
	if generic {
		return g.Query, nil, ""
	}
	return "", nil, "its parameters are unknown: PostgreSQL 16 plans such statements generically (EXPLAIN (GENERIC_PLAN)); before 16 only SPIRE's own statements, whose executions spiredb carries, are costed"
}

// isPlannable keeps the statements an index can help: reads and the
// WHERE of updates and deletes.
func isPlannable(sql string) bool {
	s := strings.ToUpper(strings.TrimSpace(sql))
	for _, p := range []string{"SELECT", "WITH", "UPDATE", "DELETE", "("} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func existing(live []Live, c Candidate) bool {
	for _, l := range live {
		if l.Table == c.Table && l.Valid && len(l.Keys) >= len(c.Columns) && slices.Equal(l.Keys[:len(c.Columns)], c.Columns) &&
			(l.Predicate == "" && c.Where == "" || l.Predicate == c.Where) {
			return true
		}
	}
	return false
}

func inSet(c Candidate) string {
	for _, ix := range spireSet {
		if ix.Table == c.Table && slices.Equal(ix.Columns, c.Columns) && ix.Where == c.Where {
			return ix.Name
		}
	}
	return ""
}

func createConcurrently(schema string, c Candidate) string {
	name := "spiredb_advised_" + c.Table + "_" + strings.Join(c.Columns, "_")
	if len(name) > 63 {
		name = name[:63]
	}
	s := fmt.Sprintf("CREATE INDEX CONCURRENTLY %s ON %s (%s)", pgx.Identifier{name}.Sanitize(), pgx.Identifier{schema, c.Table}.Sanitize(), c.columnList())
	if c.Where != "" {
		s += " WHERE " + c.Where
	}
	return s + ";"
}

// planCost is the planner's total cost for sql. Parameters are sent as
// literals (simple protocol), as SPIRE's driver binds them into a custom
// plan; with generic, the statement is planned with its $n unbound.
func planCost(ctx context.Context, conn *pgx.Conn, sql string, params []*string, generic bool) (float64, error) {
	opts := "FORMAT JSON"
	if generic {
		opts = "GENERIC_PLAN, FORMAT JSON"
	}
	args := []any{pgx.QueryExecModeSimpleProtocol}
	for _, p := range params {
		if p == nil {
			args = append(args, nil)
		} else {
			args = append(args, *p)
		}
	}
	if generic {
		args = nil
	}
	var out []byte
	if err := conn.QueryRow(ctx, pg.Marker+"EXPLAIN ("+opts+") "+sql, args...).Scan(&out); err != nil {
		return 0, err
	}
	var plan []struct {
		Plan struct {
			TotalCost float64 `json:"Total Cost"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal(out, &plan); err != nil || len(plan) == 0 {
		return 0, errors.Join(errors.New("unreadable EXPLAIN output"), err)
	}
	return plan[0].Plan.TotalCost, nil
}

// hypotheticalCost plans sql with one hypothetical index and removes it.
func hypotheticalCost(ctx context.Context, conn *pgx.Conn, hypo, ddl, sql string, params []*string, generic bool) (float64, int64, error) {
	fn := func(name string) string { return pgx.Identifier{hypo, name}.Sanitize() }
	var oid uint32
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT indexrelid FROM "+fn("hypopg_create_index")+"($1)", ddl).Scan(&oid); err != nil {
		return 0, 0, fmt.Errorf("hypopg_create_index(%s): %w", ddl, err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), pg.Marker+"SELECT "+fn("hypopg_reset")+"()") }()
	var bytes int64
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT "+fn("hypopg_relation_size")+"($1)", oid).Scan(&bytes); err != nil {
		return 0, 0, err
	}
	cost, err := planCost(ctx, conn, sql, params, generic)
	return cost, bytes, err
}

func writeCost(ctx context.Context, conn *pgx.Conn, schema, table string, live []Live) (WriteCost, error) {
	wc := WriteCost{Table: table}
	for _, l := range live {
		if l.Table == table {
			wc.Indexes++
		}
	}
	err := conn.QueryRow(ctx, pg.Marker+`SELECT coalesce((SELECT n_tup_ins + n_tup_upd - n_tup_hot_upd + n_tup_del
		FROM pg_catalog.pg_stat_user_tables WHERE schemaname = $1 AND relname = $2), 0)`, schema, table).Scan(&wc.Writes)
	return wc, err
}

func clipQuery(q string) string {
	q = strings.Join(strings.Fields(q), " ")
	if len(q) > 80 {
		return q[:79] + "…"
	}
	return q
}
