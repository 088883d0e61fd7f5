package tuning

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
// SPIRE operation it belongs to. scripts/spire-labels generates it.
type Catalog struct {
	SpireVersion string             `json:"spire_version"`
	GeneratedBy  string             `json:"generated_by"`
	Statements   []CatalogStatement `json:"statements"`
}

// CatalogStatement is one statement shape SPIRE runs.
type CatalogStatement struct {
	Label string `json:"label"`
	// Phase is what the generator was doing when it first saw the statement.
	Phase string `json:"phase"`
	Query string `json:"query"`
}

//go:embed spire_statements.json
var spireCatalogJSON []byte

var spireLabels = sync.OnceValues(func() (map[string]string, error) {
	return loadLabels(spireCatalogJSON)
})

// SpireCatalog returns the embedded catalog.
func SpireCatalog() (Catalog, error) {
	var c Catalog
	if err := json.Unmarshal(spireCatalogJSON, &c); err != nil {
		return c, fmt.Errorf("SPIRE statement catalog: %w", err)
	}
	return c, nil
}

// loadLabels fingerprints the catalog's statements. Fingerprints are
// computed here, not stored, so that they always come from the pg_query
// version this binary was built with.
func loadLabels(catalogJSON []byte) (map[string]string, error) {
	var c Catalog
	if err := json.Unmarshal(catalogJSON, &c); err != nil {
		return nil, fmt.Errorf("SPIRE statement catalog: %w", err)
	}
	labels := make(map[string]string, len(c.Statements))
	for _, s := range c.Statements {
		fp, err := Fingerprint(s.Query)
		if err != nil {
			return nil, fmt.Errorf("SPIRE statement catalog: %q: %w", s.Query, err)
		}
		labels[fp] = s.Label
	}
	return labels, nil
}

// SpireLabel returns the SPIRE operation of a fingerprint, or "" for a
// statement SPIRE does not run.
func SpireLabel(fingerprint string) string {
	labels, err := spireLabels()
	if err != nil {
		// the embedded catalog is tested; a broken one labels nothing
		return ""
	}
	return labels[fingerprint]
}
