package tuning_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/tuning"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	good := map[string]int64{"1024": 1024, "512MB": 512 << 20, "16GB": 16 << 30, "16GiB": 16 << 30, "16G": 16 << 30,
		"1.5G": 3 << 29, "64kB": 64 << 10, "2T": 2 << 40, " 8 GB ": 8 << 30}
	for in, want := range good {
		got, err := tuning.ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "GB", "-1GB", "16 gigs", "1e9", "16PB", "99999999999T"} {
		_, err := tuning.ParseSize(in)
		require.Error(t, err, in)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"16GB", "1.5G", "512", "64kB", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := tuning.ParseSize(s)
		if err == nil {
			require.GreaterOrEqual(t, n, int64(0))
		}
	})
}

// size parses a postgresql.conf size back to bytes.
func size(t *testing.T, v string) int64 {
	t.Helper()
	n, err := tuning.ParseSize(strings.Trim(v, "'"))
	require.NoError(t, err, v)
	return n
}

func TestRecommendTable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in                              tuning.Inputs
		maxConn, sharedBuffers, workMem string
		randomPageCost                  string
	}{
		{tuning.Inputs{RAM: 16 << 30, CPUs: 4, Storage: "ssd", SpireServers: 3}, "320", "4GB", "11MB", "1.1"},
		{tuning.Inputs{RAM: 64 << 30, CPUs: 16, Storage: "network", SpireServers: 3}, "320", "16GB", "59MB", "1.5"},
		{tuning.Inputs{RAM: 4 << 30, CPUs: 2, Storage: "hdd", SpireServers: 2, MaxOpenConns: 50}, "120", "1GB", "7MB", "4"},
		{tuning.Inputs{RAM: 8 << 30, CPUs: 8, SpireServers: 10, Pooler: "pgbouncer"}, "52", "2GB", "34MB", "1.1"},
	}
	for _, c := range cases {
		r, err := tuning.Recommend(c.in)
		require.NoError(t, err, "%+v", c.in)
		get := func(name string) string {
			s, ok := r.Get(name)
			require.True(t, ok, name)
			return s.Value
		}
		require.Equal(t, c.maxConn, get("max_connections"), "%+v", c.in)
		require.Equal(t, c.sharedBuffers, get("shared_buffers"), "%+v", c.in)
		require.Equal(t, c.workMem, get("work_mem"), "%+v", c.in)
		require.Equal(t, c.randomPageCost, get("random_page_cost"), "%+v", c.in)
		require.Equal(t, "'pg_stat_statements'", get("shared_preload_libraries"))
		// switchover, rejoin and slots
		require.Equal(t, "on", get("wal_log_hints"))
		require.Equal(t, "on", get("hot_standby_feedback"))
		require.NotEqual(t, "-1", get("max_slot_wal_keep_size"))
		ws, _ := r.Get("wal_log_hints")
		require.True(t, ws.Restart)
		require.Contains(t, ws.Reason, "pg_rewind")
	}
}

// Whatever the inputs, the worst case fits in RAM and nothing goes below
// PostgreSQL's minimums; or the answer is a clear refusal.
func TestRecommendInvariants(t *testing.T) {
	t.Parallel()
	for _, ram := range []int64{256 << 20, 512 << 20, 1 << 30, 2 << 30, 8 << 30, 32 << 30, 256 << 30, 2 << 40} {
		for _, cpus := range []int{1, 2, 4, 16, 96} {
			for _, servers := range []int{1, 3, 10, 50} {
				for _, conns := range []int{10, 100, 500} {
					for _, pooler := range []string{"none", "pgbouncer"} {
						in := tuning.Inputs{RAM: ram, CPUs: cpus, SpireServers: servers, MaxOpenConns: conns, Pooler: pooler}
						name := fmt.Sprintf("%+v", in)
						r, err := tuning.Recommend(in)
						if err != nil {
							require.Contains(t, err.Error(), "pgbouncer", name)
							require.Equal(t, "none", pooler, "with a pooler everything must fit: %s", name)
							continue
						}
						require.LessOrEqual(t, r.WorstCaseMemory, ram, name)
						get := func(n string) string { s, _ := r.Get(n); return s.Value }
						sb, wm, mw := size(t, get("shared_buffers")), size(t, get("work_mem")), size(t, get("maintenance_work_mem"))
						require.GreaterOrEqual(t, sb, int64(128<<10), name)
						require.GreaterOrEqual(t, wm, int64(64<<10), name)
						require.GreaterOrEqual(t, mw, int64(1<<20), name)
						require.LessOrEqual(t, sb, ram/4+(1<<20), name)
						require.LessOrEqual(t, size(t, get("effective_cache_size")), ram, name)
						var maxConn int
						_, _ = fmt.Sscan(get("max_connections"), &maxConn)
						require.GreaterOrEqual(t, maxConn, 1, name)
						require.LessOrEqual(t, maxConn, 262143, name)
						if pooler == "none" {
							require.GreaterOrEqual(t, maxConn, servers*conns, "SPIRE's connections must fit: %s", name)
						}
						for _, s := range r.Settings {
							require.NotEmpty(t, s.Reason, s.Name)
						}
					}
				}
			}
		}
	}
}

func TestRecommendRefusesBadInputs(t *testing.T) {
	t.Parallel()
	for _, in := range []tuning.Inputs{
		{RAM: 100 << 20, CPUs: 2},
		{RAM: 8 << 30, CPUs: 0},
		{RAM: 8 << 30, CPUs: 2, Storage: "tape"},
		{RAM: 8 << 30, CPUs: 2, Pooler: "pgpool"},
		{RAM: 8 << 30, CPUs: 2, SpireServers: 100, MaxOpenConns: 100}, // 10,020 connections
	} {
		_, err := tuning.Recommend(in)
		require.Error(t, err, "%+v", in)
	}
}

func TestRecommendRenderings(t *testing.T) {
	t.Parallel()
	r, err := tuning.Recommend(tuning.Inputs{RAM: 16 << 30, CPUs: 4})
	require.NoError(t, err)
	conf := r.Conf()
	require.Contains(t, conf, "shared_buffers = '4GB'")
	require.Contains(t, conf, "random_page_cost = 1.1")
	require.Contains(t, conf, "shared_preload_libraries = 'pg_stat_statements'")
	sql := r.SQL()
	require.Contains(t, sql, "ALTER SYSTEM SET shared_buffers = '4GB'; -- needs a restart")
	require.Contains(t, sql, "ALTER SYSTEM SET work_mem = ")
	require.Contains(t, sql, "ALTER TABLE registered_entries_events SET (autovacuum_vacuum_scale_factor = 0.02")
	require.Contains(t, sql, "SELECT pg_reload_conf();")
}

// The pgbouncer.ini fits the servers it fronts: every spire-server's
// max_open_conns as clients, about 4 server connections per core, and
// PostgreSQL's max_connections above the pool.
func TestPgBouncerINI(t *testing.T) {
	t.Parallel()
	r, err := tuning.Recommend(tuning.Inputs{RAM: 16 << 30, CPUs: 8, SpireServers: 6, MaxOpenConns: 100, Pooler: "pgbouncer"})
	require.NoError(t, err)
	ini := r.PgBouncerINI()
	for _, want := range []string{"pool_mode = transaction", "max_client_conn = 650", "default_pool_size = 32", "max_prepared_statements = 200", "1.21"} {
		require.Contains(t, ini, want)
	}
	mc, ok := r.Get("max_connections")
	require.True(t, ok)
	var n int
	_, err = fmt.Sscan(mc.Value, &n)
	require.NoError(t, err)
	require.Greater(t, n, 32+8, "max_connections leaves room above the pool and its reserve")
}

// TestRecommendArchiving: archiving for point-in-time recovery is part of
// every recommendation, pointed at the store when one is given.
func TestRecommendArchiving(t *testing.T) {
	t.Parallel()
	r, err := tuning.Recommend(tuning.Inputs{RAM: 8 << 30, CPUs: 4})
	require.NoError(t, err)
	mode, ok := r.Get("archive_mode")
	require.True(t, ok)
	require.Equal(t, "on", mode.Value)
	require.True(t, mode.Restart)
	cmd, _ := r.Get("archive_command")
	require.Equal(t, "'spiredb wal push %p'", cmd.Value)
	require.Contains(t, cmd.Reason, "SPIREDB_STORE")
	timeout, _ := r.Get("archive_timeout")
	require.Equal(t, "60s", timeout.Value)

	r, err = tuning.Recommend(tuning.Inputs{RAM: 8 << 30, CPUs: 4, ArchiveStore: "s3://b/it's"})
	require.NoError(t, err)
	cmd, _ = r.Get("archive_command")
	require.Equal(t, "'spiredb wal push %p --store s3://b/it''s'", cmd.Value)
	require.Contains(t, r.Conf(), "archive_command = 'spiredb wal push %p --store s3://b/it''s'")
}
