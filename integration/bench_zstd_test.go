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

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

// BenchmarkBackupCodecs compares, interleaved in one run on a SPIRE
// fixture of SPIREDB_BENCH_ZSTD_ENTRIES (default 1500000: about 1.4 GiB,
// the database), SPIREDB_BENCH_ROUNDS (default 3) rounds:
//
//	(a) pg_dump -Fc > file                         the baseline
//	(z) spiredb backup run (zstd, the default)     to versitygw on 127.0.0.1
//	(g) spiredb backup run --compress -1           pg_dump's gzip, as before
//	(e) spiredb backup run --recipient age1…       zstd, then age encryption
//	(0) pg_dump -Fc -Z0 > /dev/null                the floor: the server's COPY
//	(p) pg_dump -Fc -Z0 | zstd -T2 -1 > file       the shell pipe, when zstd is installed
//	(f) spiredb backup run --store file://…        zstd, no S3 server on the same cores
//
// wall time, stored size and spiredb's peak RSS; then backup verify
// --level restore of the zstd backup against a bare pg_restore -j 2 of (a)'s
// file.
func BenchmarkBackupCodecs(b *testing.B) {
	n := envInts(b, "SPIREDB_BENCH_ZSTD_ENTRIES", "1500000")[0]
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "3")[0]
	ctx := context.Background()
	cluster := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"shared_buffers": "512MB"}})
	bucket := s3test.NewBucket(b)
	env, flags := s3CLI(bucket, "codecs")
	bin := spiredbCLI(b)
	pgDump := filepath.Join(cluster.BinDir, "pg_dump")
	pgRestore := filepath.Join(cluster.BinDir, "pg_restore")
	file := filepath.Join(b.TempDir(), "dump")
	id, err := age.GenerateX25519Identity()
	require.NoError(b, err)

	for range b.N {
		db := pgtest.NewDBOn(b, cluster)
		conn, err := pgx.Connect(ctx, db.DSN)
		require.NoError(b, err)
		sum, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: n})
		require.NoError(b, err)
		var dbBytes int64
		require.NoError(b, conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&dbBytes))
		_ = conn.Close(ctx)
		benchLog(b, "codecs fixture: %d entries, database %.2f GiB", sum.Entries, float64(dbBytes)/(1<<30))

		fileStore := []string{"--store", "file://" + filepath.Join(b.TempDir(), "store")}
		spiredb := func(store []string, extra ...string) (time.Duration, *backup.Manifest, int64) {
			args := append([]string{"backup", "run", "--dsn", db.DSN, "--log-level", "warn", "-o", "json"}, store...)
			cmd := exec.Command(bin, append(args, extra...)...)
			cmd.Env = append(os.Environ(), env...)
			var stdout strings.Builder
			cmd.Stdout = &stdout
			start := time.Now()
			require.NoError(b, cmd.Start())
			own, child := watchPeakRSS(cmd.Process.Pid)
			require.NoError(b, cmd.Wait())
			took := time.Since(start)
			<-child
			var m backup.Manifest
			require.NoError(b, json.Unmarshal([]byte(stdout.String()), &m))
			return took, &m, <-own
		}
		// shell references: what the server and pg_dump alone cost, and the
		// pipe an operator would write by hand
		_, zstdErr := exec.LookPath("zstd")
		shell := func(script string) time.Duration {
			start := time.Now()
			cmd := exec.Command("sh", "-c", script)
			cmd.Env = append(os.Environ(), "PGDUMP="+pgDump, "DSN="+db.DSN, "OUT="+file+".zst")
			out, err := cmd.CombinedOutput()
			require.NoError(b, err, string(out))
			return time.Since(start)
		}
		var ta, tz, tg, te, t0, tp, tf []time.Duration
		var rz, rg, re []int64
		var sizeA int64
		var mz, mg, me *backup.Manifest
		for range rounds {
			start := time.Now()
			out, err := exec.Command(pgDump, "-Fc", "-d", db.DSN, "-f", file).CombinedOutput()
			require.NoError(b, err, string(out))
			ta = append(ta, time.Since(start))
			st, err := os.Stat(file)
			require.NoError(b, err)
			sizeA = st.Size()
			t0 = append(t0, shell(`"$PGDUMP" -Fc -Z0 -d "$DSN" >/dev/null`))
			if zstdErr == nil {
				tp = append(tp, shell(`"$PGDUMP" -Fc -Z0 -d "$DSN" | zstd -q -T2 -1 >"$OUT"`))
			}

			d, m, rss := spiredb(flags)
			tz, rz, mz = append(tz, d), append(rz, rss), m
			d, _, _ = spiredb(fileStore)
			tf = append(tf, d)
			d, m, rss = spiredb(flags, "--compress", "-1")
			tg, rg, mg = append(tg, d), append(rg, rss), m
			d, m, rss = spiredb(flags, "--recipient", id.Recipient().String())
			te, re, me = append(te, d), append(re, rss), m
			require.NotNil(b, me.Encryption)
		}
		a, z, g := median(ta), median(tz), median(tg)
		benchLog(b, "backup wall: pg_dump -Fc to a file %s (%.0f MiB); spiredb zstd %s (%.0f MiB): %.2f× the wall, %.2f× the size, peak RSS %s MiB; spiredb with pg_dump's gzip %s (%.0f MiB): %.2f×, peak RSS %s MiB",
			a.Round(10*time.Millisecond), float64(sizeA)/(1<<20), z.Round(10*time.Millisecond), float64(mz.Size)/(1<<20),
			z.Seconds()/a.Seconds(), float64(mz.Size)/float64(sizeA), mib(slices.Max(rz)), g.Round(10*time.Millisecond), float64(mg.Size)/(1<<20),
			g.Seconds()/a.Seconds(), mib(slices.Max(rg)))
		f := median(t0)
		benchLog(b, "references: pg_dump -Fc -Z0 >/dev/null %s (%.2f× pg_dump -Fc), rounds %v", f.Round(10*time.Millisecond), f.Seconds()/a.Seconds(), rounded(t0))
		if len(tp) > 0 {
			p := median(tp)
			benchLog(b, "references: pg_dump -Fc -Z0 | zstd -T2 -1 %s (%.2f× pg_dump -Fc; spiredb zstd is %.2f× the pipe), rounds %v",
				p.Round(10*time.Millisecond), p.Seconds()/a.Seconds(), z.Seconds()/p.Seconds(), rounded(tp))
			b.ReportMetric(z.Seconds()/p.Seconds(), "zstd-wall/pipe")
		}
		fs := median(tf)
		benchLog(b, "references: spiredb zstd to a file store %s (%.2f× pg_dump -Fc; to versitygw on the same host %.2f× that), rounds %v",
			fs.Round(10*time.Millisecond), fs.Seconds()/a.Seconds(), z.Seconds()/fs.Seconds(), rounded(tf))
		b.ReportMetric(fs.Seconds()/a.Seconds(), "zstd-file-wall/pg_dump")
		b.ReportMetric(z.Seconds()/a.Seconds(), "zstd-wall/pg_dump")
		b.ReportMetric(float64(mz.Size)/float64(sizeA), "zstd-size/pg_dump")
		b.ReportMetric(float64(slices.Max(rz))/1024, "zstd-rssMiB")
		e := median(te)
		benchLog(b, "encryption: spiredb zstd+age %s (%.0f MiB), %.3f× spiredb zstd's wall (%.2f× pg_dump -Fc), peak RSS %s MiB; rounds zstd %v, zstd+age %v",
			e.Round(10*time.Millisecond), float64(me.Size)/(1<<20), e.Seconds()/z.Seconds(), e.Seconds()/a.Seconds(), mib(slices.Max(re)), rounded(tz), rounded(te))
		b.ReportMetric(e.Seconds()/z.Seconds(), "age-wall/zstd")

		var tv, tr []time.Duration
		for range rounds {
			target := pgtest.NewDBOn(b, cluster)
			start := time.Now()
			out, err := exec.Command(pgRestore, "-j", "2", "--no-owner", "-d", target.DSN, file).CombinedOutput()
			require.NoError(b, err, string(out))
			tr = append(tr, time.Since(start))

			cmd := exec.Command(bin, append([]string{"backup", "verify", "--dsn", db.DSN, "--id", mz.ID, "--level", "restore", "--log-level", "warn"}, flags...)...)
			cmd.Env = append(os.Environ(), env...)
			start = time.Now()
			out, err = cmd.CombinedOutput()
			require.NoError(b, err, string(out))
			tv = append(tv, time.Since(start))
		}
		v, r := median(tv), median(tr)
		benchLog(b, "verify --level restore of the zstd backup %s vs pg_restore -j 2 of pg_dump -Fc %s: %.2f×; rounds %v and %v", v.Round(10*time.Millisecond), r.Round(10*time.Millisecond), v.Seconds()/r.Seconds(),
			rounded(tv), rounded(tr))
		b.ReportMetric(v.Seconds()/r.Seconds(), "verify/pg_restore-j2")
	}
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(10 * time.Millisecond)
	}
	return out
}
