package indexes

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// Live is an index as the catalog describes it.
type Live struct {
	Schema     string   `json:"schema"`
	Table      string   `json:"table"`
	Name       string   `json:"name"`
	Method     string   `json:"method"`
	Keys       []string `json:"keys"`
	Include    []string `json:"include,omitempty"`
	Predicate  string   `json:"predicate,omitempty"`
	Definition string   `json:"definition"`
	Unique     bool     `json:"unique"`
	Primary    bool     `json:"primary"`
	// Constraint is set when a PRIMARY KEY, UNIQUE or EXCLUDE constraint
	// owns the index.
	Constraint bool  `json:"constraint"`
	Valid      bool  `json:"valid"`
	Building   bool  `json:"building"`
	Scans      int64 `json:"scans"`
	Bytes      int64 `json:"bytes"`
	// EstimatedBytes is the size a freshly built btree of the table's rows
	// would have (0 when it cannot be estimated).
	EstimatedBytes int64 `json:"estimated_bytes"`
}

// access is the definition from USING on, for comparing with the set.
func (l Live) access() string {
	if i := strings.Index(l.Definition, " USING "); i >= 0 {
		return l.Definition[i+1:]
	}
	return l.Definition
}

// SpireOwned reports whether SPIRE itself creates this index (or the
// primary key it rests on).
func (l Live) SpireOwned() bool {
	_, ok := spire.Indexes[l.Name]
	return ok || l.Primary
}

// Protected reports whether spiredb must never propose dropping the index.
func (l Live) Protected() bool {
	return l.Unique || l.Primary || l.Constraint || l.SpireOwned()
}

// liveIndexesSQL lists the indexes of the tables in a schema, with their
// columns split into keys and INCLUDE columns, scans, size and a btree
// size estimate from pg_stats' average widths (ioguru-style: rows × (width
// + tuple header 8 + line pointer 4) at the default 90% fill).
var liveIndexesSQL = query("live_indexes")

// ReadLive returns the indexes of the tables in schema.
func ReadLive(ctx context.Context, conn *pgx.Conn, schema string) ([]Live, error) {
	rows, err := conn.Query(ctx, pg.Marker+liveIndexesSQL, schema)
	if err != nil {
		return nil, fmt.Errorf("reading indexes: %w", err)
	}
	var out []Live
	for rows.Next() {
		var l Live
		var est *int64
		if err := rows.Scan(&l.Schema, &l.Table, &l.Name, &l.Method, &l.Keys, &l.Include, &l.Predicate, &l.Definition,
			&l.Unique, &l.Primary, &l.Constraint, &l.Valid, &l.Building, &l.Scans, &l.Bytes, &est); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading indexes: %w", err)
		}
		if est != nil {
			l.EstimatedBytes = *est
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading indexes: %w", err)
	}
	return out, nil
}

// spireSchema finds SPIRE's tables, or says there are none.
func spireSchema(ctx context.Context, conn *pgx.Conn) (spire.Schema, error) {
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		return s, err
	}
	if !s.Present {
		return s, fmt.Errorf("no SPIRE schema in database %q (no migrations table on the search_path): point --dsn at SPIRE's database", conn.Config().Database)
	}
	return s, nil
}
