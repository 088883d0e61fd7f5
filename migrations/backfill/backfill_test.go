package backfill

import (
	"testing"
	"time"

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
	assert.Equal(t, "SELECT a::text AS spiredb_key_0, b::text AS spiredb_key_1 FROM public.c WHERE (a, b) <= ($1::integer, $2::text) ORDER BY a, b LIMIT $3", sel)
	assert.Equal(t, "UPDATE public.c SET n = n + 1 WHERE (a, b) <= ($1::integer, $2::text) AND (n < 5)", upd)
	sel, upd = tb.statements(Spec{Set: "n = 0"}, false)
	assert.Equal(t, "SELECT a::text AS spiredb_key_0, b::text AS spiredb_key_1 FROM public.c WHERE (a, b) > ($1::integer, $2::text) AND (a, b) <= ($3::integer, $4::text) ORDER BY a, b LIMIT $5", sel)
	assert.Equal(t, "UPDATE public.c SET n = 0 WHERE (a, b) > ($1::integer, $2::text) AND (a, b) <= ($3::integer, $4::text)", upd)
}

func TestValidate(t *testing.T) {
	assert.NoError(t, validate(Spec{Set: "hint = lower(hint), ttl = 3600", Where: "expiry <> 0"}))
	for _, bad := range []Spec{
		{Set: ""},
		{Set: "n = 1; DROP TABLE t"},
		{Set: "n = 1", Where: "true); DELETE FROM t; SELECT (1"},
		{Set: "n ="},
	} {
		assert.Error(t, validate(bad), "%+v", bad)
	}
}
