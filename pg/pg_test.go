package pg_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestSessionSettings(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pg.Connect(ctx, pg.Options{DSN: db.DSN, StatementTimeout: 30 * time.Second})
	require.NoError(t, err)
	defer conn.Close(ctx)
	var app, lock, stmt, idle string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('lock_timeout'),
		current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')`).Scan(&app, &lock, &stmt, &idle))
	require.Equal(t, "spiredb", app)
	require.Equal(t, "2s", lock)
	require.Equal(t, "30s", stmt)
	require.Equal(t, "5min", idle)
}

func TestUserSettingsWin(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pg.Connect(ctx, pg.Options{DSN: db.DSN + "&lock_timeout=7s&application_name=ops"})
	require.NoError(t, err)
	defer conn.Close(ctx)
	var app, lock string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('lock_timeout')`).Scan(&app, &lock))
	require.Equal(t, "ops", app)
	require.Equal(t, "7s", lock)

	conn2, err := pg.Connect(ctx, pg.Options{DSN: db.DSN + "&options=-c%20lock_timeout%3D9s"})
	require.NoError(t, err)
	defer conn2.Close(ctx)
	require.NoError(t, conn2.QueryRow(ctx, `SELECT current_setting('lock_timeout')`).Scan(&lock))
	require.Equal(t, "9s", lock)
}

func TestConnectErrorHidesPassword(t *testing.T) {
	t.Parallel()
	c := pgtest.Cluster(t)
	bad := *c
	bad.Password = "wrong-pass-123456"
	_, err := pg.Connect(context.Background(), pg.Options{DSN: bad.DSN("postgres")})
	var ce *pg.ConnectError
	require.ErrorAs(t, err, &ce)
	require.NotContains(t, err.Error(), "wrong-pass-123456")
	require.Contains(t, err.Error(), "password authentication failed")

	_, err = pg.Connect(context.Background(), pg.Options{DSN: "postgres://u:pw-in-bad-dsn@h:notaport/db"})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "pw-in-bad-dsn")
}

// Retry really retries a lock timeout: another session holds an
// ACCESS EXCLUSIVE lock; the DDL times out (55P03), and succeeds once the
// holder lets go.
func TestRetryOnLockTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, "CREATE TABLE t (id int)")
	require.NoError(t, err)

	holder, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = holder.Exec(ctx, "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)

	conn, err := pg.Connect(ctx, pg.Options{DSN: db.DSN, LockTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	defer conn.Close(ctx)

	var attempts atomic.Int32
	err = pg.Retry(ctx, pg.RetryPolicy{Attempts: 20, Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond,
		OnRetry: func(attempt int, _ time.Duration, err error) {
			require.Equal(t, pg.LockNotAvailable, pg.SQLState(err))
			if attempt == 2 {
				require.NoError(t, holder.Rollback(ctx))
			}
		}},
		func(ctx context.Context) error {
			attempts.Add(1)
			_, err := conn.Exec(ctx, "ALTER TABLE t ADD COLUMN c int")
			return err
		})
	require.NoError(t, err)
	require.GreaterOrEqual(t, attempts.Load(), int32(3))
}

func TestRetryGivesUpAndHonoursContext(t *testing.T) {
	t.Parallel()
	lockErr := func(context.Context) error { return &pgError55P03 }
	err := pg.Retry(context.Background(), pg.RetryPolicy{Attempts: 3, Initial: time.Millisecond}, lockErr)
	require.Equal(t, pg.LockNotAvailable, pg.SQLState(err))

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = pg.Retry(ctx, pg.RetryPolicy{Attempts: 1000, Initial: time.Second}, lockErr)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	calls := 0
	other := errors.New("syntax error")
	err = pg.Retry(context.Background(), pg.RetryPolicy{}, func(context.Context) error { calls++; return other })
	require.ErrorIs(t, err, other)
	require.Equal(t, 1, calls, "non-retryable errors are not retried")
}
