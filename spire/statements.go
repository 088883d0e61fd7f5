package spire

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Fingerprint returns the pg_query fingerprint of a statement: one value
// for every text of the same shape, whatever its constants, parameter
// numbers, IN-list lengths, comments, quoting or whitespace.
func Fingerprint(query string) (string, error) {
	return pg_query.Fingerprint(query)
}

// Catalog is the list of statements a real spire-server ran, each with the
// SPIRE operation it belongs to. scripts/spire-labels generates it
// (`make spire-labels`).
type Catalog struct {
	SpireVersion string      `json:"spire_version"`
	GeneratedBy  string      `json:"generated_by"`
	Statements   []Statement `json:"statements"`
}

// Statement is one statement shape SPIRE runs.
type Statement struct {
	// Label names the SPIRE operation: "cache reload page", ...
	Label string `json:"label"`
	// Phase is what the generator was doing when it first saw the statement.
	Phase string `json:"phase"`
	// Query is the text pg_stat_statements stored (constants as $n).
	Query string `json:"query"`
	// Example is one execution as spire-server sent it, from the server
	// log: the SQL with its literal constants and the bound parameters.
	Example *Example `json:"example,omitempty"`
}

// Example is a statement as executed: SQL with $n placeholders for the
// bound parameters, whose values are given as text (nil for NULL).
type Example struct {
	SQL    string    `json:"sql"`
	Params []*string `json:"params"`
}

// Args returns the parameters as query arguments.
func (e *Example) Args() []any {
	args := make([]any, len(e.Params))
	for i, p := range e.Params {
		if p != nil {
			args[i] = *p
		}
	}
	return args
}

//go:embed statements.json
var catalogJSON []byte

// SchemaSQL is the schema spire-server 1.13.3 created (pg_dump
// --schema-only) with its migrations row: what `make spire-fixture` wrote
// from a real run. The linter's knowledge of SPIRE's tables comes from it.
//
//go:embed schema.sql
var SchemaSQL string

var labels = sync.OnceValues(func() (map[string]string, error) {
	c, err := catalog()
	if err != nil {
		return nil, err
	}
	return loadLabels(c)
})

var catalog = sync.OnceValues(func() (Catalog, error) {
	var c Catalog
	if err := json.Unmarshal(catalogJSON, &c); err != nil {
		return c, fmt.Errorf("SPIRE statement catalog: %w", err)
	}
	return c, nil
})

// Statements returns the embedded catalog, parsed once; callers must not
// modify it.
func Statements() (Catalog, error) { return catalog() }

// StatementsFor returns the catalog's statements of one operation.
func StatementsFor(label string) ([]Statement, error) {
	c, err := Statements()
	if err != nil {
		return nil, err
	}
	var out []Statement
	for _, s := range c.Statements {
		if s.Label == label {
			out = append(out, s)
		}
	}
	return out, nil
}

// loadLabels fingerprints the catalog's statements. Fingerprints are
// computed here, not stored, so that they always come from the pg_query
// version this binary was built with.
func loadLabels(c Catalog) (map[string]string, error) {
	out := make(map[string]string, len(c.Statements))
	for _, s := range c.Statements {
		fp, err := Fingerprint(s.Query)
		if err != nil {
			return nil, fmt.Errorf("SPIRE statement catalog: %q: %w", s.Query, err)
		}
		out[fp] = s.Label
	}
	return out, nil
}

// Label returns the SPIRE operation of a fingerprint, or "" for a
// statement SPIRE does not run.
func Label(fingerprint string) string {
	m, err := labels()
	if err != nil {
		// the embedded catalog is tested; a broken one labels nothing
		return ""
	}
	return m[fingerprint]
}
