package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// The classic zero-downtime steps, each idempotent and safe to re-run
// after a failure at any point. Tables and columns are plain names
// (quoted here); the table may be schema-qualified as "schema.table".

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func qualifiedTable(table string) string {
	for i := 0; i < len(table); i++ {
		if table[i] == '.' {
			return pgx.Identifier{table[:i], table[i+1:]}.Sanitize()
		}
	}
	return ident(table)
}

func exec(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	_, err := conn.Exec(ctx, pg.Marker+sql, args...)
	return err
}

// AddNotNull makes column NOT NULL without a long ACCESS EXCLUSIVE scan:
// CHECK (col IS NOT NULL) NOT VALID (a brief lock), VALIDATE (a scan that
// lets reads and writes go on), SET NOT NULL (PostgreSQL 12+ trusts the
// validated check: no scan), then drops the check.
func AddNotNull(ctx context.Context, conn *pgx.Conn, table, column string) error {
	var notNull bool
	err := conn.QueryRow(ctx, pg.Marker+`SELECT a.attnotnull FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped`, qualifiedTable(table), column).Scan(&notNull)
	if err != nil {
		return fmt.Errorf("%s.%s: %w", table, column, err)
	}
	check := ident(column + "_not_null")
	t := qualifiedTable(table)
	if !notNull {
		if err := AddConstraint(ctx, conn, table, column+"_not_null", "CHECK ("+ident(column)+" IS NOT NULL)"); err != nil {
			return err
		}
		if err := exec(ctx, conn, "ALTER TABLE "+t+" ALTER COLUMN "+ident(column)+" SET NOT NULL"); err != nil {
			return err
		}
	}
	return exec(ctx, conn, "ALTER TABLE "+t+" DROP CONSTRAINT IF EXISTS "+check)
}

// AddConstraint adds a CHECK or FOREIGN KEY constraint NOT VALID (a brief
// lock, no scan), then VALIDATEs it (SHARE UPDATE EXCLUSIVE: reads and
// writes go on). definition is e.g. "CHECK (ttl > 0)" or
// "FOREIGN KEY (a) REFERENCES b (id)". An existing constraint of that name
// is validated, not re-added.
func AddConstraint(ctx context.Context, conn *pgx.Conn, table, name, definition string) error {
	t := qualifiedTable(table)
	var exists bool
	err := conn.QueryRow(ctx, pg.Marker+"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = pg_catalog.to_regclass($1) AND conname = $2)",
		t, name).Scan(&exists)
	if err != nil {
		return err
	}
	if !exists {
		if err := exec(ctx, conn, "ALTER TABLE "+t+" ADD CONSTRAINT "+ident(name)+" "+definition+" NOT VALID"); err != nil {
			return fmt.Errorf("adding %s NOT VALID: %w", name, err)
		}
	}
	if err := exec(ctx, conn, "ALTER TABLE "+t+" VALIDATE CONSTRAINT "+ident(name)); err != nil {
		return fmt.Errorf("validating %s: %w", name, err)
	}
	return nil
}

// CreateIndexConcurrently builds an index (definition: "ON table (cols)
// [WHERE ...]", "UNIQUE" prefixed by unique) with CREATE INDEX
// CONCURRENTLY, dropping first an INVALID index of that name left by an
// earlier failed build. A valid index of that name is left alone.
func CreateIndexConcurrently(ctx context.Context, conn *pgx.Conn, schema, name, definition string, unique bool) error {
	q := pgx.Identifier{schema, name}.Sanitize()
	var valid *bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = pg_catalog.to_regclass($1))", q).Scan(&valid); err != nil {
		return err
	}
	if valid != nil && *valid {
		return nil
	}
	if valid != nil {
		if err := exec(ctx, conn, "DROP INDEX CONCURRENTLY IF EXISTS "+q); err != nil {
			return fmt.Errorf("dropping the INVALID %s: %w", name, err)
		}
	}
	kind := "INDEX"
	if unique {
		kind = "UNIQUE INDEX"
	}
	if err := exec(ctx, conn, "CREATE "+kind+" CONCURRENTLY "+ident(name)+" "+definition); err != nil {
		_ = exec(context.WithoutCancel(ctx), conn, "DROP INDEX CONCURRENTLY IF EXISTS "+q)
		return fmt.Errorf("building %s: %w", name, err)
	}
	return nil
}

// DropIndexConcurrently drops an index without blocking the table.
func DropIndexConcurrently(ctx context.Context, conn *pgx.Conn, schema, name string) error {
	return exec(ctx, conn, "DROP INDEX CONCURRENTLY IF EXISTS "+pgx.Identifier{schema, name}.Sanitize())
}
