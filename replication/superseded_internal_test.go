package replication

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/pgtest/pgmajor"
)

// TestSupersededMarkOnEveryMajor: the switchover's mark on an old primary
// is a custom parameter in postgresql.auto.conf; ALTER SYSTEM takes it (a
// quote included), new sessions read it, and RESET removes it, on every
// PostgreSQL major spiredb supports; Timeline reads a primary's there too.
func TestSupersededMarkOnEveryMajor(t *testing.T) {
	t.Parallel()
	for _, major := range pgmajor.Majors() {
		t.Run(fmt.Sprint(major), func(t *testing.T) {
			t.Parallel()
			c := pgtest.NewCluster(t, pgcluster.Options{BinDir: pgmajor.BinDir(t, major)})
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, c.DSN("postgres"))
			require.NoError(t, err)
			defer conn.Close(ctx)
			require.NoError(t, setSuperseded(ctx, conn, "x it's"))
			other, err := pgx.Connect(ctx, c.DSN("postgres"))
			require.NoError(t, err)
			defer other.Close(ctx)
			by, err := readSuperseded(ctx, other)
			require.NoError(t, err)
			require.Equal(t, "x it's", by)
			require.NoError(t, setSuperseded(ctx, other, ""))
			third, err := pgx.Connect(ctx, c.DSN("postgres"))
			require.NoError(t, err)
			defer third.Close(ctx)
			by, err = readSuperseded(ctx, third)
			require.NoError(t, err)
			require.Equal(t, "", by)
			// the timeline promote and fence --undo compare with the
			// archive's reads on every major
			tli, err := Timeline(ctx, third)
			require.NoError(t, err)
			require.EqualValues(t, 1, tli)
		})
	}
}
