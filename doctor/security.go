package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// publicCreateSQL lists the schemas of the path every role may create in
// (public on PostgreSQL 13 and 14, unless revoked), with the role that
// owns SPIRE's tables, which must keep CREATE for SPIRE's migrations.
const publicCreateSQL = `SELECT n.nspname,
	coalesce((SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c
		WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('%I.registered_entries', $1::text))), '')
FROM pg_catalog.pg_namespace n
WHERE (n.nspname = ANY (pg_catalog.current_schemas(false)) OR n.nspname = $1) AND n.nspname <> 'pg_catalog'
	AND pg_catalog.has_schema_privilege('public', n.oid, 'CREATE')
ORDER BY 1`

// checkSchemaSafety finds what lets another role's code run inside SPIRE's
// and spiredb's statements: objects that shadow pg_catalog's on the path,
// and path schemas every role may create in.
func (r *Report) checkSchemaSafety(ctx context.Context, conn *pgx.Conn, spireSchema string) error {
	shadows, err := pg.Shadowing(ctx, conn, spireSchema)
	if err != nil {
		return err
	}
	if len(shadows) > 0 {
		r.add(Error, "security.shadowing", fmt.Sprintf("%s: on the search_path with the name of a pg_catalog function or operator, owned by a role without this role's privileges; an exact argument-type match wins over pg_catalog's polymorphic one, so a statement of SPIRE's or spiredb's that calls it runs its owner's code with the caller's privileges: spiredb's other commands refuse to work here until it is gone", strings.Join(shadows, ", ")),
			"check what each does; drop it, or move it to a schema off the search_path (ALTER FUNCTION … SET SCHEMA)")
	}
	owned, err := pg.ForeignOwned(ctx, conn)
	if err != nil {
		return err
	}
	if len(owned) > 0 {
		r.add(Error, "security.spiredb_schema", fmt.Sprintf("%s: spiredb's schema, or tables in it, belong to a role without this role's privileges; spiredb writes and reads them, so their owner's triggers, defaults or views would run with this role's privileges: migrate, backfill and views refuse to work here until it is fixed", strings.Join(owned, ", ")),
			pg.ForeignSchemaFix(conn.Config().User))
	}

	rows, err := conn.Query(ctx, pg.Marker+publicCreateSQL, spireSchema)
	if err != nil {
		return fmt.Errorf("reading the search_path's schema privileges: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var schema, spireOwner string
		if err := rows.Scan(&schema, &spireOwner); err != nil {
			return err
		}
		s := pgx.Identifier{schema}.Sanitize()
		fix := "REVOKE CREATE ON SCHEMA " + s + " FROM PUBLIC; (PostgreSQL 15's default)"
		if spireOwner != "" {
			fix = "GRANT CREATE ON SCHEMA " + s + " TO " + pgx.Identifier{spireOwner}.Sanitize() + "; REVOKE CREATE ON SCHEMA " + s +
				" FROM PUBLIC; (PostgreSQL 15's default; the role SPIRE's tables belong to keeps CREATE for SPIRE's migrations)"
		}
		r.add(Warning, "security.public_create", fmt.Sprintf("every role may create objects in schema %s, on the search_path: any of them can define functions or operators that SPIRE's and spiredb's statements would call with their privileges", schema), fix)
	}
	return rows.Err()
}
