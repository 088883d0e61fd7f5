// Package views manages spiredb's operator-facing materialized views over
// SPIRE's tables: created in the spiredb schema, first populated in one go,
// then refreshed CONCURRENTLY (readers are never blocked) under a
// per-view try-lock, with each refresh's time and duration recorded.
package views

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
	spiresql "github.com/spiredb/spiredb/sql"
)

// Schema is where spiredb keeps its own objects.
const Schema = pg.OwnSchema

// View is one materialized view.
type View struct {
	Name string
	// UniqueKey is the columns of the plain unique index REFRESH ...
	// CONCURRENTLY requires.
	UniqueKey []string
	Purpose   string
}

var all = []View{
	{Name: "entry_selectors", UniqueKey: []string{"id"}, Purpose: "registration entries with their selectors as type:value, for audits and dashboards"},
}

// All returns the views spiredb manages.
func All() []View { return append([]View(nil), all...) }

// UnknownViewError names a view spiredb does not manage.
type UnknownViewError struct{ Name string }

func (e *UnknownViewError) Error() string {
	names := make([]string, len(all))
	for i, v := range all {
		names[i] = v.Name
	}
	return fmt.Sprintf("no view %q (spiredb manages: %s)", e.Name, strings.Join(names, ", "))
}

// Select returns the named views, or all for an empty name.
func Select(name string) ([]View, error) {
	if name == "" {
		return All(), nil
	}
	for _, v := range all {
		if v.Name == name {
			return []View{v}, nil
		}
	}
	return nil, &UnknownViewError{Name: name}
}

func (v View) qualified() string { return pgx.Identifier{Schema, v.Name}.Sanitize() }

func (v View) query(spireSchema string) (string, error) {
	b, err := fs.ReadFile(spiresql.Views, "views/"+v.Name+".sql")
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(string(b), "{{schema}}", pgx.Identifier{spireSchema}.Sanitize()), nil
}

// lockKey is the advisory lock a refresh of v holds.
// lockName names the advisory lock a refresh of the view holds.
func (v View) lockName() string { return "views." + v.Name }

const bookkeepingSQL = `CREATE TABLE IF NOT EXISTS spiredb.view_refreshes (
	view_name    text PRIMARY KEY,
	refreshed_at timestamptz NOT NULL,
	duration_ms  double precision NOT NULL,
	row_count    bigint NOT NULL,
	concurrent   boolean NOT NULL
)`

// Create creates the views that do not exist yet (with their unique index)
// and populates them; existing views are left as they are.
func Create(ctx context.Context, conn *pgx.Conn, views []View) ([]Result, error) {
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		return nil, err
	}
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	if !s.Present {
		return nil, fmt.Errorf("no SPIRE schema in database %q: point --dsn at SPIRE's database", conn.Config().Database)
	}
	for _, q := range []string{"CREATE SCHEMA IF NOT EXISTS spiredb", bookkeepingSQL} {
		if _, err := conn.Exec(ctx, pg.Marker+q); err != nil {
			return nil, fmt.Errorf("creating spiredb's schema: %w", err)
		}
	}
	// again: a schema another role created since the first check is
	// that role's
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		return nil, err
	}
	var out []Result
	for _, v := range views {
		q, err := v.query(s.Schema)
		if err != nil {
			return nil, err
		}
		idx := pgx.Identifier{v.Name + "_key"}.Sanitize()
		cols := make([]string, len(v.UniqueKey))
		for i, c := range v.UniqueKey {
			cols[i] = pgx.Identifier{c}.Sanitize()
		}
		// A view's functions and operators are bound when it is created, and
		// every refresh runs them as the view's owner. Its tables are
		// qualified, so it is created with pg_catalog alone on the
		// search_path: an aggregate another role put in public (a
		// public.array_agg(text) beats pg_catalog's polymorphic one) is
		// never bound in.
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			for _, stmt := range []string{
				"SET LOCAL search_path = pg_catalog, pg_temp",
				"CREATE MATERIALIZED VIEW IF NOT EXISTS " + v.qualified() + " AS " + q + " WITH NO DATA",
				"CREATE UNIQUE INDEX IF NOT EXISTS " + idx + " ON " + v.qualified() + " (" + strings.Join(cols, ", ") + ")",
			} {
				if _, err := tx.Exec(ctx, pg.Marker+stmt); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("creating view %s: %w", v.Name, err)
		}
		r, err := Refresh(ctx, conn, v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Result is one refresh.
type Result struct {
	View string `json:"view"`
	// Skipped is set when another refresh of the view held its lock.
	Skipped      bool          `json:"skipped"`
	Concurrently bool          `json:"concurrently"`
	Duration     time.Duration `json:"duration_ns"`
	Rows         int64         `json:"rows"`
}

// ErrNotCreated is returned for a view that does not exist yet.
var ErrNotCreated = errors.New("view not created yet: run spiredb views create")

// Refresh refreshes a view if no other refresh of it runs (a session
// advisory lock, released at the end): the first population in one go (a
// view WITH NO DATA cannot be refreshed concurrently), later ones
// CONCURRENTLY so readers are never blocked.
func Refresh(ctx context.Context, conn *pgx.Conn, v View) (Result, error) {
	r := Result{View: v.Name}
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		return r, err
	}
	// the refresh reads SPIRE's tables as the view's owner: none may run
	// another role's code (a policy) with its privileges
	if _, err := spire.ReadSchema(ctx, conn); err != nil {
		return r, err
	}
	var exists, populated bool
	err := conn.QueryRow(ctx, pg.Marker+`SELECT count(*) > 0, coalesce(bool_or(ispopulated), false) FROM pg_catalog.pg_matviews
		WHERE schemaname = $1 AND matviewname = $2`, Schema, v.Name).Scan(&exists, &populated)
	if err != nil {
		return r, err
	}
	if !exists {
		return r, fmt.Errorf("%s: %w", v.Name, ErrNotCreated)
	}
	if err := checkBindings(ctx, conn, v); err != nil {
		return r, err
	}
	lock, locked, err := pg.TryAdvisoryLock(ctx, conn, v.lockName())
	if err != nil {
		return r, err
	}
	if !locked {
		r.Skipped = true
		return r, nil
	}
	defer lock.Unlock(ctx)
	stmt := "REFRESH MATERIALIZED VIEW "
	if populated {
		stmt += "CONCURRENTLY "
		r.Concurrently = true
	}
	start := time.Now()
	if _, err := conn.Exec(ctx, pg.Marker+stmt+v.qualified()); err != nil {
		return r, fmt.Errorf("refreshing %s: %w", v.Name, err)
	}
	r.Duration = time.Since(start)
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT count(*) FROM "+v.qualified()).Scan(&r.Rows); err != nil {
		return r, err
	}
	_, err = conn.Exec(ctx, pg.Marker+`INSERT INTO spiredb.view_refreshes (view_name, refreshed_at, duration_ms, row_count, concurrent)
		VALUES ($1, now(), $2, $3, $4)
		ON CONFLICT (view_name) DO UPDATE SET refreshed_at = excluded.refreshed_at, duration_ms = excluded.duration_ms,
			row_count = excluded.row_count, concurrent = excluded.concurrent`,
		v.Name, float64(r.Duration.Microseconds())/1000, r.Rows, r.Concurrently)
	if err != nil {
		return r, fmt.Errorf("recording the refresh of %s: %w", v.Name, err)
	}
	return r, nil
}

// checkBindings refuses to refresh a view bound to a function or operator
// outside pg_catalog: spiredb's views call pg_catalog's alone, so such a
// binding is another role's code (a view created before spiredb created
// its views with pg_catalog alone on the search_path), which the refresh
// would run with the view owner's privileges.
func checkBindings(ctx context.Context, conn *pgx.Conn, v View) error {
	var foreign []string
	rows, err := conn.Query(ctx, pg.Marker+`SELECT DISTINCT CASE WHEN p.oid IS NOT NULL
		THEN pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes))
		ELSE pg_catalog.format('%I.%s(%s, %s)', n.nspname, o.oprname, o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype) END,
	pg_catalog.pg_get_userbyid(coalesce(p.proowner, o.oprowner))
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
LEFT JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = coalesce(p.pronamespace, o.oprnamespace)
WHERE r.ev_class = pg_catalog.to_regclass($1) AND n.nspname <> 'pg_catalog'`, v.qualified())
	if err != nil {
		return fmt.Errorf("checking what %s calls: %w", v.Name, err)
	}
	for rows.Next() {
		var obj, owner string
		if err := rows.Scan(&obj, &owner); err != nil {
			return err
		}
		foreign = append(foreign, obj+" (owner "+owner+")")
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("checking what %s calls: %w", v.Name, err)
	}
	if len(foreign) > 0 {
		sort.Strings(foreign)
		return fmt.Errorf("%s calls %s, not pg_catalog's: a refresh would run it with the view owner's privileges; drop the view (DROP MATERIALIZED VIEW %s) and run spiredb views create",
			v.Name, strings.Join(foreign, ", "), v.qualified())
	}
	return nil
}

// Status is one view's state.
type Status struct {
	View        string     `json:"view"`
	Exists      bool       `json:"exists"`
	Populated   bool       `json:"populated"`
	RefreshedAt *time.Time `json:"refreshed_at,omitempty"`
	DurationMs  float64    `json:"duration_ms"`
	Rows        int64      `json:"rows"`
	// Age is how long ago the last refresh ended.
	Age time.Duration `json:"age_ns"`
	// ChangesSince counts SPIRE's entry events (one per create, update or
	// delete) after the last refresh: 0 means the view is current, as far
	// as SPIRE's events (pruned after prune_events_older_than) tell.
	ChangesSince int64 `json:"changes_since"`
}

// GetStatus reports each view's last refresh and staleness.
func GetStatus(ctx context.Context, conn *pgx.Conn, views []View) ([]Status, error) {
	if err := pg.CheckOwnSchema(ctx, conn); err != nil {
		return nil, err
	}
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	var hasBook bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.to_regclass('spiredb.view_refreshes') IS NOT NULL").Scan(&hasBook); err != nil {
		return nil, err
	}
	var out []Status
	for _, v := range views {
		st := Status{View: v.Name}
		err := conn.QueryRow(ctx, pg.Marker+`SELECT count(*) > 0, coalesce(bool_or(ispopulated), false) FROM pg_catalog.pg_matviews
			WHERE schemaname = $1 AND matviewname = $2`, Schema, v.Name).Scan(&st.Exists, &st.Populated)
		if err != nil {
			return nil, err
		}
		if hasBook {
			var at time.Time
			var now time.Time
			err := conn.QueryRow(ctx, pg.Marker+"SELECT refreshed_at, duration_ms, row_count, now() FROM spiredb.view_refreshes WHERE view_name = $1", v.Name).
				Scan(&at, &st.DurationMs, &st.Rows, &now)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				return nil, err
			default:
				st.RefreshedAt = &at
				st.Age = now.Sub(at)
				if s.Present {
					events := pgx.Identifier{s.Schema, "registered_entries_events"}.Sanitize()
					if err := conn.QueryRow(ctx, pg.Marker+"SELECT count(*) FROM "+events+" WHERE created_at > $1", at).Scan(&st.ChangesSince); err != nil {
						return nil, err
					}
				}
			}
		}
		out = append(out, st)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].View < out[j].View })
	return out, nil
}
