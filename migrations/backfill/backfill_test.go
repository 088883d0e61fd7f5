package backfill

import (
	"strings"
	"testing"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/stretchr/testify/assert"
)

func TestAdapt(t *testing.T) {
	assert.Equal(t, 2000, adapt(1000, 50*time.Millisecond, 200*time.Millisecond), "at most doubles")
	assert.Equal(t, 500, adapt(1000, time.Second, 200*time.Millisecond), "at most halves")
	assert.Equal(t, 1333, adapt(1000, 150*time.Millisecond, 200*time.Millisecond))
	assert.Equal(t, 100, adapt(150, time.Second, 200*time.Millisecond), "never below 100")
	assert.Equal(t, 100_000, adapt(90_000, time.Millisecond, 200*time.Millisecond), "never above 100,000")
	assert.Equal(t, 2000, adapt(1000, 0, 200*time.Millisecond))
}

func TestStatements(t *testing.T) {
	tb := &table{ident: `public.c`, keys: []string{"a", "b"}, types: []string{"integer", "text"}}
	sel, upd := tb.statements(Spec{Set: "n = n + 1", Where: "n < 5"}, true)
	assert.Equal(t, "SELECT a::text AS spiredb_key_0, b::text AS spiredb_key_1, count(*) OVER () AS spiredb_rows FROM (SELECT a, b FROM public.c WHERE (a, b) <= ($1::integer, $2::text) ORDER BY a, b LIMIT $3) spiredb_batch ORDER BY a DESC, b DESC LIMIT 1", sel)
	assert.Equal(t, "UPDATE public.c SET n = n + 1 WHERE (a, b) <= ($1::integer, $2::text) AND (n < 5)", upd)
	sel, upd = tb.statements(Spec{Set: "n = 0"}, false)
	assert.Equal(t, "SELECT a::text AS spiredb_key_0, b::text AS spiredb_key_1, count(*) OVER () AS spiredb_rows FROM (SELECT a, b FROM public.c WHERE (a, b) > ($1::integer, $2::text) AND (a, b) <= ($3::integer, $4::text) ORDER BY a, b LIMIT $5) spiredb_batch ORDER BY a DESC, b DESC LIMIT 1", sel)
	assert.Equal(t, "UPDATE public.c SET n = 0 WHERE (a, b) > ($1::integer, $2::text) AND (a, b) <= ($3::integer, $4::text)", upd)
}

func TestValidate(t *testing.T) {
	spec := Spec{Set: "hint = lower(hint), ttl = 3600", Where: "expiry <> 0"}
	_, err := validate(&spec)
	assert.NoError(t, err)
	assert.Equal(t, "hint = lower(hint), ttl = 3600", spec.Set)
	assert.Equal(t, "(expiry <> 0)", spec.Where)
	for _, bad := range []Spec{
		{Set: ""},
		{Set: "n = 1; DROP TABLE t"},
		{Set: "n = 1", Where: "true); DELETE FROM t; SELECT (1"},
		{Set: "n ="},
		// the escapes the issue names, and their kin
		{Set: "v = 1", Where: "true) OR (true"},
		{Set: "v = 100 WHERE $1::text IS NOT NULL --"},
		{Set: "v = 100 WHERE true"},
		{Set: "v = 1 /* hidden */"},
		{Set: "v = 1", Where: "x = 1 -- and the rest"},
		{Set: "v = $1"},
		{Set: "v = 1", Where: "id = $2"},
		{Set: "v = 1 FROM other"},
		{Set: "v = 1 RETURNING *"},
		{Set: "v = 1", Where: "true FROM pg_class"},
		{Set: "v = 1", Where: "true ORDER BY 1"},
		{Set: "v = 1", Where: "true LIMIT 1"},
		{Set: "v = 1", Where: "true UNION SELECT false"},
		{Set: "v = 1", Where: "a, b"},
		{Set: "v = 1", Where: "true AS x"},
		{Set: "v = (WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d)"},
		{Set: "v = 1", Where: "EXISTS (SELECT 1 FROM t FOR UPDATE)"},
		{Set: "v = 1", Where: "id IN (SELECT id FROM t INTO other)"},
	} {
		_, err := validate(&bad)
		var se *SpecError
		assert.ErrorAs(t, err, &se, "%+v", bad)
	}
}

// FuzzClauses: whatever --set and --where hold, an accepted pair rebuilds
// into one UPDATE whose WHERE is spiredb's key range AND the condition,
// and whose SET is assignments only; nothing panics.
func FuzzClauses(f *testing.F) {
	for _, seed := range [][2]string{{"v = v + 1", "v < 5"}, {"v = 100 WHERE $1::text IS NOT NULL --", ""}, {"v = 1", "true) OR (true"},
		{"a = lower(b), c = 'x'' y'", "b IS NOT NULL AND c <> $$z$$"}, {"v = 1", "(SELECT count(*) FROM t) > 0"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, set, where string) {
		c, err := parseClauses(set, where)
		if err != nil {
			return
		}
		stmt := "UPDATE public.t SET " + c.Set + " WHERE (id) <= ($1::bigint)"
		if c.Where != "" {
			stmt += " AND " + c.Where
		}
		tree, err := pg_query.Parse(stmt)
		if err != nil {
			t.Fatalf("accepted %q / %q, but the statement does not parse: %v (%s)", set, where, err, stmt)
		}
		if len(tree.Stmts) != 1 {
			t.Fatalf("accepted %q / %q made %d statements", set, where, len(tree.Stmts))
		}
		upd := tree.Stmts[0].Stmt.GetUpdateStmt()
		if upd == nil || len(upd.FromClause) > 0 || len(upd.ReturningList) > 0 || upd.WithClause != nil {
			t.Fatalf("accepted %q / %q made %s", set, where, stmt)
		}
		w := upd.WhereClause
		if c.Where != "" {
			b := w.GetBoolExpr()
			if b == nil || b.Boolop != pg_query.BoolExprType_AND_EXPR || len(b.Args) != 2 {
				t.Fatalf("accepted %q / %q: the WHERE is not key range AND condition: %s", set, where, stmt)
			}
			w = b.Args[0]
		}
		if w.GetRowCompareExpr() == nil && w.GetAExpr() == nil {
			t.Fatalf("accepted %q / %q: the key range is not the WHERE's first term: %s", set, where, stmt)
		}
		if a := w.GetAExpr(); a != nil && a.GetLexpr().GetRowExpr() == nil && a.GetLexpr().GetColumnRef() == nil {
			t.Fatalf("accepted %q / %q: the key range is not the WHERE's first term: %s", set, where, stmt)
		}
		// the rebuilt clauses are stable
		again, err := parseClauses(c.Set, strings.TrimSuffix(strings.TrimPrefix(c.Where, "("), ")"))
		if err != nil || again.Set != c.Set {
			t.Fatalf("rebuilt %q / %q does not rebuild the same: %v", c.Set, c.Where, err)
		}
	})
}
