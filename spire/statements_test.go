package spire

import (
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCatalogLabels(t *testing.T) {
	c, err := Statements()
	require.NoError(t, err)
	require.NotEmpty(t, c.Statements)
	m, err := loadLabels(c)
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, s := range c.Statements {
		fp, err := Fingerprint(s.Query)
		require.NoError(t, err)
		assert.Equal(t, s.Label, m[fp], "one label per shape: %s", s.Query)
		assert.Equal(t, s.Label, Label(fp))
		seen[s.Label] = true
		if s.Example != nil {
			efp, err := Fingerprint(s.Example.SQL)
			require.NoError(t, err)
			assert.Equal(t, fp, efp, "the example is an execution of the statement: %s", s.Example.SQL)
		}
	}
	for _, l := range []string{"cache reload page", "similar-entry lookup", "entry insert", "selector insert", "events poll", "events prune", "expiry prune", "node fetch"} {
		assert.True(t, seen[l], "the catalog names %q", l)
	}
	for _, l := range []string{"cache reload page", "expiry prune", "events prune", "selector insert", "entry event insert", "entry insert"} {
		ss, err := StatementsFor(l)
		require.NoError(t, err)
		require.NotEmpty(t, ss)
		for _, s := range ss {
			assert.NotNil(t, s.Example, "the benchmark runs %q as SPIRE sent it", l)
		}
	}
}

// The index list matches what a real spire-server created (the fixture
// `make spire-fixture` dumps).
func TestIndexesMatchSpireSchema(t *testing.T) {
	b, err := os.ReadFile("schema.sql")
	require.NoError(t, err)
	re := regexp.MustCompile(`CREATE (?:UNIQUE )?INDEX (\S+) ON public\.(\S+) `)
	got := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		got[m[1]] = m[2]
	}
	assert.Equal(t, got, Indexes)
}
