package pgprog_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// A caller's own config reaches pg_dump & co. as the config says now (a
// password set after parsing included), with no secret on argv.
func TestLibpqFromCallerConfig(t *testing.T) {
	cfg, err := pgx.ParseConfig("postgres://app@db.example:6543/spire?sslmode=require&pool_max_conns=4")
	require.NoError(t, err)
	cfg.Password = "from-the-vault-7fQ"
	cfg.Database = "spire2"
	lp, err := pgprog.NewLibpq(pg.Options{Config: cfg}, "spiredb-test")
	require.NoError(t, err)
	defer lp.Close()
	require.NotContains(t, lp.Conninfo, "from-the-vault")
	for _, want := range []string{"host='db.example'", "port='6543'", "user='app'", "dbname='spire2'", "sslmode='require'"} {
		require.Contains(t, lp.Conninfo, want)
	}
	require.NotContains(t, lp.Conninfo, "pool_max_conns", "pgx-only keys are not for libpq")
	require.Contains(t, lp.Env, "PGPASSWORD=from-the-vault-7fQ")
	require.True(t, strings.Contains(strings.Join(lp.Env, "\n"), "PGAPPNAME=spiredb-test"))

	// Options.Database wins over the config's
	lp2, err := pgprog.NewLibpq(pg.Options{Config: cfg, Database: "scratch"}, "spiredb-test")
	require.NoError(t, err)
	defer lp2.Close()
	require.Contains(t, lp2.Conninfo, "dbname='scratch'")
}
