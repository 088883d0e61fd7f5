package indexes

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Index is one index of spiredb's SPIRE index set: what it is, which SPIRE
// statement it serves, and what the benchmark measured
// (integration/bench_indexes_test.go, docs/BENCHMARKS.md).
type Index struct {
	// Name is the index name; every index spiredb owns starts with spiredb_.
	Name    string   `json:"name"`
	Table   string   `json:"table"`
	Method  string   `json:"method"`
	Columns []string `json:"columns"`
	Include []string `json:"include,omitempty"`
	// Where is the predicate of a partial index, as PostgreSQL prints it.
	Where string `json:"where,omitempty"`
	// Serves names the SPIRE operations (spire.Statements labels) whose
	// statements the index speeds up.
	Serves []string `json:"serves"`
	// SchemaVersions is the range of SPIRE schema versions (its
	// migrations.version) the index was verified on.
	SchemaVersions [2]int `json:"schema_versions"`
	Why            string `json:"why"`
	// Measured is the benchmark's result.
	Measured Measurement `json:"measured"`
}

// Measurement is the benchmark's before/after on SPIRE's own statement and
// the cost to SPIRE's writes.
type Measurement struct {
	Fixture  string  `json:"fixture"`
	BeforeMs float64 `json:"before_ms"`
	AfterMs  float64 `json:"after_ms"`
	// WriteOverhead is the extra time of SPIRE's inserts into the table
	// (fraction: 0.12 is 12% slower).
	WriteOverhead float64 `json:"write_overhead"`
}

// Speedup is BeforeMs / AfterMs.
func (m Measurement) Speedup() float64 {
	if m.AfterMs == 0 {
		return 0
	}
	return m.BeforeMs / m.AfterMs
}

// Applies reports whether the index was verified for a SPIRE schema version.
func (ix Index) Applies(schemaVersion int) bool {
	return schemaVersion >= ix.SchemaVersions[0] && schemaVersion <= ix.SchemaVersions[1]
}

// access is the part of the definition after "ON table", as
// pg_get_indexdef prints it: "USING btree (expiry) WHERE (expiry <> 0)".
func (ix Index) access() string {
	var b strings.Builder
	fmt.Fprintf(&b, "USING %s (%s)", ix.Method, strings.Join(ix.Columns, ", "))
	if len(ix.Include) > 0 {
		fmt.Fprintf(&b, " INCLUDE (%s)", strings.Join(ix.Include, ", "))
	}
	if ix.Where != "" {
		fmt.Fprintf(&b, " WHERE %s", ix.Where)
	}
	return b.String()
}

// CreateSQL is the statement apply runs, for the SPIRE tables in schema.
func (ix Index) CreateSQL(schema string) string {
	return fmt.Sprintf("CREATE INDEX CONCURRENTLY %s ON %s %s",
		pgx.Identifier{ix.Name}.Sanitize(), pgx.Identifier{schema, ix.Table}.Sanitize(), ix.access())
}

// DropSQL drops the index without blocking SPIRE's reads and writes.
func (ix Index) DropSQL(schema string) string {
	return fmt.Sprintf("DROP INDEX CONCURRENTLY IF EXISTS %s", pgx.Identifier{schema, ix.Name}.Sanitize())
}

// Set is spiredb's SPIRE index set, each index kept because the benchmark
// on 200,000 entries and 500,000 events rows confirmed it (docs/BENCHMARKS.md).
func Set() []Index { return append([]Index(nil), spireSet...) }

// Lookup returns the set's index of that name.
func Lookup(name string) (Index, bool) {
	for _, ix := range spireSet {
		if ix.Name == name {
			return ix, true
		}
	}
	return Index{}, false
}

// benchFixture describes where the figures come from: BenchmarkIndexes,
// 2026-11-27, medians of 7 interleaved rounds; statement times are EXPLAIN
// ANALYZE execution times, write overheads 2,000 of SPIRE's single-row
// INSERTs into the table (-0.7% for entry events, recorded as 0).
const benchFixture = "200,000 entries (3-5 selectors each), 500,000 entry and 100,000 agent events rows, PostgreSQL 15, VACUUM ANALYZE"

var spireSet = []Index{
	{
		Name: "spiredb_registered_entries_expiry_set", Table: "registered_entries", Method: "btree",
		Columns: []string{"expiry"}, Where: "(expiry <> 0)",
		Serves:         []string{"expiry prune"},
		SchemaVersions: [2]int{23, 23},
		Why: "SPIRE prunes expired entries every 5 minutes with expiry != 0 AND expiry < now; " +
			"SPIRE's own index on expiry also holds every entry that never expires (expiry = 0, " +
			"most of them), all of which are < now, so the planner reads them all",
		Measured: Measurement{Fixture: benchFixture, BeforeMs: 40.433, AfterMs: 0.023, WriteOverhead: 0.049},
	},
	{
		Name: "spiredb_registered_entries_events_created_at", Table: "registered_entries_events", Method: "btree",
		Columns:        []string{"created_at"},
		Serves:         []string{"events prune"},
		SchemaVersions: [2]int{23, 23},
		Why: "SPIRE deletes entry events older than prune_events_older_than every half of it " +
			"(default every 6 h) with created_at < $1: without an index, a scan of the whole table",
		Measured: Measurement{Fixture: benchFixture, BeforeMs: 42.109, AfterMs: 0.031, WriteOverhead: 0},
	},
	{
		Name: "spiredb_attested_node_entries_events_created_at", Table: "attested_node_entries_events", Method: "btree",
		Columns:        []string{"created_at"},
		Serves:         []string{"events prune"},
		SchemaVersions: [2]int{23, 23},
		Why:            "the same prune on the agents' events table",
		Measured:       Measurement{Fixture: benchFixture, BeforeMs: 9.064, AfterMs: 0.040, WriteOverhead: 0.036},
	},
}

// Rejected are candidates the benchmark measured and did not confirm: kept
// here, with their figures, so the benchmark keeps measuring them and
// nobody adds them back on a guide's word.
func Rejected() []Index { return append([]Index(nil), rejected...) }

var rejected = []Index{
	{
		Name: "spiredb_selectors_entry_covering", Table: "selectors", Method: "btree",
		Columns: []string{"registered_entry_id"}, Include: []string{"id", "type", "value"},
		Serves:         []string{"cache reload page"},
		SchemaVersions: [2]int{23, 23},
		Why: "suggested by published SPIRE tuning notes, docs/spire.md (a 10k reload page 91.4 -> 69.3 ms): the page reads " +
			"selectors.id, which SPIRE's (registered_entry_id, type, value) index lacks. Measured " +
			"here, in four runs: the first page 1.09-1.18x faster, later pages 1.04-1.14x (target " +
			"1.2x), selector inserts 1-9.5% slower; the page's " +
			"time is its sort and UNION, not the selector lookups",
		Measured: Measurement{Fixture: benchFixture, BeforeMs: 143.619, AfterMs: 121.308, WriteOverhead: 0.010},
	},
}
