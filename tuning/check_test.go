package tuning_test

import (
	"context"
	"strings"
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

// TestCheckNeverShowsACommandsCredentials: an archive_command of another
// tool often carries its store's credentials inline (env assignments,
// flags, URL userinfo). tune check names the program and shows no more.
func TestCheckNeverShowsACommandsCredentials(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, cmd := range []string{
		"AWS_ACCESS_KEY_ID=AKIAEXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG aws s3 cp %p s3://b/%f",
		"rclone copyto %p remote:wal/%f --s3-secret-access-key wJalrXUtnFEMIK7MDENG",
	} {
		c := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{"archive_mode": "on",
			"archive_command": "'" + strings.ReplaceAll(cmd, "'", "''") + "'"}})
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		require.NoError(t, err)
		r, err := tuning.Recommend(tuning.Inputs{RAM: 16 << 30, CPUs: 4})
		require.NoError(t, err)
		diffs, err := tuning.CheckSettings(ctx, conn, r)
		require.NoError(t, err)
		conn.Close(ctx)
		var found bool
		for _, d := range diffs {
			require.NotContains(t, d.Current, "wJalrXUtnFEMIK7MDENG", d.Name)
			if d.Name == "archive_command" {
				found = true
				require.Contains(t, d.Current, strings.Fields(strings.TrimPrefix(cmd, "AWS_ACCESS_KEY_ID=AKIAEXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG "))[0], "the program is named")
			}
		}
		require.True(t, found, "another tool's archive_command differs from the recommendation")
	}
}
