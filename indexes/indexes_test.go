package indexes

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/spire"
)

func ptr(s string) *string { return &s }

func TestCandidatesForSpireStatements(t *testing.T) {
	tests := []struct {
		name   string
		sql    string
		params []*string
		want   []Candidate
	}{
		{"expiry prune", `SELECT * FROM "registered_entries" WHERE (expiry != 0) AND (expiry < $1)`, []*string{ptr("1795797204")},
			[]Candidate{{Table: "registered_entries", Columns: []string{"expiry"}, Where: "(expiry <> 0)"}, {Table: "registered_entries", Columns: []string{"expiry"}}}},
		{"expiry prune, parameter", `SELECT * FROM registered_entries WHERE expiry != $2 AND expiry < $1`, []*string{ptr("1795797204"), ptr("0")},
			[]Candidate{{Table: "registered_entries", Columns: []string{"expiry"}, Where: "(expiry <> 0)"}, {Table: "registered_entries", Columns: []string{"expiry"}}}},
		{"events prune", `DELETE FROM "registered_entries_events"  WHERE (created_at < $1)`, []*string{ptr("2026-11-27 16:33:51+00")},
			[]Candidate{{Table: "registered_entries_events", Columns: []string{"created_at"}}}},
		{"alias, equality then range", `SELECT e.id FROM registered_entries E JOIN selectors s ON s.registered_entry_id = E.id WHERE E.parent_id = $1 AND E.hint = 'x' AND E.id > $2`, nil,
			[]Candidate{{Table: "registered_entries", Columns: []string{"parent_id"}}, {Table: "registered_entries", Columns: []string{"hint"}},
				{Table: "registered_entries", Columns: []string{"id"}}, {Table: "registered_entries", Columns: []string{"parent_id", "hint"}},
				{Table: "registered_entries", Columns: []string{"parent_id", "hint", "id"}}}},
		{"IN list", `SELECT * FROM "bundles" WHERE (trust_domain in ($1,$2))`, nil,
			[]Candidate{{Table: "bundles", Columns: []string{"trust_domain"}}}},
		{"no where", `SELECT * FROM "bundles"`, nil, nil},
		{"an unknown column owner in a join is left", `SELECT * FROM a JOIN b ON a.id = b.id WHERE x = $1`, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := candidatesFor(tt.sql, tt.params)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	_, err := candidatesFor("SELECT FROM WHERE", nil)
	assert.Error(t, err)
}

func TestCandidatesForEveryCatalogStatement(t *testing.T) {
	c, err := spire.Statements()
	require.NoError(t, err)
	for _, s := range c.Statements {
		_, err := candidatesFor(s.Example.SQL, s.Example.Params)
		assert.NoError(t, err, s.Example.SQL)
	}
}

func TestCovers(t *testing.T) {
	spireSpiffe := Live{Name: "idx_registered_entries_spiffe_id", Table: "registered_entries", Method: "btree", Keys: []string{"spiffe_id"}, Valid: true}
	mine := Live{Name: "my", Table: "registered_entries", Method: "btree", Keys: []string{"spiffe_id"}, Valid: true}
	wider := Live{Name: "wider", Table: "registered_entries", Method: "btree", Keys: []string{"spiffe_id", "parent_id"}, Valid: true}
	selectorEntry := Live{Name: "idx_selector_entry", Table: "selectors", Method: "btree", Keys: []string{"registered_entry_id", "type", "value"}, Unique: true, Valid: true}
	covering := Live{Name: "spiredb_selectors_entry_covering", Table: "selectors", Method: "btree", Keys: []string{"registered_entry_id"}, Include: []string{"id", "type", "value"}, Valid: true}
	partial := Live{Name: "p", Table: "registered_entries", Method: "btree", Keys: []string{"spiffe_id"}, Predicate: "(expiry <> 0)", Valid: true}
	uniq := Live{Name: "u", Table: "registered_entries", Method: "btree", Keys: []string{"spiffe_id"}, Unique: true, Valid: true}
	hash := Live{Name: "h", Table: "registered_entries", Method: "hash", Keys: []string{"spiffe_id"}, Valid: true}

	assert.True(t, covers(spireSpiffe, mine), "identical")
	assert.True(t, covers(wider, mine), "prefix")
	assert.False(t, covers(mine, wider))
	assert.False(t, covers(selectorEntry, covering), "the covering index includes id, which SPIRE's lacks")
	assert.False(t, covers(mine, partial), "a different predicate")
	assert.False(t, covers(wider, uniq), "a unique index enforces what a wider one does not")
	assert.False(t, covers(mine, hash), "another access method")

	findings := duplicateFindings([]Live{spireSpiffe, mine, selectorEntry, covering})
	require.Len(t, findings, 1)
	assert.Equal(t, "my", findings[0].Index)
	assert.Contains(t, findings[0].Detail, "SPIRE's own")
}

func TestPlanStates(t *testing.T) {
	ix := spireSet[0]
	live := []Live{
		{Name: ix.Name, Table: ix.Table, Valid: true, Definition: "CREATE INDEX " + ix.Name + " ON public." + ix.Table + " " + ix.access()},
		{Name: spireSet[1].Name, Table: spireSet[1].Table, Valid: false, Definition: "CREATE INDEX x ON public.t USING btree (created_at)"},
		{Name: spireSet[2].Name, Table: spireSet[2].Table, Valid: true, Definition: "CREATE INDEX x ON public.attested_node_entries_events USING btree (created_at, id)"},
	}
	p := planAgainst(spire.Schema{Present: true, Schema: "public", Version: 23}, live)
	got := map[string]State{}
	for _, pl := range p.Indexes {
		got[pl.Name] = pl.State
		assert.True(t, pl.Applicable)
	}
	assert.Equal(t, Present, got[spireSet[0].Name])
	assert.Equal(t, Invalid, got[spireSet[1].Name])
	assert.Equal(t, Different, got[spireSet[2].Name])
	assert.Len(t, p.ToDo(), 2)
	for _, pl := range planAgainst(spire.Schema{Present: true, Schema: "public", Version: 23}, nil).Indexes {
		assert.Equal(t, Missing, pl.State)
	}

	p = planAgainst(spire.Schema{Present: true, Schema: "public", Version: 24}, live)
	assert.False(t, p.Indexes[0].Applicable)
	assert.Empty(t, p.ToDo(), "nothing is built on an unverified schema version")
}

// The set keeps only what the benchmark confirmed: the targets are
// ≥100× for the prunes, ≥1.2× for the reload page, ≤25% write overhead.
func TestSetCarriesConfirmingFigures(t *testing.T) {
	target := map[string]float64{"expiry prune": 100, "events prune": 100, "cache reload page": 1.2}
	for _, ix := range Set() {
		require.NotZero(t, ix.Measured.AfterMs, "%s has no measurement", ix.Name)
		for _, op := range ix.Serves {
			assert.GreaterOrEqual(t, ix.Measured.Speedup(), target[op], "%s on %s", ix.Name, op)
		}
		assert.LessOrEqual(t, ix.Measured.WriteOverhead, 0.25, ix.Name)
		assert.True(t, len(ix.Name) <= 63 && ix.Name[:8] == "spiredb_", ix.Name)
	}
	for _, ix := range Rejected() {
		failed := ix.Measured.WriteOverhead > 0.25
		for _, op := range ix.Serves {
			failed = failed || ix.Measured.Speedup() < target[op]
		}
		assert.True(t, failed, "%s meets every target: it belongs in the set", ix.Name)
		_, inSet := Lookup(ix.Name)
		assert.False(t, inSet)
	}
}

// Column names come from statement texts: anything that is not plainly a
// column is quoted, so that no name can change the DDL advise prints.
func TestCandidateColumnsAreIdentifiers(t *testing.T) {
	c := Candidate{Table: "t", Columns: []string{"expiry", "Mixed", "order", "a b", `x"); DROP TABLE t; --`}}
	require.Equal(t, `CREATE INDEX ON "public"."t" (expiry, "Mixed", "order", "a b", "x""); DROP TABLE t; --")`, c.DDL("public"))
}
