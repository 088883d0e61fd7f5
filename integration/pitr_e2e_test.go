package integration_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// archivingCluster is a cluster of the test's own whose archive_command is
// `spiredb wal push` into the bucket's prefix, through a script (owned by
// the server's user) that carries the S3 credentials, as an operator's
// environment would: they are not in the server's configuration or log.
func archivingCluster(t testing.TB, b *s3test.Bucket, prefix string, opts ...pgcluster.Options) *pgcluster.Cluster {
	t.Helper()
	return archivingClusterPushing(t, b, prefix, nil, opts...)
}

// archivingClusterPushing is archivingCluster with more wal push arguments.
func archivingClusterPushing(t testing.TB, b *s3test.Bucket, prefix string, pushArgs []string, opts ...pgcluster.Options) *pgcluster.Cluster {
	t.Helper()
	env, flags := s3CLI(b, prefix)
	dir := sharedDir(t)
	cli := filepath.Join(dir, "spiredb")
	copyFile(t, spiredbCLI(t), cli, 0o755)
	var script strings.Builder
	script.WriteString("#!/bin/sh\n")
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&script, "export %s='%s'\n", k, v)
	}
	fmt.Fprintf(&script, "exec %s wal push \"$1\" %s --log-level warn\n", cli, strings.Join(append(flags, pushArgs...), " "))
	push := filepath.Join(dir, "wal-push.sh")
	require.NoError(t, os.WriteFile(push, []byte(script.String()), 0o700))
	cred, err := pgcluster.ServerCredential()
	require.NoError(t, err)
	if cred != nil {
		require.NoError(t, os.Chown(push, int(cred.Uid), int(cred.Gid)))
	}
	o := pgcluster.Options{Settings: map[string]string{}}
	if len(opts) > 0 {
		o = opts[0]
		if o.Settings == nil {
			o.Settings = map[string]string{}
		}
	}
	for k, v := range map[string]string{"archive_mode": "on", "archive_command": "'" + push + " %p'", "wal_level": "replica"} {
		o.Settings[k] = v
	}
	c := pgtest.NewCluster(t, o)
	_, err = c.CreateDatabase(context.Background(), "spire")
	require.NoError(t, err)
	return c
}

// sharedDir is a directory the server's OS user can read.
func sharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spiredb-pitr-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func copyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, mode))
}

// switchWAL ends the current segment and waits until the archiver has
// pushed it.
func switchWAL(t testing.TB, c *pgcluster.Cluster) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN("spire"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var name string
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&name))
	require.Eventually(t, func() bool {
		var last *string
		require.NoError(t, conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&last))
		return last != nil && *last >= name
	}, time.Minute, 100*time.Millisecond, "segment %s not archived", name)
	return name
}

// startRestored starts a server on a restored data directory and returns
// its spire database's DSN.
func startRestored(t *testing.T, from *pgcluster.Cluster, dir string) string {
	t.Helper()
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	bin, err := pgcluster.FindBinDir(os.Getenv("SPIREDB_PG_BIN"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.StartExisting(ctx, dir, filepath.Join(dir, "data"), bin, port, from.Password, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop() })
	return c.DSN("spire")
}

// restoreDir is a directory under the harness root for a restored data
// directory (…/data, made by the restore).
func restoreDir(t testing.TB) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(pgcluster.DefaultRoot(), 0o755))
	dir, err := os.MkdirTemp(pgcluster.DefaultRoot(), "pitr-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestPointInTimeRecoveryWithSpire: a real spire-server creates entries one
// at a time over several archived segments, each acknowledged at a known
// time. A restore to a moment between two acknowledgements yields exactly
// the entries acknowledged before it; --latest yields all; a target outside
// the window is refused with the window; verify --level pitr passes, and
// fails once a segment in the middle is deleted. Prune keeps the WAL the
// newest base needs and removes the older.
func TestPointInTimeRecoveryWithSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	b := s3test.NewBucket(t)
	env, flags := s3CLI(b, "pitr")
	// archive_timeout, not the test, ends the segments while SPIRE writes
	c := archivingCluster(t, b, "pitr", pgcluster.Options{Settings: map[string]string{"archive_timeout": "10s"}})
	srv := startSpire(t, &pgtest.DB{Cluster: c, Name: "spire"}, spiretest.Options{})
	entries := spirefixture.GenerateEntries(40, 4, nil)
	require.NoError(t, srv.CreateEntries(ctx, entries[:10]))

	cli := func(args ...string) (string, string, int) {
		return runCLI(t, env, append(args, flags...)...)
	}
	out, errOut, code := cli("backup", "run", "--physical", "--dsn", c.DSN("spire"), "-o", "json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"kind": "physical"`)
	_, errOut, code = cli("backup", "run", "--dsn", c.DSN("spire"))
	require.Equal(t, 0, code, errOut, "a logical backup next to it")

	// one entry at a time, each acknowledged by the API at a known time,
	// over about a minute and a half: archive_timeout spreads them over
	// several segments
	type ack struct{ requested, acked time.Time }
	var acks []ack
	pconn, err := pgx.Connect(ctx, c.DSN("spire"))
	require.NoError(t, err)
	defer pconn.Close(ctx)
	var afterSeventh string // a WAL position after entry 7's commit, before entry 8's
	for i := 10; i < 30; i++ {
		r := time.Now()
		require.NoError(t, srv.CreateEntries(ctx, entries[i:i+1]))
		acks = append(acks, ack{r, time.Now()})
		if i == 17 {
			require.NoError(t, pconn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&afterSeventh))
		}
		time.Sleep(2500 * time.Millisecond)
	}
	switchWAL(t, c)
	between := func(k int) time.Time { // after entry k's ack, before entry k+1's request
		return acks[k].acked.Add(acks[k+1].requested.Sub(acks[k].acked) / 2)
	}

	out, errOut, code = cli("backup", "list")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "physical")
	require.Contains(t, out, "logical")

	for _, k := range []int{3, 12, 18} {
		dir := restoreDir(t)
		target := between(k)
		out, errOut, code := cli("backup", "restore", "--physical", "--to-time", target.UTC().Format(time.RFC3339Nano), "--data-dir", filepath.Join(dir, "data"))
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "new timeline")
		got := spiffeIDs(t, startRestored(t, c, dir))
		require.Len(t, got, 10+k+1, "restore to %s: entries acknowledged up to then", target)
		for i := range 10 + k + 1 {
			require.True(t, got[entries[i].SpiffeID], "entry %d missing", i)
		}
	}

	dir := restoreDir(t)
	_, errOut, code = cli("backup", "restore", "--physical", "--to-lsn", afterSeventh, "--data-dir", filepath.Join(dir, "data"))
	require.Equal(t, 0, code, errOut)
	require.Len(t, spiffeIDs(t, startRestored(t, c, dir)), 18, "restore to %s", afterSeventh)

	dir = restoreDir(t)
	out, errOut, code = cli("backup", "restore", "--physical", "--latest", "--data-dir", filepath.Join(dir, "data"), "-o", "json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"reached_lsn"`)
	restored := startRestored(t, c, dir)
	require.Len(t, spiffeIDs(t, restored), 30)
	// the copy does not archive into the store it came from
	rconn, err := pgx.Connect(ctx, restored)
	require.NoError(t, err)
	var mode string
	require.NoError(t, rconn.QueryRow(ctx, "SHOW archive_mode").Scan(&mode))
	rconn.Close(ctx)
	require.Equal(t, "off", mode)

	// outside the window: refused, with the window, nothing written
	dir = restoreDir(t)
	_, errOut, code = cli("backup", "restore", "--physical", "--to-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "--data-dir", filepath.Join(dir, "data"))
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "outside every restorable window")
	require.Regexp(t, `base [0-9T]+Z-[0-9a-f]+: 20[0-9-]+T[0-9:]+Z \(`, errOut)
	require.NoDirExists(t, filepath.Join(dir, "data"))
	_, errOut, code = cli("backup", "restore", "--physical", "--to-time", "2001-01-01T00:00:00Z", "--data-dir", filepath.Join(dir, "data"))
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "outside every restorable window")

	// the logical commands pick the logical backup, and refuse the base
	out, errOut, code = cli("backup", "verify", "--latest", "--level", "restore", "--dsn", c.DSN("spire"))
	require.Equal(t, 0, code, out+errOut)
	ms, err := backup.List(ctx, s3StoreOf(t, b, "pitr"))
	require.NoError(t, err)
	var baseID string
	for _, m := range ms {
		if m.IsPhysical() {
			baseID = m.ID
		}
	}
	_, errOut, code = cli("backup", "restore", "--id", baseID, "--target-dsn", pgtest.NewDB(t).DSN)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "is a physical backup")

	// doctor sees the archiving and what the store can restore to
	out, errOut, code = cli("doctor", "--dsn", c.DSN("spire"))
	require.Contains(t, []int{0, 4}, code, errOut)
	require.Regexp(t, `WAL archiving\s+on \(timeout`, out, errOut)
	require.Regexp(t, `point-in-time\s+1 base backups; restorable to 20`, out)
	require.NotContains(t, out, "archive.failing")

	// no server of the base's major here: an error, nothing recorded
	_, errOut, code = cli("backup", "verify", "--latest", "--level", "pitr", "--pg-bin", t.TempDir())
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "recovers the base with the PostgreSQL 15 server")
	out, _, _ = cli("backup", "list")
	require.Regexp(t, `physical .* never`, out)

	out, errOut, code = cli("backup", "verify", "--latest", "--level", "pitr")
	require.Equal(t, 0, code, out+errOut)
	for _, check := range []string{"wal-continuity", "recovery", "amcheck", "spire"} {
		require.Contains(t, out, check)
	}
	require.Contains(t, out, "registered_entries 30")

	// a second base, then prune: the WAL before it goes, its own stays
	_, errOut, code = cli("backup", "run", "--physical", "--dsn", c.DSN("spire"))
	require.Equal(t, 0, code, errOut)
	store := s3StoreOf(t, b, "pitr")
	before, _, err := backup.ListWAL(ctx, store)
	require.NoError(t, err)
	out, errOut, code = cli("backup", "prune", "--keep-last", "1", "--yes", "-o", "json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"wal_deleted"`)
	after, _, err := backup.ListWAL(ctx, store)
	require.NoError(t, err)
	require.Less(t, len(after), len(before))
	out, errOut, code = cli("backup", "verify", "--latest", "--level", "pitr")
	require.Equal(t, 0, code, out+errOut)

	// a segment deleted in the middle: verify finds the gap, exit 1
	require.NoError(t, srv.CreateEntries(ctx, entries[30:31]))
	switchWAL(t, c)
	require.NoError(t, srv.CreateEntries(ctx, entries[31:32]))
	last := switchWAL(t, c)
	files, _, err := backup.ListWAL(ctx, store)
	require.NoError(t, err)
	var segs []string
	for _, f := range files {
		if f.Kind == backup.WALSegment {
			segs = append(segs, f.Name)
		}
	}
	require.GreaterOrEqual(t, len(segs), 3)
	victim := segs[len(segs)-2]
	require.NotEqual(t, last, victim)
	require.NoError(t, store.Delete(ctx, "wal/"+victim))
	out, errOut, code = cli("backup", "verify", "--latest", "--level", "pitr")
	require.Equal(t, 1, code, out+errOut)
	require.Contains(t, out, "wal-continuity")
	require.Contains(t, out+errOut, victim)
}

// TestWALPushKilledMidUpload: spiredb wal push is SIGKILLed while its
// upload is half-way through the wire. fetch then finds nothing under the
// name (exit 1, nothing written to %p), and the next push (PostgreSQL
// retries) archives it whole.
func TestWALPushKilledMidUpload(t *testing.T) {
	t.Parallel()
	b := s3test.NewBucket(t)
	env, flags := s3CLI(b, "kill")
	u := strings.TrimPrefix(b.Endpoint, "http://")
	stall, forwarded := stallingProxy(t, u, 6<<20)
	slowFlags := append([]string{}, flags...)
	for i, f := range slowFlags {
		if f == b.Endpoint {
			slowFlags[i] = "http://" + stall
		}
	}

	name := "000000010000000000000042"
	seg := filepath.Join(t.TempDir(), name)
	content := make([]byte, 16<<20)
	for i := range content {
		content[i] = byte(i*7919 + i/4099) // not compressible to nothing
	}
	_, _ = io.ReadFull(randReader{}, content[:12<<20])
	require.NoError(t, os.WriteFile(seg, content, 0o600))

	cmd := exec.Command(spiredbCLI(t), append([]string{"wal", "push", seg}, slowFlags...)...)
	cmd.Env = append(os.Environ(), env...)
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return forwarded.Load() >= 6<<20 }, time.Minute, 20*time.Millisecond, "the upload never got half-way")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	_, errOut, code := runCLI(t, env, append([]string{"wal", "fetch", name, dest}, flags...)...)
	require.Equal(t, 1, code, errOut)
	require.NoFileExists(t, dest)
	out, errOut, code := runCLI(t, env, append([]string{"wal", "list"}, flags...)...)
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, out, name)

	_, errOut, code = runCLI(t, env, append([]string{"wal", "push", seg}, flags...)...)
	require.Equal(t, 0, code, errOut)
	_, errOut, code = runCLI(t, env, append([]string{"wal", "fetch", name, dest}, flags...)...)
	require.Equal(t, 0, code, errOut)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	require.Equal(t, content, got)
}

type randReader struct{}

func (randReader) Read(p []byte) (int, error) {
	f, err := os.Open("/dev/urandom")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Read(p)
}

// stallingProxy forwards to backend, but stops passing client bytes on
// once limit bytes went through (the connection hangs as a dead network
// would); forwarded counts them.
func stallingProxy(t *testing.T, backend string, limit int64) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var forwarded atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			go func() { _, _ = io.Copy(c, s) }()
			go func() {
				buf := make([]byte, 32<<10)
				for {
					if forwarded.Load() >= limit {
						<-done
						return
					}
					n, err := c.Read(buf)
					if n > 0 {
						forwarded.Add(int64(n))
						if _, err := s.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &forwarded
}

// TestDoctorSeesArchiverFailing: an archive_command that fails is an error
// finding naming the segment; a server without archiving gets the advice.
func TestDoctorSeesArchiverFailing(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{"archive_mode": "on", "archive_command": "'/bin/false'"}})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var name string
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&name))
	require.Eventually(t, func() bool {
		var failed int
		require.NoError(t, conn.QueryRow(ctx, "SELECT failed_count FROM pg_stat_archiver").Scan(&failed))
		return failed > 0
	}, time.Minute, 100*time.Millisecond)
	out, errOut, code := runCLI(t, nil, "doctor", "--dsn", c.DSN("postgres"))
	require.Equal(t, 1, code, out+errOut)
	require.Contains(t, out, "archive.failing")
	require.Contains(t, out, name)
	require.Contains(t, out, "FAILING")

	out, _, _ = runCLI(t, nil, "doctor", "--dsn", pgtest.NewDB(t).DSN)
	require.Contains(t, out, "archive.off")
}

// TestPointInTimeRestoreNeverStopsShort: a segment inside the restorable
// window that cannot be fetched (damaged after it was archived: its name is
// listed, its content fails the checksum) ends recovery early. PostgreSQL
// says "before the target", as it does when no commit after the target was
// archived, but replaying "to the archive's end" would then stop at the
// damaged segment too, short of the target and of the archive's end: a
// restore that lost the transactions after it while reporting success. The
// restore fails instead, naming the segment; --latest too.
func TestPointInTimeRestoreNeverStopsShort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := s3test.NewBucket(t)
	env, flags := s3CLI(b, "short")
	c := archivingCluster(t, b, "short")
	cli := func(args ...string) (string, string, int) {
		return runCLI(t, env, append(args, flags...)...)
	}
	conn, err := pgx.Connect(ctx, c.DSN("spire"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)")
	require.NoError(t, err)
	_, errOut, code := cli("backup", "run", "--physical", "--dsn", c.DSN("spire"))
	require.Equal(t, 0, code, errOut)

	var segs []string
	var target time.Time // after the third batch's commit, before the fourth's
	for i := range 4 {
		_, err := conn.Exec(ctx, "INSERT INTO t SELECT g FROM generate_series($1::int, $2::int) g", i*100+1, i*100+100)
		require.NoError(t, err)
		segs = append(segs, switchWAL(t, c))
		if i == 2 {
			target = time.Now()
		}
		time.Sleep(1100 * time.Millisecond)
	}

	// the second batch's segment, damaged in the store
	s := s3StoreOf(t, b, "short")
	rc, err := s.Get(ctx, "wal/"+segs[1])
	require.NoError(t, err)
	stored, err := io.ReadAll(rc)
	rc.Close()
	require.NoError(t, err)
	original := append([]byte(nil), stored...)
	stored[len(stored)-10] ^= 0xff
	_, err = s.Put(ctx, "wal/"+segs[1], strings.NewReader(string(stored)))
	require.NoError(t, err)

	for _, to := range [][]string{{"--to-time", target.UTC().Format(time.RFC3339Nano)}, {"--latest"}} {
		dir := restoreDir(t)
		out, errOut, code := cli(append([]string{"backup", "restore", "--physical", "--data-dir", filepath.Join(dir, "data")}, to...)...)
		require.NotEqual(t, 0, code, "%v: a restore short of its target reported success: %s", to, out)
		require.Contains(t, errOut, segs[1], "%v", to)
		require.NoDirExists(t, filepath.Join(dir, "data"), "a restore short of its target left a directory to start")
	}
	// undamaged, the same restore reaches its target: three batches
	_, err = s.Put(ctx, "wal/"+segs[1], strings.NewReader(string(original)))
	require.NoError(t, err)
	dir := restoreDir(t)
	_, errOut, code = cli("backup", "restore", "--physical", "--to-time", target.UTC().Format(time.RFC3339Nano), "--data-dir", filepath.Join(dir, "data"))
	require.Equal(t, 0, code, errOut)
	rconn, err := pgx.Connect(ctx, startRestored(t, c, dir))
	require.NoError(t, err)
	defer rconn.Close(ctx)
	var n int
	require.NoError(t, rconn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n))
	require.Equal(t, 300, n)
}
