package integration_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/pgtest/pgcontainer"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// The SPIRE fixture loads and doctor reads it on every PostgreSQL major in
// the container matrix. Runs where a Docker engine answers; skips, saying
// so, where none does (the local PostgreSQL 15 runs every other suite).
func TestPostgresVersionMatrix(t *testing.T) {
	for _, image := range pgcontainer.Images() {
		t.Run(strings.ReplaceAll(image, ":", "_"), func(t *testing.T) {
			srv := pgcontainer.Start(t, image)
			db := pgtest.NewDBOn(t, srv)
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, db.DSN)
			require.NoError(t, err)
			defer conn.Close(ctx)
			_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 1000})
			require.NoError(t, err)
			rep, err := doctor.Inspect(ctx, conn)
			require.NoError(t, err)
			major := strings.TrimPrefix(image[strings.LastIndex(image, ":")+1:], "postgres")
			require.Equal(t, major, fmt.Sprint(rep.Server.VersionNum/10000))
			require.EqualValues(t, 1000, rep.SPIRE.Entries)
			require.True(t, rep.Statements.Preloaded)

			// pg_stat_statements columns of this version map (total_time
			// renames, blk_*_time, stats_since)
			_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
			require.NoError(t, err)
			require.NoError(t, tuning.Reset(ctx, conn, false))
			for i := range 3 {
				_, err := conn.Exec(ctx, "SELECT count(*) AS version_probe FROM registered_entries WHERE id > $1", i)
				require.NoError(t, err)
			}
			r, err := tuning.TopStatements(ctx, conn, tuning.TopOptions{})
			require.NoError(t, err)
			probe := findGroup(r.Groups, func(g tuning.Group) bool { return strings.Contains(g.Query, "version_probe") })
			require.NotNil(t, probe, "%+v", r.Groups)
			require.EqualValues(t, 3, probe.Calls)
			require.Positive(t, probe.TotalMs)
		})
	}
}
