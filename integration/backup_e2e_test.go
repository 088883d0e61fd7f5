package integration_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// TestBackupWithoutCredentialsIsOneLine: with no credentials anywhere in
// the AWS chain, on a host whose instance metadata service refuses
// sessions (IMDSv2 tokens; a metadata proxy, a hardened node), the run
// exits 3 with one line saying what to set — not the SDK's own warnings
// on stderr around it.
func TestBackupWithoutCredentialsIsOneLine(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut { // /latest/api/token
			w.WriteHeader(http.StatusForbidden)
			return
		}
		http.NotFound(w, r) // no role
	}))
	defer imds.Close()
	env := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_PROFILE=",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_REGION=" + s3test.Region,
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=", "AWS_CONTAINER_CREDENTIALS_FULL_URI=", "AWS_WEB_IDENTITY_TOKEN_FILE=",
		"AWS_EC2_METADATA_DISABLED=false", "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds.URL}
	out, stderr, code := runCLI(t, env, "backup", "run", "--dsn", db.DSN, "--store", "s3://spiredb-none/x",
		"--s3-endpoint", "http://127.0.0.1:1", "--s3-path-style")
	require.Equal(t, 3, code, stderr)
	require.Empty(t, out)
	require.Contains(t, stderr, "no AWS credentials found")
	require.Equal(t, 0, strings.Count(strings.TrimSpace(stderr), "\n"), "one line: %q", stderr)
}

// s3CLI returns the environment and flags that point the spiredb CLI at a
// versitygw bucket through the AWS default credential chain.
func s3CLI(b *s3test.Bucket, prefix string) (env []string, flags []string) {
	env = []string{"AWS_ACCESS_KEY_ID=" + b.AccessKey, "AWS_SECRET_ACCESS_KEY=" + b.SecretKey,
		"AWS_REGION=" + s3test.Region, "AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
	flags = []string{"--store", "s3://" + b.Name + "/" + prefix, "--s3-endpoint", b.Endpoint, "--s3-path-style"}
	return env, flags
}

func s3StoreOf(t testing.TB, b *s3test.Bucket, prefix string) backup.Store {
	t.Helper()
	s, err := backup.OpenStore(context.Background(), "s3://"+b.Name+"/"+prefix, backup.StoreOptions{
		S3Endpoint: b.Endpoint, S3PathStyle: true, S3Region: s3test.Region,
		S3Credentials: &backup.StaticCredentials{AccessKey: b.AccessKey, SecretKey: b.SecretKey}})
	require.NoError(t, err)
	return s
}

// SPIRE's own view survives the round trip: 2,000 entries created through a
// real spire-server's API, backed up to S3 with the CLI, restored into a new
// database, and a second spire-server on it serves identical entries.
func TestBackupRestoreServedBySpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	src := pgtest.NewDB(t)
	a := startSpire(t, src, spiretest.Options{})
	require.NoError(t, a.CreateEntries(ctx, spirefixture.GenerateEntries(2000, 3, nil)))
	want, err := a.Show(ctx)
	require.NoError(t, err)

	b := s3test.NewBucket(t)
	env, store := s3CLI(b, "spire/prod")
	out, errOut, code := runCLI(t, env, append([]string{"backup", "run", "--dsn", src.DSN, "--label", "e2e", "-o", "json"}, store...)...)
	require.Equal(t, 0, code, errOut)
	var m backup.Manifest
	require.NoError(t, json.Unmarshal([]byte(out), &m))
	require.EqualValues(t, 2000, m.RowCounts["registered_entries"])
	require.NotContains(t, out+errOut, b.SecretKey)
	require.NotContains(t, out+errOut, src.Cluster.Password)

	_, errOut, code = runCLI(t, env, append([]string{"backup", "verify", "--dsn", src.DSN, "--id", m.ID}, store...)...)
	require.Equal(t, 0, code, errOut)

	dst := pgtest.NewDB(t)
	out, errOut, code = runCLI(t, env, append([]string{"backup", "restore", "--latest", "--target-dsn", dst.DSN}, store...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "SPIRE schema version 23, code_version 1.13.3: 2000 registration entries")
	require.Contains(t, out, "v1.8.0 to v1.13.x")

	bsrv := startSpire(t, dst, spiretest.Options{})
	n, err := bsrv.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, 2000, n)
	got, err := bsrv.Show(ctx)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got), "the restored server serves different entries")
}

// SIGKILL the backup process at random moments during the upload: list never
// shows a broken backup, the next run succeeds, prune cleans what was left.
func TestBackupSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	// large enough that the dump takes a while: ~40 MB uncompressed
	loadFixture(t, db, spirefixture.Spec{Entries: 120000})
	b := s3test.NewBucket(t)
	env, store := s3CLI(b, "kill")
	s := s3StoreOf(t, b, "kill")
	args := append([]string{"backup", "run", "--dsn", db.DSN, "--compress", "0"}, store...)

	_, errOut, code := runCLI(t, env, args...)
	require.Equal(t, 0, code, errOut)

	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	complete, dirty := 1, 0
	for i := range 6 {
		before, err := s.Incomplete(ctx)
		require.NoError(t, err)
		cmd := exec.Command(spiredbCLI(t), args...)
		cmd.Env = append(cmd.Environ(), env...)
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		start := time.Now()
		if i%3 == 0 {
			// early: connecting, taking the lock, exporting the snapshot
			time.Sleep(time.Duration(r.Int64N(int64(300 * time.Millisecond))))
		} else {
			// a random moment into the upload, once the store shows it
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				ups, err := s.Incomplete(ctx)
				require.NoError(t, err)
				if len(ups) > len(before) || len(exited) > 0 {
					break
				}
			}
			time.Sleep(time.Duration(r.Int64N(int64(200 * time.Millisecond))))
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		delay := time.Since(start)
		if err := <-exited; err == nil {
			complete++ // finished before the kill landed
		}

		list, err := backup.List(ctx, s)
		require.NoError(t, err)
		require.Len(t, list, complete, "kill %d after %s: list shows a backup that did not finish", i, delay)
		for _, m := range list {
			res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelChecksum})
			require.NoError(t, err)
			require.True(t, res.OK, "listed backup %s is broken: %+v", m.ID, res.Checks)
		}
		ups, err := s.Incomplete(ctx)
		require.NoError(t, err)
		objs, err := s.List(ctx, "")
		require.NoError(t, err)
		if len(ups) > len(before) || len(objs) > 3*complete {
			dirty++
		}
		t.Logf("kill %d after %s: %d complete, %d incomplete uploads, %d objects", i, delay, len(list), len(ups), len(objs))

		// the next run succeeds once the killed run's sessions are gone
		// (PostgreSQL notices a dead client only when it next talks to it;
		// until then its session still holds the overlap lock, and a run
		// then would rightly skip)
		waitTrue(t, db.DSN, `SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database()
			AND pid <> pg_backend_pid() AND application_name IN ('spiredb', 'pg_dump')`)
		_, errOut, code = runCLI(t, env, args...)
		require.Equal(t, 0, code, "run after kill %d: %s", i, errOut)
		complete++
	}
	require.Positive(t, dirty, "no kill landed during an upload: the test proved nothing")

	out, errOut, code := runCLI(t, env, append([]string{"backup", "prune", "--keep-last", "100", "--stale-after", "0s", "--yes", "-o", "json"}, store...)...)
	require.Equal(t, 0, code, errOut)
	var pr backup.PruneResult
	require.NoError(t, json.Unmarshal([]byte(out), &pr))
	require.Empty(t, pr.Deleted)
	ups, err := s.Incomplete(ctx)
	require.NoError(t, err)
	require.Empty(t, ups, "prune left incomplete uploads")
	objs, err := s.List(ctx, "")
	require.NoError(t, err)
	list, err := backup.List(ctx, s)
	require.NoError(t, err)
	require.Len(t, list, complete)
	for _, o := range objs {
		id, _, _ := strings.Cut(o.Key, "/")
		found := false
		for _, m := range list {
			found = found || m.ID == id
		}
		require.True(t, found, "prune left %s of a killed run", o.Key)
	}
}
