package pg_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

// A caller brings its own pgx config: spiredb copies it (never changes
// it), and a password set after parsing is used.
func TestCallerConfig(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(db.DSN)
	require.NoError(t, err)
	pw := cfg.Password
	cfg.Password = "" // as if it came from a secret manager later
	cfg.Password = pw
	cfg.RuntimeParams["application_name"] = "caller"
	before := len(cfg.RuntimeParams)
	conn, err := pg.Connect(ctx, pg.Options{Config: cfg})
	require.NoError(t, err)
	defer conn.Close(ctx)
	var app, lock string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('lock_timeout')`).Scan(&app, &lock))
	require.Equal(t, "caller", app, "the caller's settings win")
	require.Equal(t, "2s", lock, "spiredb's defaults fill the rest")
	require.Len(t, cfg.RuntimeParams, before, "the caller's config is not changed")
}

// A caller brings its own pool: spiredb's session is taken out of it, so
// whatever spiredb sets never returns to the pool's other users.
func TestCallerPool(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(db.DSN + "&application_name=caller")
	require.NoError(t, err)
	pcfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(t, err)
	defer pool.Close()

	err = pg.WithConn(ctx, pg.Options{Pool: pool}, func(conn *pgx.Conn) error {
		var app, lock string
		if err := conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('lock_timeout')`).Scan(&app, &lock); err != nil {
			return err
		}
		require.Equal(t, "caller", app)
		require.Equal(t, "2s", lock, "spiredb's lock_timeout on its session")
		_, err := conn.Exec(ctx, "SET default_transaction_read_only = on")
		return err
	})
	require.NoError(t, err)
	// the pool (MaxConns 1) still serves, with none of spiredb's settings
	var ro, lock string
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('default_transaction_read_only'), current_setting('lock_timeout')`).Scan(&ro, &lock))
	require.Equal(t, "off", ro)
	require.Equal(t, "0", lock)

	// a session on another database of the pool's server is a new one
	err = pg.WithConn(ctx, pg.Options{Pool: pool, Database: "postgres"}, func(conn *pgx.Conn) error {
		var d string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&d); err != nil {
			return err
		}
		require.Equal(t, "postgres", d)
		return nil
	})
	require.NoError(t, err)
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	cfg, err := pgx.ParseConfig("host=localhost")
	require.NoError(t, err)
	require.NoError(t, pg.Options{}.Validate())
	require.NoError(t, pg.Options{Config: cfg}.Validate())
	require.ErrorContains(t, pg.Options{DSN: "host=x", Config: cfg}.Validate(), "one of DSN, Config and Pool")
	require.Error(t, pg.Options{MaxConns: -1}.Validate())
	_, err = pg.Connect(context.Background(), pg.Options{DSN: "host=x", Config: cfg})
	require.ErrorContains(t, err, "one of DSN, Config and Pool")
}

// One advisory lock helper: a second session cannot take a held lock and
// learns who holds it; Unlock frees it.
func TestAdvisoryLock(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	a, err := pg.Connect(ctx, pg.Options{DSN: db.DSN, ApplicationName: "holder"})
	require.NoError(t, err)
	defer a.Close(ctx)
	b, err := pg.Connect(ctx, pg.Options{DSN: db.DSN})
	require.NoError(t, err)
	defer b.Close(ctx)

	lock, ok, err := pg.TryAdvisoryLock(ctx, a, "test.resource")
	require.NoError(t, err)
	require.True(t, ok)
	_, ok, err = pg.TryAdvisoryLock(ctx, b, "test.resource")
	require.NoError(t, err)
	require.False(t, ok)
	h, err := pg.AdvisoryLockHolder(ctx, b, "test.resource")
	require.NoError(t, err)
	require.Equal(t, "holder", h.ApplicationName)
	require.Equal(t, a.PgConn().PID(), uint32(h.PID))
	_, ok, err = pg.TryAdvisoryLock(ctx, b, "test.other")
	require.NoError(t, err)
	require.True(t, ok, "another name is another lock")
	lock.Unlock(ctx)
	_, ok, err = pg.TryAdvisoryLock(ctx, b, "test.resource")
	require.NoError(t, err)
	require.True(t, ok)
}

// TestShadowingRefused: a role's public.count(text) would win over
// pg_catalog's count("any") in an unqualified call. A session of a more
// privileged role is refused, naming it (from a DSN and from a caller's
// pool); the owner's own session is not (its own code borrows nothing);
// TrustSearchPath skips the check.
func TestShadowingRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	role := "sh_" + strings.TrimPrefix(db.Name, "t_")[:8]
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN PASSWORD 'Sh-pw-1'",
		"GRANT CREATE ON SCHEMA public TO " + role,
	} {
		_, err := db.Pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			_, _ = db.Pool.Exec(context.Background(), q)
		}
	})
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.UserPassword(role, "Sh-pw-1")
	mine, err := pg.Connect(ctx, pg.Options{DSN: u.String()})
	require.NoError(t, err)
	_, err = mine.Exec(ctx, `CREATE FUNCTION public.cnt(s int8, v text) RETURNS int8 LANGUAGE sql AS 'SELECT s + 1';
		CREATE AGGREGATE public.count(text) (SFUNC = public.cnt, STYPE = int8, INITCOND = '0')`)
	require.NoError(t, err)
	mine.Close(ctx)

	_, err = pg.Connect(ctx, pg.Options{DSN: db.DSN})
	var se *pg.ShadowError
	require.ErrorAs(t, err, &se)
	require.Contains(t, err.Error(), "public.count(text) (owner "+role+")")
	_, err = pg.Connect(ctx, pg.Options{Pool: db.Pool})
	require.ErrorAs(t, err, &se, "a session taken from the caller's pool too")

	conn, err := pg.Connect(ctx, pg.Options{DSN: db.DSN, TrustSearchPath: true})
	require.NoError(t, err)
	conn.Close(ctx)
	conn, err = pg.Connect(ctx, pg.Options{DSN: u.String()})
	require.NoError(t, err, "the owner's own session")
	conn.Close(ctx)
}
