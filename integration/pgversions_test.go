package integration_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/integration"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/pgtest/pgcontainer"
	"github.com/spiredb/spiredb/internal/spirefixture"
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
			_, err = spirefixture.Load(ctx, conn, integration.SpireSchema, spirefixture.Spec{Entries: 1000})
			require.NoError(t, err)
			rep, err := doctor.Inspect(ctx, conn)
			require.NoError(t, err)
			major := strings.TrimPrefix(image[strings.LastIndex(image, ":")+1:], "postgres")
			require.Equal(t, major, fmt.Sprint(rep.Server.VersionNum/10000))
			require.EqualValues(t, 1000, rep.SPIRE.Entries)
			require.True(t, rep.Statements.Preloaded)
		})
	}
}
