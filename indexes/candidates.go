package indexes

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Candidate is an index the advisor tries.
type Candidate struct {
	Table   string   `json:"table"`
	Columns []string `json:"columns"`
	Where   string   `json:"where,omitempty"`
}

// DDL is the CREATE INDEX statement for hypopg (no name, no CONCURRENTLY).
func (c Candidate) DDL(schema string) string {
	s := fmt.Sprintf("CREATE INDEX ON %s (%s)", pgx.Identifier{schema, c.Table}.Sanitize(), c.columnList())
	if c.Where != "" {
		s += " WHERE " + c.Where
	}
	return s
}

// ident writes a column name taken from a statement text, which is data:
// bare when PostgreSQL reads it back as that very column (so that the
// predicate matches what pg_get_expr shows), else quoted with
// pgx.Identifier.
func ident(name string) string {
	res, err := pg_query.Parse("SELECT " + name)
	if err == nil && len(res.Stmts) == 1 {
		if sel := res.Stmts[0].Stmt.GetSelectStmt(); sel != nil && len(sel.TargetList) == 1 {
			if cr := sel.TargetList[0].GetResTarget().GetVal().GetColumnRef(); cr != nil && len(cr.Fields) == 1 &&
				cr.Fields[0].GetString_().GetSval() == name {
				return name
			}
		}
	}
	return pgx.Identifier{name}.Sanitize()
}

// columnList is the index's column list (see ident).
func (c Candidate) columnList() string {
	quoted := make([]string, len(c.Columns))
	for i, col := range c.Columns {
		quoted[i] = ident(col)
	}
	return strings.Join(quoted, ", ")
}

func (c Candidate) key() string { return c.Table + "|" + strings.Join(c.Columns, ",") + "|" + c.Where }

// predicate is one column comparison found in a WHERE clause.
type predicate struct {
	table, column, op string
	// value is the constant compared with, when known ("" otherwise).
	value string
}

// candidatesFor parses a statement and proposes indexes for the columns its
// WHERE clauses compare with constants or parameters: each column alone,
// the equality columns together (then a range column), and for a column
// compared with <> to a known constant, a partial index without that value
// (SPIRE's expiry != 0: most rows hold the excluded value). params are the
// values of $1, $2, ... when known.
func candidatesFor(sql string, params []*string) ([]Candidate, error) {
	js, err := pg_query.ParseToJSON(sql)
	if err != nil {
		return nil, err
	}
	var tree any
	if err := json.Unmarshal([]byte(js), &tree); err != nil {
		return nil, err
	}
	var preds []predicate
	walk(tree, func(kind string, node map[string]any) {
		switch kind {
		case "SelectStmt", "DeleteStmt", "UpdateStmt":
			tables := fromTables(kind, node)
			if w, ok := node["whereClause"]; ok {
				preds = append(preds, wherePredicates(w, tables, params)...)
			}
		}
	})
	seen := map[string]bool{}
	var out []Candidate
	add := func(c Candidate) {
		if !seen[c.key()] {
			seen[c.key()] = true
			out = append(out, c)
		}
	}
	byTable := map[string][]predicate{}
	var tables []string
	for _, p := range preds {
		if _, ok := byTable[p.table]; !ok {
			tables = append(tables, p.table)
		}
		byTable[p.table] = append(byTable[p.table], p)
	}
	for _, t := range tables {
		var eq, rng []string
		for _, p := range byTable[t] {
			switch p.op {
			case "=":
				eq = appendNew(eq, p.column)
			case "<", ">", "<=", ">=":
				rng = appendNew(rng, p.column)
			}
		}
		for _, p := range byTable[t] {
			switch p.op {
			case "<>", "!=":
				if p.value != "" {
					add(Candidate{Table: t, Columns: []string{p.column}, Where: fmt.Sprintf("(%s <> %s)", ident(p.column), p.value)})
				}
			default:
				add(Candidate{Table: t, Columns: []string{p.column}})
			}
		}
		if len(eq) > 1 {
			add(Candidate{Table: t, Columns: slices.Clone(eq)})
		}
		if len(eq) > 0 && len(rng) > 0 {
			add(Candidate{Table: t, Columns: append(slices.Clone(eq), rng[0])})
		}
	}
	return out, nil
}

func appendNew(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// walk calls fn for every node object {"Kind": {...}} of a pg_query JSON tree.
func walk(v any, fn func(kind string, node map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			if m, ok := child.(map[string]any); ok && len(k) > 0 && k[0] >= 'A' && k[0] <= 'Z' {
				fn(k, m)
			}
			walk(child, fn)
		}
	case []any:
		for _, child := range t {
			walk(child, fn)
		}
	}
}

// fromTables maps the names a statement may qualify columns with (alias or
// table name) to table names; "" maps to the only table, when there is one.
func fromTables(kind string, node map[string]any) map[string]string {
	tables := map[string]string{}
	addRange := func(rv map[string]any) {
		name, _ := rv["relname"].(string)
		if name == "" {
			return
		}
		tables[name] = name
		if a, ok := rv["alias"].(map[string]any); ok {
			if an, ok := a["aliasname"].(string); ok {
				tables[an] = name
			}
		}
	}
	if kind == "SelectStmt" {
		var from []any
		from, _ = node["fromClause"].([]any)
		for _, f := range from {
			// direct tables and the tables of joins, not of subqueries
			var visit func(v any)
			visit = func(v any) {
				m, ok := v.(map[string]any)
				if !ok {
					return
				}
				if rv, ok := m["RangeVar"].(map[string]any); ok {
					addRange(rv)
				}
				if j, ok := m["JoinExpr"].(map[string]any); ok {
					visit(j["larg"])
					visit(j["rarg"])
				}
			}
			visit(f)
		}
	} else if rv, ok := node["relation"].(map[string]any); ok {
		addRange(rv)
	}
	distinct := map[string]bool{}
	for _, t := range tables {
		distinct[t] = true
	}
	if len(distinct) == 1 {
		for t := range distinct {
			tables[""] = t
		}
	}
	return tables
}

// wherePredicates collects column-vs-constant comparisons joined by AND.
func wherePredicates(w any, tables map[string]string, params []*string) []predicate {
	m, ok := w.(map[string]any)
	if !ok {
		return nil
	}
	if b, ok := m["BoolExpr"].(map[string]any); ok {
		if b["boolop"] != "AND_EXPR" {
			return nil
		}
		var out []predicate
		args, _ := b["args"].([]any)
		for _, a := range args {
			out = append(out, wherePredicates(a, tables, params)...)
		}
		return out
	}
	e, ok := m["A_Expr"].(map[string]any)
	if !ok {
		return nil
	}
	names, _ := e["name"].([]any)
	if len(names) != 1 {
		return nil
	}
	op := stringNode(names[0])
	switch e["kind"] {
	case "AEXPR_OP":
	case "AEXPR_IN":
		if op != "=" {
			return nil
		}
	default:
		return nil
	}
	table, col := columnRef(e["lexpr"], tables)
	val, isConst := constant(e["rexpr"], params)
	if col == "" || table == "" {
		return nil
	}
	if e["kind"] == "AEXPR_IN" {
		return []predicate{{table: table, column: col, op: "="}}
	}
	if !isConst {
		return nil
	}
	return []predicate{{table: table, column: col, op: op, value: val}}
}

func stringNode(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["String"].(map[string]any)
	str, _ := s["sval"].(string)
	return str
}

func columnRef(v any, tables map[string]string) (table, column string) {
	m, _ := v.(map[string]any)
	if tc, ok := m["TypeCast"].(map[string]any); ok {
		return columnRef(tc["arg"], tables)
	}
	cr, ok := m["ColumnRef"].(map[string]any)
	if !ok {
		return "", ""
	}
	fields, _ := cr["fields"].([]any)
	switch len(fields) {
	case 1:
		return tables[""], stringNode(fields[0])
	case 2:
		return tables[stringNode(fields[0])], stringNode(fields[1])
	}
	return "", ""
}

// constant reports whether v is a constant or parameter, and its SQL literal
// when known.
func constant(v any, params []*string) (string, bool) {
	m, _ := v.(map[string]any)
	if tc, ok := m["TypeCast"].(map[string]any); ok {
		return constant(tc["arg"], params)
	}
	if p, ok := m["ParamRef"].(map[string]any); ok {
		n, _ := p["number"].(float64)
		if i := int(n) - 1; i >= 0 && i < len(params) && params[i] != nil {
			return literal(*params[i]), true
		}
		return "", true
	}
	if c, ok := m["A_Const"].(map[string]any); ok {
		if iv, ok := c["ival"].(map[string]any); ok {
			n, _ := iv["ival"].(float64)
			return strconv.FormatInt(int64(n), 10), true
		}
		if sv, ok := c["sval"].(map[string]any); ok {
			s, _ := sv["sval"].(string)
			return literal(s), true
		}
		return "", true
	}
	return "", false
}

// literal renders a value as SQL: numbers bare, anything else quoted.
func literal(s string) string {
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
