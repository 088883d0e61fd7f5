package backfill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/spiredb/spiredb/pg"
)

// SpecError says --set or --where is not acceptable; nothing ran.
type SpecError struct{ Err error }

func (e *SpecError) Error() string { return e.Err.Error() }
func (e *SpecError) Unwrap() error { return e.Err }

func specErrorf(format string, args ...any) error {
	return &SpecError{Err: fmt.Errorf(format, args...)}
}

// clauses are --set and --where as spiredb runs them: parsed on their own,
// checked, and rebuilt from the parse tree, so that no text can close the
// statement spiredb wraps around it (`true) OR (true`) or add a clause of
// its own (`v = 1 WHERE ... --`).
type clauses struct {
	Set   string // "col = expr, ..."
	Where string // "(expr)", or ""
	// funcs and operators the expressions call, for the volatility check
	funcs, operators [][]string
}

// updatePrefix is what the --set parse is wrapped in and stripped from
// the deparsed statement.
const updatePrefix = "UPDATE spiredb_backfill_target SET "

// parseClauses parses, checks and rebuilds set and where.
func parseClauses(set, where string) (*clauses, error) {
	if strings.TrimSpace(set) == "" {
		return nil, specErrorf(`--set is required ("col = expr")`)
	}
	c := &clauses{}
	for _, part := range []struct{ flag, text string }{{"--set", set}, {"--where", where}} {
		if err := noComments(part.text); err != nil {
			return nil, specErrorf("%s: %w", part.flag, err)
		}
	}

	tree, err := pg_query.Parse(updatePrefix + set)
	if err != nil {
		return nil, specErrorf("--set does not parse as col = expr[, ...]: %v", err)
	}
	if len(tree.Stmts) != 1 || tree.Stmts[0].Stmt.GetUpdateStmt() == nil {
		return nil, specErrorf("--set must be assignments only: col = expr[, ...]")
	}
	upd := tree.Stmts[0].Stmt.GetUpdateStmt()
	switch {
	case upd.WhereClause != nil:
		return nil, specErrorf("--set must not carry a WHERE: use --where")
	case len(upd.FromClause) > 0, len(upd.ReturningList) > 0, upd.WithClause != nil:
		return nil, specErrorf("--set must be assignments only: no FROM, RETURNING or WITH")
	}
	for _, t := range upd.TargetList {
		if err := c.check("--set", t.GetResTarget().GetVal()); err != nil {
			return nil, err
		}
	}
	out, err := pg_query.Deparse(tree)
	if err != nil || !strings.HasPrefix(out, updatePrefix) {
		return nil, specErrorf("--set cannot be rebuilt: %v", err)
	}
	c.Set = strings.TrimPrefix(out, updatePrefix)

	if strings.TrimSpace(where) != "" {
		tree, err := pg_query.Parse("SELECT " + where)
		if err != nil {
			return nil, specErrorf("--where does not parse as one condition: %v", err)
		}
		sel := oneExpression(tree)
		if sel == nil {
			return nil, specErrorf("--where must be one condition (no FROM, ORDER BY, LIMIT, UNION, or a second expression)")
		}
		if err := c.check("--where", sel.TargetList[0].GetResTarget().GetVal()); err != nil {
			return nil, err
		}
		out, err := pg_query.Deparse(tree)
		if err != nil || !strings.HasPrefix(out, "SELECT ") {
			return nil, specErrorf("--where cannot be rebuilt: %v", err)
		}
		c.Where = "(" + strings.TrimPrefix(out, "SELECT ") + ")"
	}
	return c, nil
}

// noComments refuses comments: a comment is how an injected text hides
// the rest of the statement spiredb builds.
func noComments(s string) error {
	res, err := pg_query.Scan(s)
	if err != nil {
		return fmt.Errorf("does not scan: %w", err)
	}
	for _, t := range res.Tokens {
		if t.Token == pg_query.Token_SQL_COMMENT || t.Token == pg_query.Token_C_COMMENT {
			return errors.New("comments are not allowed")
		}
	}
	return nil
}

// oneExpression returns the SELECT when it is exactly "SELECT expr".
func oneExpression(tree *pg_query.ParseResult) *pg_query.SelectStmt {
	if len(tree.Stmts) != 1 {
		return nil
	}
	s := tree.Stmts[0].Stmt.GetSelectStmt()
	if s == nil || len(s.TargetList) != 1 || s.TargetList[0].GetResTarget().GetName() != "" ||
		len(s.FromClause) > 0 || s.WhereClause != nil || len(s.GroupClause) > 0 || s.HavingClause != nil ||
		len(s.WindowClause) > 0 || len(s.ValuesLists) > 0 || len(s.SortClause) > 0 || s.LimitCount != nil ||
		s.LimitOffset != nil || len(s.LockingClause) > 0 || s.WithClause != nil || len(s.DistinctClause) > 0 ||
		s.IntoClause != nil || s.Op != pg_query.SetOperation_SET_OPERATION_UNDEFINED && s.Op != pg_query.SetOperation_SETOP_NONE {
		return nil
	}
	return s
}

// check walks an expression: no placeholders, no statement that writes or
// locks inside it; it records the functions and operators it calls.
func (c *clauses) check(flag string, n *pg_query.Node) error {
	if n == nil {
		return specErrorf("%s: an empty expression", flag)
	}
	if cr := n.GetColumnRef(); cr != nil && slices.ContainsFunc(cr.Fields, func(f *pg_query.Node) bool { return f.GetAStar() != nil }) {
		return specErrorf("%s: * is not an expression", flag)
	}
	var err error
	walk(n.ProtoReflect(), func(m protoreflect.Message) bool {
		switch v := m.Interface().(type) {
		case *pg_query.ParamRef:
			err = specErrorf("%s: placeholders ($1) are not allowed: write the value", flag)
		case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
			err = specErrorf("%s: a subquery that writes is not allowed", flag)
		case *pg_query.SelectStmt:
			if len(v.LockingClause) > 0 || v.IntoClause != nil {
				err = specErrorf("%s: a subquery that locks rows or creates a table is not allowed", flag)
			}
		case *pg_query.FuncCall:
			c.funcs = append(c.funcs, names(v.Funcname))
		case *pg_query.A_Expr:
			c.operators = append(c.operators, names(v.Name))
		}
		return err == nil
	})
	return err
}

// walk visits every message under m, depth first, while visit says so.
func walk(m protoreflect.Message, visit func(protoreflect.Message) bool) bool {
	if !visit(m) {
		return false
	}
	ok := true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = walk(l.Get(i).Message(), visit)
			}
		case fd.Message() != nil && !fd.IsMap():
			ok = walk(v.Message(), visit)
		}
		return ok
	})
	return ok
}

func names(ns []*pg_query.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.GetString_().GetSval())
	}
	return out
}

// checkVolatile refuses volatile functions (pg_terminate_backend,
// pg_sleep, nextval, random, set_config, …) and operators backed by one,
// unless allowed: a backfill batch runs its expression once per row, in a
// retried transaction. Conservative: a name is volatile when any function
// of that name (in that schema, when qualified) is.
func (c *clauses) checkVolatile(ctx context.Context, conn *pgx.Conn, allow bool) error {
	if allow || len(c.funcs)+len(c.operators) == 0 {
		return nil
	}
	var funcs, ops []string
	for _, f := range c.funcs {
		funcs = append(funcs, f[len(f)-1])
	}
	for _, o := range c.operators {
		ops = append(ops, o[len(o)-1])
	}
	rows, err := conn.Query(ctx, pg.Marker+`SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p
		JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		WHERE p.provolatile = 'v' AND p.proname = ANY ($1)
		UNION
		SELECT DISTINCT n.nspname, o.oprname FROM pg_catalog.pg_operator o
		JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
		JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
		WHERE p.provolatile = 'v' AND o.oprname = ANY ($2)`, funcs, ops)
	if err != nil {
		return fmt.Errorf("checking the volatility of --set/--where functions: %w", err)
	}
	var volatile []string
	var schema, name string
	if _, err := pgx.ForEachRow(rows, []any{&schema, &name}, func() error {
		for _, f := range append(slices.Clone(c.funcs), c.operators...) {
			if f[len(f)-1] == name && (len(f) == 1 || f[0] == schema) {
				volatile = append(volatile, name)
				return nil
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("checking the volatility of --set/--where functions: %w", err)
	}
	if len(volatile) > 0 {
		slices.Sort(volatile)
		return specErrorf("--set/--where call volatile function(s) %s, run again on every retried batch: pass --allow-volatile if that is intended",
			strings.Join(slices.Compact(volatile), ", "))
	}
	return nil
}
