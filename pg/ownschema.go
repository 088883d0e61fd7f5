package pg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// OwnSchema is the schema spiredb keeps its tables and views in: its
// migrations' version tables, migration_runs, backfill_jobs,
// view_refreshes and the materialized views.
const OwnSchema = "spiredb"

// ForeignSchemaError refuses to work in spiredb's schema when it, or a
// relation in it, belongs to a role that is neither a superuser nor holds
// the session role's privileges. spiredb writes and reads those tables as
// its own role, so their owner's triggers, defaults, rules or views (a
// view in place of a table) would run that owner's code with spiredb's
// privileges; and a schema's owner may drop and replace any table in it.
// A role with CREATE on the database (SPIRE's own role usually owns it)
// can create the schema before spiredb does.
type ForeignSchemaError struct {
	Role string
	// Objects are "schema spiredb (owner role)" and "table spiredb.name
	// (owner role)".
	Objects []string
}

func (e *ForeignSchemaError) Error() string {
	return fmt.Sprintf("refusing to work as %s in schema %s: %s belong to a role without %s's privileges, whose triggers, defaults or views would run with them when spiredb writes or reads its tables; %s",
		e.Role, OwnSchema, firstOf(e.Objects, 5), e.Role, ForeignSchemaFix(e.Role))
}

// ForeignSchemaFix is what to do about a ForeignSchemaError (doctor's fix
// for security.spiredb_schema too).
func ForeignSchemaFix(role string) string {
	r := pgx.Identifier{role}.Sanitize()
	return "run spiredb as that role, or read what they hold, drop what is not spiredb's and hand the rest over: ALTER SCHEMA " + OwnSchema +
		" OWNER TO " + r + "; ALTER TABLE " + OwnSchema + ".<name> OWNER TO " + r + "; (DROP SCHEMA " + OwnSchema +
		" CASCADE loses only spiredb's job and refresh history, and the views, which spiredb migrate up and views create make again)"
}

// foreignSchemaSQL lists spiredb's schema and the relations in it that
// belong to a role that is neither a superuser nor holds the session
// role's privileges (code of a role that has all of ours borrows nothing).
const foreignSchemaSQL = `WITH me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user),
own AS (SELECT oid, nspowner FROM pg_catalog.pg_namespace WHERE nspname = $1)
SELECT pg_catalog.format('schema %I (owner %s)', $1::text, o.rolname)
FROM own JOIN pg_catalog.pg_roles o ON o.oid = own.nspowner AND NOT o.rolsuper
WHERE NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM me), 'MEMBER')
UNION ALL
SELECT * FROM (
	SELECT pg_catalog.format('%s %I.%I (owner %s)',
		CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
			WHEN 'S' THEN 'sequence' ELSE 'table' END, $1::text, c.relname, o.rolname)
	FROM pg_catalog.pg_class c JOIN own ON c.relnamespace = own.oid
	JOIN pg_catalog.pg_roles o ON o.oid = c.relowner AND NOT o.rolsuper
	WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
		AND NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM me), 'MEMBER')
	ORDER BY c.relname) rels`

// ForeignOwned lists, as "schema spiredb (owner role)" and "table
// spiredb.name (owner role)", what a ForeignSchemaError is about; none when
// the schema does not exist.
func ForeignOwned(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, Marker+foreignSchemaSQL, OwnSchema)
	if err != nil {
		return nil, fmt.Errorf("checking who owns schema %s: %w", OwnSchema, err)
	}
	objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("checking who owns schema %s: %w", OwnSchema, err)
	}
	return objects, nil
}

// CheckOwnSchema returns a ForeignSchemaError when spiredb's schema, or a
// relation in it, belongs to a less privileged role. Every library call
// that writes or reads the schema's tables runs it first.
func CheckOwnSchema(ctx context.Context, conn *pgx.Conn) error {
	objects, err := ForeignOwned(ctx, conn)
	if err != nil || len(objects) == 0 {
		return err
	}
	return &ForeignSchemaError{Role: conn.Config().User, Objects: objects}
}
