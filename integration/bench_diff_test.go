package integration_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

// BenchmarkBackupDiff measures backup diff on SPIRE fixtures of
// SPIREDB_BENCH_DIFF_ENTRIES (default "100000,400000") entries, with an
// entry in 997 changed (up to 1,000), 1,000 created and up to 1,000 deleted
// after the backup, in
// SPIREDB_BENCH_ROUNDS (default 3) rounds each, side by side with backup
// verify --level restore of the same backup (the scratch restore both
// pay): the comparison's own time (duration_ms), the command's wall time,
// and spiredb's peak RSS, which must not grow with the entries.
func BenchmarkBackupDiff(b *testing.B) {
	sizes := envInts(b, "SPIREDB_BENCH_DIFF_ENTRIES", "100000,400000")
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "3")[0]
	ctx := context.Background()
	cluster := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"shared_buffers": "512MB"}})
	bin := spiredbCLI(b)
	for range b.N {
		for _, n := range sizes {
			db := pgtest.NewDBOn(b, cluster)
			conn, err := pgx.Connect(ctx, db.DSN)
			require.NoError(b, err)
			_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: n})
			require.NoError(b, err)
			store := "file://" + filepath.Join(b.TempDir(), "store")
			run := func(args ...string) (string, time.Duration, int64) {
				cmd := exec.Command(bin, append(args, "--dsn", db.DSN, "--store", store, "--log-level", "warn")...)
				var stdout, stderr strings.Builder
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				start := time.Now()
				require.NoError(b, cmd.Start())
				own, child := watchPeakRSS(cmd.Process.Pid)
				require.NoError(b, cmd.Wait(), stderr.String())
				took := time.Since(start)
				<-child
				return stdout.String(), took, <-own
			}
			run("backup", "run")
			// changes after the backup, as SPIRE makes them
			var changed, deleted int64
			for i, q := range []string{
				`UPDATE registered_entries SET ttl = ttl + 1, revision_number = revision_number + 1 WHERE id % 997 = 0 AND id <= 997000`,
				`INSERT INTO registered_entries (created_at, updated_at, entry_id, spiffe_id, parent_id, ttl, admin, downstream, expiry, revision_number, store_svid, hint, jwt_svid_ttl)
				 SELECT now(), now(), 'bench-' || g, 'spiffe://example.org/bench/' || g, 'spiffe://example.org/agent', 3600, false, false, 0, 0, false, '', 300 FROM generate_series(1, 1000) g`,
				`DELETE FROM registered_entries WHERE id IN (SELECT id FROM registered_entries WHERE id % 997 = 1 AND entry_id NOT LIKE 'bench-%' ORDER BY id LIMIT 1000)`,
			} {
				tag, err := conn.Exec(ctx, q)
				require.NoError(b, err)
				switch i {
				case 0:
					changed = tag.RowsAffected()
				case 2:
					deleted = tag.RowsAffected()
				}
			}
			_ = conn.Close(ctx)

			var tDiff, tCompare, tVerify []time.Duration
			var rss []int64
			var last backup.DiffResult
			for range rounds {
				out, took, peak := run("backup", "diff", "--latest", "-o", "json")
				require.NoError(b, json.Unmarshal([]byte(out), &last))
				tDiff, rss = append(tDiff, took), append(rss, peak)
				tCompare = append(tCompare, time.Duration(diffMillis(b, out))*time.Millisecond)
				_, took, _ = run("backup", "verify", "--latest", "--level", "restore")
				tVerify = append(tVerify, took)
			}
			counts := diffCounts(&last)
			require.EqualValues(b, changed, counts["registered_entries.changed"])
			require.EqualValues(b, 1000, counts["registered_entries.created"])
			require.EqualValues(b, deleted, counts["registered_entries.deleted"])
			d, c, v := median(tDiff), median(tCompare), median(tVerify)
			benchLog(b, "diff %d entries: backup diff %s (the comparison %s), verify --level restore %s: diff/verify %.2f×; spiredb peak RSS %s MiB (rounds %v / %v / %v)",
				n, d.Round(10*time.Millisecond), c.Round(10*time.Millisecond), v.Round(10*time.Millisecond), d.Seconds()/v.Seconds(),
				mib(slices.Max(rss)), rounded(tDiff), rounded(tCompare), rounded(tVerify))
			b.ReportMetric(c.Seconds(), "compare-s-"+itoa(n))
			b.ReportMetric(float64(slices.Max(rss))/1024, "rssMiB-"+itoa(n))
			_ = os.RemoveAll(strings.TrimPrefix(store, "file://"))
		}
	}
}

func diffMillis(b *testing.B, out string) int64 {
	var v struct {
		Duration int64 `json:"duration_ms"`
	}
	require.NoError(b, json.Unmarshal([]byte(out), &v))
	return v.Duration
}
