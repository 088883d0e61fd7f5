package pg

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ShadowError refuses a session whose search_path holds functions or
// operators, named like pg_catalog's, of a role that lacks the session
// role's privileges. An exact argument-type match wins over pg_catalog's
// polymorphic or coerced version (count("any"), array_agg(anynonarray),
// || and LIKE on name), so an unqualified call in spiredb's SQL, or in a
// view or index it creates, would run that role's code with spiredb's
// privileges (CVE-2018-1058's pattern).
type ShadowError struct {
	Role string
	// Objects are "schema.name(args) (owner role)".
	Objects []string
}

func (e *ShadowError) Error() string {
	return fmt.Sprintf("refusing to work as %s: the search_path holds %s, named like pg_catalog's and owned by a role without %s's privileges, which spiredb's statements could call with them; drop them or move them off the search_path (spiredb doctor lists them as security.shadowing)",
		e.Role, firstOf(e.Objects, 5), e.Role)
}

// firstOf joins the first n of objects, and says how many there are in
// all when there are more: an error stays one readable line.
func firstOf(objects []string, n int) string {
	if len(objects) > n {
		objects = append(objects[:n:n], fmt.Sprintf("… %d in all", len(objects)))
	}
	return strings.Join(objects, ", ")
}

// shadowSQL lists the search_path's functions, aggregates and operators
// that have a pg_catalog name, belong to no extension, and are owned by a
// role that is neither a superuser nor holds the session role's
// privileges (running a role's own code, or code of a role that has all of
// ours, borrows nothing).
const shadowSQL = `WITH path AS (
	SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
	WHERE (n.nspname = ANY (pg_catalog.current_schemas(false)) OR n.nspname = $1) AND n.nspname <> 'pg_catalog'
), me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
SELECT pg_catalog.format('%I.%I(%s) (owner %s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes), o.rolname)
FROM pg_catalog.pg_proc p JOIN path n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_roles o ON o.oid = p.proowner AND NOT o.rolsuper
WHERE NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM me), 'MEMBER')
	AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc c WHERE c.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.proname = p.proname)
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT pg_catalog.format('%I.%s(%s, %s) (owner %s)', n.nspname, op.oprname, op.oprleft::pg_catalog.regtype, op.oprright::pg_catalog.regtype, o.rolname)
FROM pg_catalog.pg_operator op JOIN path n ON n.oid = op.oprnamespace
JOIN pg_catalog.pg_roles o ON o.oid = op.oprowner AND NOT o.rolsuper
WHERE NOT pg_catalog.pg_has_role(o.oid, (SELECT oid FROM me), 'MEMBER')
	AND EXISTS (SELECT 1 FROM pg_catalog.pg_operator c WHERE c.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.oprname = op.oprname)
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = op.oid AND d.deptype = 'e')
ORDER BY 1`

// Shadowing lists, as "schema.name(args) (owner role)", the functions,
// aggregates and operators a ShadowError is about: on the session's
// search_path, or in schema too (SPIRE's; "" for none).
func Shadowing(ctx context.Context, conn *pgx.Conn, schema string) ([]string, error) {
	rows, err := conn.Query(ctx, Marker+shadowSQL, schema)
	if err != nil {
		return nil, fmt.Errorf("checking the search_path's functions and operators: %w", err)
	}
	objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("checking the search_path's functions and operators: %w", err)
	}
	return objects, nil
}

// checkShadowing returns a ShadowError when the session's search_path
// holds another role's shadowing functions or operators.
func checkShadowing(ctx context.Context, conn *pgx.Conn) error {
	objects, err := Shadowing(ctx, conn, "")
	if err != nil || len(objects) == 0 {
		return err
	}
	return &ShadowError{Role: conn.Config().User, Objects: objects}
}
