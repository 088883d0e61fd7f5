package lint

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// LoadCatalog reads the tables on the connection's search_path: estimated
// rows, columns, indexes (plain key columns), and which materialized views
// have a plain unique index.
func LoadCatalog(ctx context.Context, conn *pgx.Conn) (*Catalog, error) {
	c := &Catalog{Tables: map[string]*Table{}, MatviewUniqueIndex: map[string]bool{}}
	rows, err := conn.Query(ctx, pg.Marker+`SELECT c.relname, c.relkind::text, greatest(c.reltuples, 0)::int8
		FROM pg_catalog.pg_class c
		WHERE c.relkind IN ('r', 'p', 'm') AND c.relnamespace IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY (pg_catalog.current_schemas(false)))`)
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	var name, kind string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&name, &kind, &n}, func() error {
		c.Tables[name] = &Table{Rows: n, Columns: map[string]string{}}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	rows, err = conn.Query(ctx, pg.Marker+`SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		WHERE c.relkind IN ('r', 'p', 'm') AND c.relnamespace IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY (pg_catalog.current_schemas(false)))
		  AND a.attnum > 0 AND NOT a.attisdropped`)
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	var col, typ string
	_, err = pgx.ForEachRow(rows, []any{&name, &col, &typ}, func() error {
		if t := c.Tables[name]; t != nil {
			t.Columns[col] = typ
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	rows, err = conn.Query(ctx, pg.Marker+catalogIndexesSQL)
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	var idx string
	var plainUnique bool
	var keys []string
	_, err = pgx.ForEachRow(rows, []any{&name, &kind, &idx, &plainUnique, &keys}, func() error {
		if t := c.Tables[name]; t != nil {
			t.Indexes = append(t.Indexes, CatalogIndex{Name: idx, Keys: append([]string(nil), keys...)})
		}
		if kind == "m" && plainUnique {
			c.MatviewUniqueIndex[name] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the catalog: %w", err)
	}
	return c, nil
}
