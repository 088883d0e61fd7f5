package tuning_test

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/tuning"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestCheckSettingsAgainstALiveServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.NewCluster(t, pgcluster.Options{})
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	r, err := tuning.Recommend(tuning.Inputs{RAM: 16 << 30, CPUs: 4})
	require.NoError(t, err)

	diffs, err := tuning.CheckSettings(ctx, conn, r)
	require.NoError(t, err)
	names := map[string]tuning.Difference{}
	for _, d := range diffs {
		names[d.Name] = d
	}
	// the harness runs with 128MB shared_buffers and the default planner costs
	require.Contains(t, names, "shared_buffers")
	require.True(t, names["shared_buffers"].Restart)
	require.Equal(t, "128MB", names["shared_buffers"].Current)
	require.Contains(t, names, "random_page_cost")
	// and it preloads pg_stat_statements already
	require.NotContains(t, names, "shared_preload_libraries")
	// it does not archive WAL
	require.Contains(t, names, "archive_mode")
	require.Contains(t, names, "archive_command")

	// fix settings live: they no longer differ (a wrapper around wal push
	// is as good as the recommended command)
	wm, ok := r.Get("work_mem")
	require.True(t, ok)
	for _, q := range []string{"ALTER SYSTEM SET random_page_cost = 1.1", "ALTER SYSTEM SET work_mem = '" + wm.Value + "'",
		"ALTER SYSTEM SET archive_command = '/bin/true wal push %p'", "ALTER SYSTEM SET archive_mode = on"} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err)
	}
	require.NoError(t, c.Restart(ctx)) // archive_mode
	conn2, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	defer conn2.Close(ctx)
	diffs, err = tuning.CheckSettings(ctx, conn2, r)
	require.NoError(t, err)
	for _, d := range diffs {
		require.NotEqual(t, "random_page_cost", d.Name)
		require.NotEqual(t, "work_mem", d.Name)
		require.NotEqual(t, "archive_command", d.Name, "%+v", d)
		require.NotEqual(t, "archive_mode", d.Name, "%+v", d)
	}
	require.Less(t, len(diffs), len(names))
}

func TestDetect(t *testing.T) {
	t.Parallel()
	host := fstest.MapFS{"proc/meminfo": {Data: []byte("MemTotal:       24576000 kB\nMemFree: 1 kB\n")}}
	ram, cpus, src, err := tuning.Detect(host, 8)
	require.NoError(t, err)
	require.Equal(t, int64(24576000)<<10, ram)
	require.Equal(t, 8, cpus)
	require.Equal(t, "host", src)

	limited := fstest.MapFS{
		"proc/meminfo":             {Data: []byte("MemTotal:       24576000 kB\n")},
		"sys/fs/cgroup/memory.max": {Data: []byte("4294967296\n")},
		"sys/fs/cgroup/cpu.max":    {Data: []byte("150000 100000\n")},
	}
	ram, cpus, src, err = tuning.Detect(limited, 8)
	require.NoError(t, err)
	require.Equal(t, int64(4<<30), ram)
	require.Equal(t, 2, cpus, "1.5 CPUs of quota round up to 2")
	require.Equal(t, "cgroup", src)

	unlimited := fstest.MapFS{"proc/meminfo": {Data: []byte("MemTotal: 1048576 kB\n")}, "sys/fs/cgroup/memory.max": {Data: []byte("max\n")}, "sys/fs/cgroup/cpu.max": {Data: []byte("max 100000\n")}}
	ram, cpus, _, err = tuning.Detect(unlimited, 4)
	require.NoError(t, err)
	require.Equal(t, int64(1<<30), ram)
	require.Equal(t, 4, cpus)

	_, _, _, err = tuning.Detect(fstest.MapFS{}, 4)
	require.ErrorContains(t, err, "pass --ram")
}
