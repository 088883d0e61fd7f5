// Package spire holds what spiredb knows about the schema a spire-server
// creates in its SQL datastore: its tables, the `migrations` row that records
// the schema and code versions, and which spire-server releases can start on
// a given schema.
//
// The facts come from running spire-server v1.13.3 (see
// integration/testdata and `make spire-fixture`) and from SPIRE's own
// migration table (pkg/server/datastore/sqlstore/migration.go).
package spire

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spiredb/spiredb/pg"
)

// Tables is every table SPIRE 1.13 creates, in dependency-free order.
var Tables = []string{
	"registered_entries",
	"selectors",
	"dns_names",
	"federated_registration_entries",
	"bundles",
	"attested_node_entries",
	"node_resolver_map_entries",
	"join_tokens",
	"federated_trust_domains",
	"ca_journals",
	"registered_entries_events",
	"attested_node_entries_events",
	"migrations",
}

// Querier is what the functions here need: a *pgx.Conn, a pgxpool.Pool or
// a pgx.Tx.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Schema is SPIRE's record of its own schema.
type Schema struct {
	// Present is false when the database has no SPIRE `migrations` table.
	Present bool `json:"present"`
	// Version is migrations.version (23 for SPIRE 1.8 to 1.13).
	Version int `json:"version,omitempty"`
	// CodeVersion is the newest spire-server version that ran on it.
	CodeVersion string `json:"code_version,omitempty"`
	// Schema is the PostgreSQL schema the tables live in.
	Schema string `json:"schema,omitempty"`
}

// AmbiguousSchemaError is returned when more than one schema on the
// search_path holds a migrations table of SPIRE's shape: reading the
// first would be a guess (a copy left behind, or a decoy in a schema named
// after spiredb's role, which "$user" puts first).
type AmbiguousSchemaError struct {
	// Schemas are in search_path order.
	Schemas []string
}

func (e *AmbiguousSchemaError) Error() string {
	return fmt.Sprintf("SPIRE's migrations table is in more than one schema on the search_path (%s): spiredb will not guess which is SPIRE's datastore; set the search_path of spiredb's role to SPIRE's schema (ALTER ROLE … SET search_path = …, or options=-csearch_path=… in the DSN), or drop the copy that is not SPIRE's",
		strings.Join(e.Schemas, ", "))
}

// spireSchemasSQL lists, in search_path order, the schemas on it with a
// relation named migrations that has SPIRE's columns (version,
// code_version): another application's migrations table is not SPIRE's.
const spireSchemasSQL = `SELECT n.nspname::text
FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS p(nsp, i)
JOIN pg_catalog.pg_namespace n ON n.nspname = p.nsp
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'migrations'
WHERE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a
	WHERE a.attrelid = c.oid AND a.attname IN ('version', 'code_version') AND a.attnum > 0 AND NOT a.attisdropped) = 2
ORDER BY p.i`

// ReadSchema reads SPIRE's migrations row from the schema on the
// search_path that has SPIRE's migrations table. It returns, reading
// nothing, an AmbiguousSchemaError when more than one has, and a
// ForeignCodeError when a relation of SPIRE's name there would run
// another role's code.
func ReadSchema(ctx context.Context, q Querier) (Schema, error) {
	rows, err := q.Query(ctx, pg.Marker+spireSchemasSQL)
	if err != nil {
		return Schema{}, fmt.Errorf("looking for SPIRE's migrations table: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return Schema{}, fmt.Errorf("looking for SPIRE's migrations table: %w", err)
	}
	if len(found) == 0 {
		return Schema{}, nil
	}
	// code first: a decoy's view must be named as what it is
	for _, nsp := range found {
		if err := checkReadable(ctx, q, nsp); err != nil {
			return Schema{}, err
		}
	}
	if len(found) > 1 {
		return Schema{}, &AmbiguousSchemaError{Schemas: found}
	}
	s := Schema{Present: true, Schema: found[0]}
	var code *string
	var version *int
	err = q.QueryRow(ctx, pg.Marker+"SELECT version, code_version FROM "+pgx.Identifier{s.Schema, "migrations"}.Sanitize()+" ORDER BY id DESC LIMIT 1").Scan(&version, &code)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return Schema{}, fmt.Errorf("reading SPIRE's migrations row: %w", err)
	}
	if version != nil {
		s.Version = *version
	}
	if code != nil {
		s.CodeVersion = *code
	}
	return s, nil
}

// ForeignCodeError refuses to read a schema where a relation of SPIRE's
// name would run another, less privileged role's code with the reader's
// privileges: a view (or foreign table) in place of SPIRE's table, or a
// table whose row-level security policies apply to the reader. SPIRE
// creates plain tables without policies, and reading a plain table runs
// nobody's code. Such a view can also sit in a schema the search_path
// puts before SPIRE's ("$user"), where spiredb would find it first.
type ForeignCodeError struct {
	Role string
	// Relations are "schema.name (a view, owner role)".
	Relations []string
}

func (e *ForeignCodeError) Error() string {
	return fmt.Sprintf("refusing to read SPIRE's schema as %s: %s would run their owner's code with %s's privileges when read, and SPIRE creates plain tables without policies: find out who made them, then drop them or move them off the search_path (spiredb doctor lists them as security.spire_tables)",
		e.Role, strings.Join(e.Relations, ", "), e.Role)
}

// foreignCodeSQL lists the relations of SPIRE's names in a schema that run
// code when read (views, foreign tables; tables whose row-level security
// applies to this role and has policies), owned by a role that is neither
// a superuser nor holds this role's privileges.
const foreignCodeSQL = `WITH me AS (SELECT oid, rolsuper OR rolbypassrls AS bypass FROM pg_catalog.pg_roles WHERE rolname = current_user)
SELECT current_user::text, pg_catalog.format('%I.%I (%s, owner %s)', n.nspname, c.relname,
	CASE c.relkind WHEN 'v' THEN 'a view' WHEN 'f' THEN 'a foreign table' ELSE 'row-level security policies' END, o.rolname)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_roles o ON o.oid = c.relowner AND NOT o.rolsuper
WHERE n.nspname = $1 AND c.relname = ANY ($2)
	AND NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM me), 'MEMBER')
	AND (c.relkind IN ('v', 'f')
		OR (c.relkind IN ('r', 'p') AND c.relrowsecurity AND NOT (SELECT bypass FROM me)
			AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'))
			AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)))
ORDER BY c.relname`

// ForeignCode lists what a ForeignCodeError is about in schema nsp, and
// the role reading.
func ForeignCode(ctx context.Context, q Querier, nsp string) (role string, relations []string, err error) {
	rows, err := q.Query(ctx, pg.Marker+foreignCodeSQL, nsp, Tables)
	if err != nil {
		return "", nil, fmt.Errorf("checking SPIRE's tables in %s: %w", nsp, err)
	}
	var rel string
	_, err = pgx.ForEachRow(rows, []any{&role, &rel}, func() error { relations = append(relations, rel); return nil })
	if err != nil {
		return "", nil, fmt.Errorf("checking SPIRE's tables in %s: %w", nsp, err)
	}
	return role, relations, nil
}

func checkReadable(ctx context.Context, q Querier, nsp string) error {
	role, relations, err := ForeignCode(ctx, q, nsp)
	if err != nil || len(relations) == 0 {
		return err
	}
	return &ForeignCodeError{Role: role, Relations: relations}
}

// PresentTables returns which of SPIRE's Tables exist in schema nsp
// ("" is public).
func PresentTables(ctx context.Context, q Querier, nsp string) ([]string, error) {
	if nsp == "" {
		nsp = "public"
	}
	rows, err := q.Query(ctx, pg.Marker+`SELECT c.relname FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r','p') AND c.relname = ANY($2)`, nsp, Tables)
	if err != nil {
		return nil, fmt.Errorf("listing SPIRE tables: %w", err)
	}
	present, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing SPIRE tables: %w", err)
	}
	return present, nil
}

// CountRows returns the exact row count of each SPIRE table that exists in
// schema nsp. Run it in a REPEATABLE READ transaction (or on an exported
// snapshot) for counts that agree with each other.
func CountRows(ctx context.Context, q Querier, nsp string) (map[string]int64, error) {
	if nsp == "" {
		nsp = "public"
	}
	present, err := PresentTables(ctx, q, nsp)
	if err != nil {
		return nil, err
	}
	if len(present) == 0 {
		return map[string]int64{}, nil
	}
	parts := make([]string, len(present))
	for i, t := range present {
		parts[i] = fmt.Sprintf("SELECT %s::text, count(*) FROM %s", quoteLiteral(t), pgx.Identifier{nsp, t}.Sanitize())
	}
	rows, err := q.Query(ctx, pg.Marker+strings.Join(parts, " UNION ALL "))
	if err != nil {
		return nil, fmt.Errorf("counting SPIRE rows: %w", err)
	}
	counts := make(map[string]int64, len(present))
	var name string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error { counts[name] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("counting SPIRE rows: %w", err)
	}
	return counts, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// release is the first spire-server version that created a schema version.
type release struct {
	minor, patch int // 1.minor.patch
	schema       int
}

// schemaReleases lists, for SPIRE 1.x, the release that introduced each
// recent schema version (from SPIRE's migration.go table).
var schemaReleases = []release{
	{6, 0, 21},
	{7, 2, 22},
	{8, 0, 23},
}

// KnownLatestMinor is the newest SPIRE minor release spiredb has been
// verified against.
const KnownLatestMinor = 13

// Compatibility describes which spire-server releases start on a schema.
type Compatibility struct {
	// Servers is a human range such as "v1.7.x (within one minor of
	// code_version 1.8.0), v1.8.0 to v1.13.x".
	Servers string `json:"servers"`
	// Note explains limits of the answer.
	Note string `json:"note,omitempty"`
}

// Compatible applies SPIRE's own start-up rule (sqlstore migrateDB): a
// server starts when the schema version equals its latest; when the schema
// is newer than it knows, only if its minor version is within one of the
// stored code_version; when older, it migrates forward (with auto-migration
// enabled) if its migrations still cover that version.
func Compatible(s Schema) Compatibility {
	if !s.Present {
		return Compatibility{Servers: "any (a new spire-server creates the schema)"}
	}
	first, upto := -1, ""
	for i, r := range schemaReleases {
		if r.schema != s.Version {
			continue
		}
		first = r.minor
		switch {
		case i+1 == len(schemaReleases):
			upto = fmt.Sprintf("v1.%d.x", KnownLatestMinor)
		case schemaReleases[i+1].patch > 0:
			next := schemaReleases[i+1]
			upto = fmt.Sprintf("v1.%d.%d", next.minor, next.patch-1)
		default:
			upto = fmt.Sprintf("v1.%d.x", schemaReleases[i+1].minor-1)
		}
	}
	if first < 0 {
		return Compatibility{Servers: "unknown", Note: fmt.Sprintf("schema version %d is outside what spiredb knows (21-23)", s.Version)}
	}
	var parts []string
	codeMinor := minorOf(s.CodeVersion)
	if codeMinor >= 0 && codeMinor-1 < first && codeMinor-1 >= 0 {
		parts = append(parts, fmt.Sprintf("v1.%d.x (within one minor of code_version %s)", codeMinor-1, s.CodeVersion))
	}
	parts = append(parts, fmt.Sprintf("v1.%d.%d to %s", first, firstPatch(s.Version), upto))
	c := Compatibility{Servers: strings.Join(parts, ", ")}
	if upto == fmt.Sprintf("v1.%d.x", KnownLatestMinor) {
		c.Note = fmt.Sprintf("releases after v1.%d may migrate it forward; SPIRE supports upgrading one minor version at a time", KnownLatestMinor)
	}
	return c
}

func firstPatch(schema int) int {
	for _, r := range schemaReleases {
		if r.schema == schema {
			return r.patch
		}
	}
	return 0
}

func minorOf(v string) int {
	f := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(f) < 2 || f[0] != "1" {
		return -1
	}
	m, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return m
}

// Indexes are the indexes SPIRE 1.13 creates (besides its primary keys),
// by name, with their table: spiredb never proposes dropping one.
// spire/schema.sql, made by a real spire-server, is
// checked against this list.
var Indexes = map[string]string{
	"idx_attested_node_entries_expires_at":     "attested_node_entries",
	"idx_ca_journals_active_jwt_authority_id":  "ca_journals",
	"idx_ca_journals_active_x509_authority_id": "ca_journals",
	"idx_dns_entry": "dns_names",
	"idx_federated_registration_entries_registered_entry_id": "federated_registration_entries",
	"idx_node_resolver_map":                                  "node_resolver_map_entries",
	"idx_registered_entries_expiry":                          "registered_entries",
	"idx_registered_entries_hint":                            "registered_entries",
	"idx_registered_entries_parent_id":                       "registered_entries",
	"idx_registered_entries_spiffe_id":                       "registered_entries",
	"idx_selector_entry":                                     "selectors",
	"idx_selectors_type_value":                               "selectors",
	"uix_attested_node_entries_spiffe_id":                    "attested_node_entries",
	"uix_bundles_trust_domain":                               "bundles",
	"uix_federated_trust_domains_trust_domain":               "federated_trust_domains",
	"uix_join_tokens_token":                                  "join_tokens",
	"uix_registered_entries_entry_id":                        "registered_entries",
}
