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

func TestParseVersion(t *testing.T) {
	full, major, err := pgprog.ParseVersion("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n")
	require.NoError(t, err)
	require.Equal(t, "15.18", full)
	require.Equal(t, 15, major)
	full, major, err = pgprog.ParseVersion("pg_ctl (PostgreSQL) 18devel")
	require.NoError(t, err)
	require.Equal(t, "18", full)
	require.Equal(t, 18, major)
	_, _, err = pgprog.ParseVersion("something else")
	require.Error(t, err)
}

// Output: lines to the log and the tail, progress (\r-separated, as
// pg_basebackup -P writes it) to the callback, secrets redacted.
func TestOutput(t *testing.T) {
	var got [][2]int64
	o := pgprog.NewOutput(nil, "pg_basebackup")
	o.Progress = func(d, tot int64) { got = append(got, [2]int64{d, tot}) }
	for _, chunk := range []string{"waiting for checkpoint\n", "   10/100 kB (10%), 0/1 tablespace\r", "  100/100 kB (100%), 1/1 tablespace\r\n",
		"error: connection to \"host=x password=hunter2xyz\" failed", "\n", "a", "b\n"} {
		_, err := o.Write([]byte(chunk))
		require.NoError(t, err)
	}
	require.Equal(t, [][2]int64{{10 << 10, 100 << 10}, {100 << 10, 100 << 10}}, got)
	require.Equal(t, int64(100<<10), o.Done())
	tail := o.Tail()
	require.Contains(t, tail, "waiting for checkpoint")
	require.Contains(t, tail, "; ab")
	require.NotContains(t, tail, "hunter2xyz")
}

// TestLibpqProgramsNoticeADeadServer: libpq's TCP keepalives wait for the
// OS's idle time (2 hours on Linux) before the first probe, so a pg_dump
// whose server vanished (a host lost, a partition) would hang that long. The
// programs get keepalives after 30 s idle, every 10 s, 6 probes (about
// 90 s, as spiredb's own sessions), unless the DSN sets its own.
func TestLibpqProgramsNoticeADeadServer(t *testing.T) {
	lp, err := pgprog.NewLibpq(pg.Options{DSN: "postgres://app@db.example/spire"}, "spiredb-test")
	require.NoError(t, err)
	defer lp.Close()
	for _, want := range []string{"keepalives='1'", "keepalives_idle='30'", "keepalives_interval='10'", "keepalives_count='6'"} {
		require.Contains(t, lp.Conninfo, want)
	}
	own, err := pgprog.NewLibpq(pg.Options{DSN: "host=db.example dbname=spire keepalives_idle=120"}, "spiredb-test")
	require.NoError(t, err)
	defer own.Close()
	require.Contains(t, own.Conninfo, "keepalives_idle='120'")
	require.NotContains(t, own.Conninfo, "keepalives_idle='30'")
}
