package pg_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgbouncertest"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

// Through a real PgBouncer (Debian's 1.18, which refuses unknown startup
// parameters), spiredb connects with its session settings, sees the
// pooler, and tells transaction pooling from session pooling.
func TestThroughPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)

	direct, err := pg.Connect(ctx, pg.Options{DSN: db.DSN})
	require.NoError(t, err)
	defer direct.Close(ctx)
	p, err := pg.DetectPooling(ctx, direct, pg.Options{DSN: db.DSN})
	require.NoError(t, err)
	require.False(t, p.Behind, "direct: %+v", p)
	require.NoError(t, pg.RequireSession(ctx, direct, pg.Options{DSN: db.DSN}))

	for _, mode := range []string{"session", "transaction"} {
		b := pgbouncertest.Start(t, db.Cluster, mode)
		opts := pg.Options{DSN: b.DSN(db.Name)}
		conn, err := pg.Connect(ctx, opts)
		require.NoError(t, err, mode)
		var lock string
		require.NoError(t, conn.QueryRow(ctx, "SHOW lock_timeout").Scan(&lock))
		require.Equal(t, "2s", lock, "%s: spiredb's settings reach the server", mode)
		p, err := pg.DetectPooling(ctx, conn, opts)
		require.NoError(t, err, mode)
		require.True(t, p.Behind, "%s: %+v", mode, p)
		require.Equal(t, mode == "transaction", p.Transaction, "%s: %+v", mode, p)
		err = pg.RequireSession(ctx, conn, opts)
		if mode == "transaction" {
			require.ErrorIs(t, err, pg.ErrTransactionPooler)
		} else {
			require.NoError(t, err)
		}
		require.NoError(t, conn.Close(ctx))

		pool, err := pg.NewPool(ctx, opts)
		require.NoError(t, err, "%s: a pool through the pooler", mode)
		pool.Close()
	}
}
