package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

// BenchmarkBackup compares, in one run and interleaved, on SPIRE fixtures:
//
//	(a) pg_dump -Fc > /dev/null               the floor
//	(b) pg_dump -Fc to a file, then upload it  what operators do today
//	(c) spiredb backup run to versitygw        streaming
//
// and reports medians, the ratios (c)/(a) and (c)/(b), spiredb's peak RSS at
// each size, and `backup verify --level restore` against a bare
// `pg_restore -j 2` of the same dump.
//
// SPIREDB_BENCH_ENTRIES (default "425000,850000": about 0.5 and 1 GiB) sets the fixture sizes,
// SPIREDB_BENCH_ROUNDS (default 3) the rounds, SPIREDB_BENCH_COMPRESS
// (default "-1,0": pg_dump's default, and none) the compression levels, and
// SPIREDB_BENCH_LINK_MBIT (default "0,1000") the links to S3 that (b) and
// (c) upload over: 0 is versitygw on 127.0.0.1, N a versitygw in a network
// namespace behind a veth pair shaped to N Mbit/s with tc (root), since
// streaming pays off when the upload costs time, as across a real network.
func BenchmarkBackup(b *testing.B) {
	sizes := envInts(b, "SPIREDB_BENCH_ENTRIES", "425000,850000")
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "3")[0]
	levels := envInts(b, "SPIREDB_BENCH_COMPRESS", "-1,0")
	links := envInts(b, "SPIREDB_BENCH_LINK_MBIT", "0,1000")
	ctx := context.Background()
	cluster := pgtest.NewCluster(b, pgcluster.Options{Durable: true, Settings: map[string]string{"shared_buffers": "512MB"}})
	bucket := s3test.NewBucket(b)
	env, _ := s3CLI(bucket, "")
	bin := spiredbCLI(b)
	pgDump := filepath.Join(cluster.BinDir, "pg_dump")
	pgRestore := filepath.Join(cluster.BinDir, "pg_restore")
	tmp := b.TempDir()
	shaped := map[int]*s3test.Bucket{}
	for _, l := range links {
		if l > 0 {
			shaped[l] = shapedS3(b, l)
		}
	}

	for range b.N {
		for _, n := range sizes {
			db := pgtest.NewDBOn(b, cluster)
			conn, err := pgx.Connect(ctx, db.DSN)
			require.NoError(b, err)
			sum, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: n})
			require.NoError(b, err)
			var dbBytes int64
			require.NoError(b, conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&dbBytes))
			_ = conn.Close(ctx)
			benchLog(b, "fixture: %d entries, database %.2f GiB, loaded in %s", sum.Entries, float64(dbBytes)/(1<<30), sum.Duration.Round(time.Second))

			var lastID string
			for _, z := range levels {
				for _, link := range links {
					lb, linkName := bucket, "direct"
					if link > 0 {
						lb, linkName = shaped[link], fmt.Sprintf("%dMbit", link)
					}
					endpoint, linkStore := lb.Endpoint, s3StoreOf(b, lb, "baseline")
					lenv, _ := s3CLI(lb, "")
					zflag := []string{}
					zname := "default"
					if z >= 0 {
						zflag = []string{"--compress=" + strconv.Itoa(z)}
						zname = strconv.Itoa(z)
					}
					var ta, tb, tc []time.Duration
					var rss []int64
					var dumpRSS int64
					var dumpSize int64
					for r := range rounds {
						// (a)
						start := time.Now()
						cmd := exec.Command(pgDump, append([]string{"-Fc", "-d", db.DSN}, zflag...)...)
						devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
						cmd.Stdout = devnull
						require.NoError(b, cmd.Run())
						_ = devnull.Close()
						ta = append(ta, time.Since(start))

						// (b)
						file := filepath.Join(tmp, "dump")
						start = time.Now()
						out, err := exec.Command(pgDump, append([]string{"-Fc", "-d", db.DSN, "-f", file}, zflag...)...).CombinedOutput()
						require.NoError(b, err, string(out))
						f, err := os.Open(file)
						require.NoError(b, err)
						_, err = linkStore.Put(ctx, fmt.Sprintf("file-%d-%d", n, r), f)
						require.NoError(b, err)
						_ = f.Close()
						tb = append(tb, time.Since(start))
						st, _ := os.Stat(file)
						dumpSize = st.Size()

						// (c)
						args := []string{"backup", "run", "--dsn", db.DSN, "--store", "s3://" + lb.Name + "/spiredb",
							"--s3-endpoint", endpoint, "--s3-path-style", "--log-level", "warn", "-o", "json"}
						if z >= 0 {
							args = append(args, "--compress", strconv.Itoa(z))
						}
						cmd = exec.Command(bin, args...)
						cmd.Env = append(os.Environ(), lenv...)
						var stdout strings.Builder
						cmd.Stdout = &stdout
						start = time.Now()
						require.NoError(b, cmd.Start())
						own, child := watchPeakRSS(cmd.Process.Pid)
						require.NoError(b, cmd.Wait())
						tc = append(tc, time.Since(start))
						out = []byte(stdout.String())
						rss = append(rss, <-own)
						dumpRSS = max(dumpRSS, <-child)
						var m backup.Manifest
						require.NoError(b, json.Unmarshal(out, &m))
						if link == 0 {
							lastID = m.ID
						}
					}
					ma, mb, mc := median(ta), median(tb), median(tc)
					benchLog(b, "entries=%d compress=%s link=%s dump=%.0f MiB  (a) pg_dump>/dev/null %s  (b) file+upload %s  (c) spiredb %s  (c)/(a)=%.2f  (c)/(b)=%.2f  spiredb peak RSS %s MiB (rounds, KiB: %v; its pg_dump child: %s MiB)",
						n, zname, linkName, float64(dumpSize)/(1<<20), ma.Round(10*time.Millisecond), mb.Round(10*time.Millisecond), mc.Round(10*time.Millisecond),
						mc.Seconds()/ma.Seconds(), mc.Seconds()/mb.Seconds(), mib(slices.Max(rss)), rss, mib(dumpRSS))
					b.ReportMetric(mc.Seconds()/ma.Seconds(), fmt.Sprintf("c/a-%dk-z%s-%s", n/1000, zname, linkName))
					b.ReportMetric(mc.Seconds()/mb.Seconds(), fmt.Sprintf("c/b-%dk-z%s-%s", n/1000, zname, linkName))
					b.ReportMetric(float64(slices.Max(rss))/1024, fmt.Sprintf("rssMiB-%dk-z%s-%s", n/1000, zname, linkName))
				}

				// verify --level restore vs a bare pg_restore -j 2 of the same dump
				// (the dump file of the last round: same compression)
				if z != levels[0] {
					continue
				}
				var tv, tr []time.Duration
				file := filepath.Join(tmp, "dump")
				for range rounds {
					target := pgtest.NewDBOn(b, cluster)
					start := time.Now()
					out, err := exec.Command(pgRestore, "-j", "2", "--no-owner", "-d", target.DSN, file).CombinedOutput()
					require.NoError(b, err, string(out))
					tr = append(tr, time.Since(start))

					cmd := exec.Command(bin, "backup", "verify", "--dsn", db.DSN, "--store", "s3://"+bucket.Name+"/spiredb",
						"--s3-endpoint", bucket.Endpoint, "--s3-path-style", "--id", lastID, "--log-level", "warn")
					cmd.Env = append(os.Environ(), env...)
					start = time.Now()
					out, err = cmd.CombinedOutput()
					require.NoError(b, err, string(out))
					tv = append(tv, time.Since(start))
				}
				mv, mr := median(tv), median(tr)
				benchLog(b, "entries=%d verify --level restore %s  vs  pg_restore -j 2 %s: ratio %.2f", n, mv.Round(10*time.Millisecond), mr.Round(10*time.Millisecond), mv.Seconds()/mr.Seconds())
				b.ReportMetric(mv.Seconds()/mr.Seconds(), fmt.Sprintf("verify/restore-j2-%dk", n/1000))
			}
		}
	}
}

// watchPeakRSS polls the peak resident set (VmHWM) of pid and of its
// children until pid exits, and sends each, in KiB. wait4's ru_maxrss would
// fold the pg_dump child into spiredb's figure.
func watchPeakRSS(pid int) (own, children <-chan int64) {
	o, c := make(chan int64, 1), make(chan int64, 1)
	go func() {
		var peak, childPeak int64
		for {
			v, ok := vmHWM(pid)
			if !ok {
				break
			}
			peak = max(peak, v)
			for _, cp := range childPIDs(pid) {
				if cv, ok := vmHWM(cp); ok {
					childPeak = max(childPeak, cv)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		o <- peak
		c <- childPeak
	}()
	return o, c
}

func vmHWM(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	if strings.Contains(string(b), "State:\tZ") {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n, true
		}
	}
	return 0, false
}

func childPIDs(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// shapedS3 runs a versitygw of its own in a network namespace made for the
// benchmark, behind a veth pair whose both directions are shaped by a tbf
// qdisc to mbit Mbit/s: a real (kernel) network link to S3. It needs root
// and iproute2.
func shapedS3(tb testing.TB, mbit int) *s3test.Bucket {
	tb.Helper()
	tag := fmt.Sprintf("%04x", time.Now().UnixNano()&0xffff)
	ns, hostIf, nsIf := "spiredb-bench-"+tag, "sdbh"+tag, "sdbn"+tag
	subnet := 16 + int(time.Now().UnixNano()%200)
	hostIP, nsIP := fmt.Sprintf("10.213.%d.1", subnet), fmt.Sprintf("10.213.%d.2", subnet)
	run := func(args ...string) {
		out, err := exec.Command("ip", args...).CombinedOutput()
		require.NoError(tb, err, "ip %s: %s", strings.Join(args, " "), out)
	}
	tc := func(args ...string) {
		out, err := exec.Command("tc", args...).CombinedOutput()
		require.NoError(tb, err, "tc %s: %s", strings.Join(args, " "), out)
	}
	run("netns", "add", ns)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	tb.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	run("link", "set", nsIf, "netns", ns)
	run("addr", "add", hostIP+"/30", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", ns, "addr", "add", nsIP+"/30", "dev", nsIf)
	run("-n", ns, "link", "set", nsIf, "up")
	run("-n", ns, "link", "set", "lo", "up")
	rate := fmt.Sprintf("%dmbit", mbit)
	tc("qdisc", "add", "dev", hostIf, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "20ms")
	tc("-n", ns, "qdisc", "add", "dev", nsIf, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "20ms")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := s3test.StartWith(ctx, s3test.Options{Netns: ns, Host: nsIP})
	require.NoError(tb, err)
	tb.Cleanup(srv.Stop)
	name := "bench-" + tag
	_, err = srv.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	require.NoError(tb, err)
	return &s3test.Bucket{Server: srv, Name: name}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func mib(kb int64) string { return fmt.Sprintf("%.1f", float64(kb)/1024) }

func envInts(tb testing.TB, name, def string) []int {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		require.NoError(tb, err, "%s=%q", name, v)
		out = append(out, n)
	}
	return out
}

// benchLog prints a result line to stdout as well as to the benchmark log,
// which the testing package may cut short.
func benchLog(b *testing.B, format string, args ...any) {
	b.Helper()
	fmt.Printf("RESULT: "+format+"\n", args...)
	b.Logf(format, args...)
}
