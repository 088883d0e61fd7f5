package integration_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// BenchmarkStatsTop times `stats top` on a real pg_stat_statements of 10,000
// rows (SPIREDB_BENCH_STATS_ROWS): SPIRE's catalog statements are among
// them, the rest are distinct statements on SPIRE's tables (columns × filter
// column × operator × order), so every row is a query id and a text of its own,
// each parsed — the worst case for grouping. It reports, over SPIREDB_BENCH_ROUNDS
// rounds, the median of reading the view, of grouping and labelling the
// rows (pg_query fingerprints on both cores), and of the whole.
func BenchmarkStatsTop(b *testing.B) {
	want := envInts(b, "SPIREDB_BENCH_STATS_ROWS", "10000")[0]
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "5")[0]
	ctx := context.Background()
	c := pgtest.NewCluster(b, pgcluster.Options{Settings: map[string]string{"pg_stat_statements.max": fmt.Sprint(want + 2000)}})
	dsn, err := c.CreateDatabase(ctx, "spire")
	require.NoError(b, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(b, err)
	defer conn.Close(ctx)
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 1000})
	require.NoError(b, err)
	_, err = conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements")
	require.NoError(b, err)
	require.NoError(b, tuning.Reset(ctx, conn, false))

	cols := []string{"id", "created_at", "updated_at", "entry_id", "spiffe_id", "parent_id", "ttl", "admin", "downstream", "expiry", "revision_number", "store_svid", "hint", "jwt_svid_ttl"}
	ops := []string{"=", "<>", "<", ">", "<=", ">="}
	batch := &pgx.Batch{}
	n := 0
gen:
	for _, a := range cols {
		for _, bcol := range cols {
			if a == bcol {
				continue
			}
			for _, w := range []string{"id", "ttl", "expiry", "revision_number", "jwt_svid_ttl"} {
				for _, op := range ops {
					for _, tail := range []string{"LIMIT 1", "ORDER BY id LIMIT 1"} {
						if n == want {
							break gen
						}
						batch.Queue(fmt.Sprintf("SELECT %s, %s FROM registered_entries WHERE %s %s $1 %s", a, bcol, w, op, tail), n)
						n++
					}
				}
			}
		}
	}
	require.Equal(b, want, n, "not enough distinct statements")
	require.NoError(b, conn.SendBatch(ctx, batch).Close())
	var rows int
	require.NoError(b, conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&rows))
	require.GreaterOrEqual(b, rows, want)
	benchLog(b, "stats fixture: %d pg_stat_statements rows in the database", rows)

	for range b.N {
		var read, group, total []time.Duration
		var shapes int
		for range rounds {
			t0 := time.Now()
			stmts, src, err := tuning.ReadStatements(ctx, conn)
			require.NoError(b, err)
			t1 := time.Now()
			r, err := tuning.NewReport(stmts, src, tuning.TopOptions{Limit: 20})
			require.NoError(b, err)
			t2 := time.Now()
			require.Positive(b, r.Shapes)
			shapes = r.Shapes
			read, group, total = append(read, t1.Sub(t0)), append(group, t2.Sub(t1)), append(total, t2.Sub(t0))
		}
		benchLog(b, "stats top, %d rows in %d shapes: read %s, group+label %s, total %s (medians of %d; target group+label <= 500ms)",
			rows, shapes, median(read).Round(time.Millisecond), median(group).Round(time.Millisecond), median(total).Round(time.Millisecond), rounds)
	}
}
