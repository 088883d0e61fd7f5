package pgmajor_test

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

func TestMain(m *testing.M) { pgtest.Main(m) }

// Every package setup fetched unpacks and starts a server of its major
// with the harness's settings (pg_stat_statements preloaded).
func TestEveryMajorStarts(t *testing.T) {
	majors := pgmajor.Majors()
	require.Subset(t, majors, []int{13, 14, 16, 17, 18}, "scripts/setup.sh pgmajors fetches these")
	for _, major := range majors {
		t.Run(fmt.Sprint(major), func(t *testing.T) {
			t.Parallel()
			c := pgtest.NewCluster(t, pgcluster.Options{BinDir: pgmajor.BinDir(t, major)})
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, c.DSN("postgres"))
			require.NoError(t, err)
			defer conn.Close(ctx)
			var num int
			require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num))
			require.Equal(t, major, num/10000)
			_, err = conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements; CREATE EXTENSION amcheck")
			require.NoError(t, err)
		})
	}
}
