package spire_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestCompatible(t *testing.T) {
	t.Parallel()
	cases := []struct {
		schema spire.Schema
		want   string
	}{
		{spire.Schema{}, "any (a new spire-server creates the schema)"},
		{spire.Schema{Present: true, Version: 23, CodeVersion: "1.13.3"}, "v1.8.0 to v1.13.x"},
		// a database last touched by 1.8.0: a 1.7 server (one minor back)
		// still starts on the newer schema
		{spire.Schema{Present: true, Version: 23, CodeVersion: "1.8.0"}, "v1.7.x (within one minor of code_version 1.8.0), v1.8.0 to v1.13.x"},
		{spire.Schema{Present: true, Version: 22, CodeVersion: "1.7.2"}, "v1.6.x (within one minor of code_version 1.7.2), v1.7.2 to v1.7.x"},
		{spire.Schema{Present: true, Version: 21, CodeVersion: "1.6.3"}, "v1.5.x (within one minor of code_version 1.6.3), v1.6.0 to v1.7.1"},
		{spire.Schema{Present: true, Version: 99, CodeVersion: "9.0.0"}, "unknown"},
	}
	for _, c := range cases {
		require.Equal(t, c.want, spire.Compatible(c.schema).Servers, "%+v", c.schema)
	}
}

func TestReadSchemaAndCountRows(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	s, err := spire.ReadSchema(ctx, db.Pool)
	require.NoError(t, err)
	require.False(t, s.Present)

	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	sum, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 500})
	require.NoError(t, err)

	s, err = spire.ReadSchema(ctx, db.Pool)
	require.NoError(t, err)
	require.Equal(t, spire.Schema{Present: true, Version: 23, CodeVersion: "1.13.3", Schema: "public"}, s)
	counts, err := spire.CountRows(ctx, db.Pool, s.Schema)
	require.NoError(t, err)
	require.Len(t, counts, len(spire.Tables))
	require.EqualValues(t, 500, counts["registered_entries"])
	require.Equal(t, sum.Selectors, counts["selectors"])
	require.EqualValues(t, 1, counts["migrations"])
}

// TestReadSchemaFindsSpiresMigrationsTableOnly: another application's
// "migrations" table (Laravel's, TypeORM's) first on the search_path is
// not SPIRE's: SPIRE's is found behind it by its columns. Two schemas on
// the path each with one of SPIRE's shape (a copy left behind, or a decoy
// in a schema named after spiredb's role, where "$user" looks first) is
// ambiguous: refused, naming both, rather than reading the first.
func TestReadSchemaFindsSpiresMigrationsTableOnly(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 10})
	require.NoError(t, err)
	exec := func(qs ...string) {
		for _, q := range qs {
			_, err := conn.Exec(ctx, q)
			require.NoError(t, err)
		}
	}
	exec("CREATE SCHEMA app",
		"CREATE TABLE app.migrations (id serial PRIMARY KEY, migration text NOT NULL, batch int NOT NULL)",
		"INSERT INTO app.migrations (migration, batch) VALUES ('2014_10_12_000000_create_users_table', 1)",
		"SET search_path = app, public")
	s, err := spire.ReadSchema(ctx, conn)
	require.NoError(t, err)
	require.Equal(t, spire.Schema{Present: true, Version: 23, CodeVersion: "1.13.3", Schema: "public"}, s)

	exec("CREATE SCHEMA decoy",
		"CREATE TABLE decoy.migrations (LIKE public.migrations)",
		"INSERT INTO decoy.migrations SELECT * FROM public.migrations",
		"SET search_path = app, decoy, public")
	_, err = spire.ReadSchema(ctx, conn)
	var amb *spire.AmbiguousSchemaError
	require.ErrorAs(t, err, &amb)
	require.Equal(t, []string{"decoy", "public"}, amb.Schemas)
	require.Contains(t, err.Error(), "search_path")
}
