package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// scrape reads one metric's value from /metrics (-1 when absent).
func scrape(t *testing.T, addr, metric string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if name, value, ok := strings.Cut(line, " "); ok && name == metric {
			v, err := strconv.ParseFloat(value, 64)
			require.NoError(t, err)
			return v
		}
	}
	return -1
}

// schedule runs real jobs on a harness cluster: metrics change as jobs
// succeed and fail, an overlapping run is skipped, and SIGTERM during a
// backup ends cleanly with no broken backup listed.
func TestScheduleRunsJobsWithMetrics(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 120000})
	_, err := db.Pool.Exec(context.Background(), "CREATE EXTENSION pg_stat_statements")
	require.NoError(t, err)
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	config := filepath.Join(dir, "spiredb.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`store: file://%s
listen: %s
grace: 200ms
collect: 1s
jobs:
  - name: doctor
    command: doctor
    schedule: "@every 1s"
  - name: broken
    command: stats snapshot
    schedule: "@every 1s"
    args: ["--out", "%s/no/such/dir/snap.json"]
  - name: backup
    command: backup run
    schedule: "@every 1s"
    args: ["--compress", "0"]
`, storeDir, addr, dir)), 0o644))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, spiredbCLI(t), "schedule", "--config", config)
	cmd.Env = append(os.Environ(), "SPIREDB_DSN="+db.DSN)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()

	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && string(b) == "ok\n"
	}, 30*time.Second, 100*time.Millisecond, "healthz answers")

	require.Eventually(t, func() bool {
		return scrape(t, addr, `spiredb_job_runs_total{job="doctor"}`) >= 3 &&
			scrape(t, addr, `spiredb_job_failures_total{job="broken"}`) >= 2 &&
			scrape(t, addr, `spiredb_job_skips_total{job="backup"}`) >= 1 &&
			scrape(t, addr, `spiredb_job_runs_total{job="backup"}`) >= 1
	}, 90*time.Second, 200*time.Millisecond, "jobs run, fail and skip: %s", logs.String())
	assert.Zero(t, scrape(t, addr, `spiredb_job_failures_total{job="doctor"}`))
	assert.Positive(t, scrape(t, addr, `spiredb_job_last_success_timestamp_seconds{job="doctor"}`))
	assert.Equal(t, float64(-1), scrape(t, addr, `spiredb_job_last_success_timestamp_seconds{job="broken"}`), "never succeeded")
	assert.Equal(t, float64(1), scrape(t, addr, `spiredb_job_last_exit_code{job="broken"}`))

	// the state gauges: backups in the store, no standby, no invalid index
	require.Eventually(t, func() bool { return scrape(t, addr, "spiredb_backups") >= 1 }, 30*time.Second, 200*time.Millisecond, logs.String())
	assert.InDelta(t, float64(time.Now().Unix()), scrape(t, addr, "spiredb_backup_newest_timestamp_seconds"), 120)
	assert.Positive(t, scrape(t, addr, "spiredb_backup_newest_bytes"))
	assert.Zero(t, scrape(t, addr, "spiredb_replication_standbys"))
	assert.Zero(t, scrape(t, addr, "spiredb_replication_slots_lost"))
	assert.Zero(t, scrape(t, addr, "spiredb_archive_failing"), "the harness cluster does not archive")
	assert.Zero(t, scrape(t, addr, "spiredb_indexes_invalid"))
	assert.EqualValues(t, 120000, scrape(t, addr, `spiredb_spire_events_rows{table="registered_entries_events"}`), "the fixture's events")
	assert.Zero(t, scrape(t, addr, `spiredb_spire_events_id_gaps{table="registered_entries_events"}`))
	assert.Positive(t, scrape(t, addr, "spiredb_collect_last_success_timestamp_seconds"), logs.String())

	// the PrometheusRule and the dashboard name only metrics served here
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	served, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, f := range []string{"../deploy/kubernetes/prometheusrule.yaml", "../deploy/grafana-dashboard.json"} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		names := regexp.MustCompile(`spiredb_[a-z_]+`).FindAllString(string(b), -1)
		require.NotEmpty(t, names, f)
		for _, n := range names {
			assert.True(t, strings.Contains(string(served), "# TYPE "+n+" "), "%s names %s, which spiredb schedule does not serve", f, n)
		}
	}

	// SIGTERM while a backup runs
	require.Eventually(t, func() bool { return scrape(t, addr, `spiredb_job_running{job="backup"}`) == 1 },
		30*time.Second, 20*time.Millisecond, "a backup is running")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("schedule did not stop on SIGTERM: %s", logs.String())
	}
	assert.Contains(t, logs.String(), "stopping: no new runs")
	assert.NotContains(t, logs.String(), db.Cluster.Password)

	s, err := backup.OpenStore(ctx, "file://"+storeDir, backup.StoreOptions{})
	require.NoError(t, err)
	list, err := backup.List(ctx, s)
	require.NoError(t, err)
	require.NotEmpty(t, list)
	for _, m := range list {
		res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelChecksum})
		require.NoError(t, err)
		assert.True(t, res.OK, "listed backup %s is broken", m.ID)
	}

	// a bad file: file:line, exit 2, nothing runs
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("jobs:\n  - name: x\n    command: doctor\n    schedule: every hour\n"), 0o644))
	_, stderr, code := runCLI(t, nil, "schedule", "--config", bad)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, bad+":4: schedule")
}

// startSchedule runs spiredb schedule with env and the config lines
// (listen, collect every second and a daily doctor job are added), stopped
// when the test ends; it returns the metrics address once collection has
// succeeded.
func startSchedule(t *testing.T, env []string, config string) string {
	t.Helper()
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	file := filepath.Join(t.TempDir(), "spiredb.yaml")
	require.NoError(t, os.WriteFile(file, []byte(config+fmt.Sprintf(`listen: %s
collect: 1s
jobs:
  - name: doctor
    command: doctor
    schedule: "@every 24h"
`, addr)), 0o644))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, spiredbCLI(t), "schedule", "--config", file)
	cmd.Env = append(os.Environ(), env...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { return scrape(t, addr, "spiredb_collect_last_success_timestamp_seconds") > 0 },
		30*time.Second, 200*time.Millisecond, "%s", &logs)
	return addr
}

// TestScheduleCountsOnlyThisDatabasesBackups: in a store shared with
// another database, that database's fresh backups must not hide that
// this one has none (the PrometheusRule's stale-backup alert reads these
// gauges).
func TestScheduleCountsOnlyThisDatabasesBackups(t *testing.T) {
	t.Parallel()
	this, _, store := sharedStore(t)

	addr := startSchedule(t, []string{"SPIREDB_DSN=" + this.DSN}, "store: "+store+"\n")
	require.Zero(t, scrape(t, addr, "spiredb_backups"), "another database's backup counted as this one's")
	require.Zero(t, scrape(t, addr, "spiredb_backup_newest_timestamp_seconds"))

	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", this.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	require.Eventually(t, func() bool { return scrape(t, addr, "spiredb_backups") == 1 }, 30*time.Second, 200*time.Millisecond)
	require.InDelta(t, float64(time.Now().Unix()), scrape(t, addr, "spiredb_backup_newest_timestamp_seconds"), 120)
}
