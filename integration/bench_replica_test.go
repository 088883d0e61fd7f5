package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
)

// SPIREDB_BENCH_ROUNDS defaults to 5 here: single copies of 1 GiB vary by
// seconds on this shared machine.

// BenchmarkReplica compares, interleaved on a SPIRE fixture of about 1 GiB
// (SPIREDB_BENCH_REPLICA_ENTRIES, default 850000): a bare
// `pg_basebackup -D DIR -X stream -c fast`, the same with -P (progress makes
// the server estimate the size first), and `spiredb replica bootstrap`
// (checks, slot, the copy with -R -S -P), and times the
// promotion of a caught-up standby (`spiredb replica promote`, and the
// library's own measure from the first query to the confirmed new timeline).
func BenchmarkReplica(b *testing.B) {
	n := envInts(b, "SPIREDB_BENCH_REPLICA_ENTRIES", "850000")[0]
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "5")[0]
	ctx := context.Background()
	primary := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"shared_buffers": "512MB"}})
	dsn, err := primary.CreateDatabase(ctx, "spire")
	require.NoError(b, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(b, err)
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: n})
	require.NoError(b, err)
	var clusterBytes int64
	require.NoError(b, conn.QueryRow(ctx, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database").Scan(&clusterBytes))
	_ = conn.Close(ctx)
	bin := spiredbCLI(b)
	cred, err := pgcluster.ServerCredential()
	require.NoError(b, err)
	benchLog(b, "replica fixture: %d entries, cluster %.2f GiB", n, float64(clusterBytes)/(1<<30))

	for range b.N {
		var bare, bareP, boot, promoteWall, promoteLib []time.Duration
		runBare := func(r int, progress bool) {
			dir := filepath.Join(primary.Dir, fmt.Sprintf("bare-%d", r))
			args := []string{"-D", dir, "-X", "stream", "-c", "fast", "-w", "-d", primary.KVDSN("postgres")}
			if progress {
				args = append(args, "-P") // as spiredb runs it: the server estimates the size first
			}
			cmd := exec.Command(filepath.Join(primary.BinDir, "pg_basebackup"), args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			cmd.Dir = "/"
			start := time.Now()
			out, err := cmd.CombinedOutput()
			require.NoError(b, err, string(out))
			if progress {
				bareP = append(bareP, time.Since(start))
			} else {
				bare = append(bare, time.Since(start))
			}
			require.NoError(b, os.RemoveAll(dir))
			syncDisk()
		}
		runBoot := func(r int) {
			dir := filepath.Join(primary.Dir, fmt.Sprintf("boot-%d", r))
			start := time.Now()
			out, err := exec.Command(bin, "replica", "bootstrap", "--primary-dsn", primary.DSN("postgres"), "--data-dir", dir, "--log-level", "warn").CombinedOutput()
			require.NoError(b, err, string(out))
			boot = append(boot, time.Since(start))
			require.NoError(b, replication.DropSlot(ctx, pg.Options{DSN: primary.DSN("postgres")}, fmt.Sprintf("spiredb_boot_%d", r)))
			require.NoError(b, os.RemoveAll(dir))
			syncDisk()
		}
		// alternate the order so neither method always follows the other's
		// clean-up
		for r := range rounds {
			if r%2 == 0 {
				runBare(r, false)
				runBare(r, true)
				runBoot(r)
			} else {
				runBoot(r)
				runBare(r, true)
				runBare(r, false)
			}
		}
		for r := range rounds {
			port, err := pgcluster.FreePort(0, 0)
			require.NoError(b, err)
			dir := filepath.Join(primary.Dir, fmt.Sprintf("promote-%d", r))
			_, err = replication.Bootstrap(ctx, replication.BootstrapOptions{Primary: pg.Options{DSN: primary.DSN("postgres")}, DataDir: dir, Start: true, Port: port, StandbyPassfile: dir + ".pgpass"})
			require.NoError(b, err)
			standby := *primary
			standby.Port = port
			// the primary is lost to it (promote refuses while it streams):
			// its receiver is cut off, the shared primary stays for later rounds
			sconn, err := pgx.Connect(ctx, standby.DSN("postgres"))
			require.NoError(b, err)
			_, err = sconn.Exec(ctx, "ALTER SYSTEM SET primary_conninfo = ''")
			require.NoError(b, err)
			_, err = sconn.Exec(ctx, "SELECT pg_reload_conf()")
			require.NoError(b, err)
			require.Eventually(b, func() bool {
				var streaming bool
				return sconn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')").Scan(&streaming) == nil && !streaming
			}, time.Minute, 20*time.Millisecond)
			_ = sconn.Close(ctx)
			start := time.Now()
			out, err := exec.Command(bin, "replica", "promote", "--dsn", standby.DSN("spire"), "--yes", "-o", "json", "--log-level", "warn").Output()
			require.NoError(b, err)
			promoteWall = append(promoteWall, time.Since(start))
			var res replication.PromoteResult
			require.NoError(b, json.Unmarshal(out, &res))
			promoteLib = append(promoteLib, res.Duration)
			require.NoError(b, replication.StopStandby(ctx, "", dir))
			require.NoError(b, replication.DropSlot(ctx, pg.Options{DSN: primary.DSN("postgres")}, fmt.Sprintf("spiredb_promote_%d", r)))
			require.NoError(b, os.RemoveAll(dir))
		}
		mb, mp, mo := median(bare), median(bareP), median(boot)
		benchLog(b, "bootstrap: bare pg_basebackup %s, bare pg_basebackup -P %s, spiredb replica bootstrap %s: ratio %.3f to bare, %.3f to bare -P (rounds bare %v, bare -P %v, spiredb %v)",
			mb.Round(10*time.Millisecond), mp.Round(10*time.Millisecond), mo.Round(10*time.Millisecond), mo.Seconds()/mb.Seconds(), mo.Seconds()/mp.Seconds(), bare, bareP, boot)
		b.ReportMetric(mo.Seconds()/mp.Seconds(), "bootstrap/basebackup-P")
		benchLog(b, "promotion of a caught-up standby: spiredb replica promote %s wall (process included), %s from first query to confirmed timeline (rounds %v)",
			median(promoteWall).Round(time.Millisecond), median(promoteLib).Round(time.Millisecond), promoteWall)
		b.ReportMetric(mo.Seconds()/mb.Seconds(), "bootstrap/basebackup")
		b.ReportMetric(median(promoteWall).Seconds(), "promote-s")
	}
}

// syncDisk flushes what a removed copy left in the page cache, so that the
// next run does not pay for it.
func syncDisk() { syscall.Sync() }
