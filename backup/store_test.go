package backup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/s3test"
)

// storeKinds builds each kind of store for the shared contract suite.
var storeKinds = map[string]func(t *testing.T) backup.Store{
	"file": func(t *testing.T) backup.Store { return fileStore(t) },
	"s3":   func(t *testing.T) backup.Store { return s3Store(t, "some/prefix") },
}

func fileStore(t *testing.T) backup.Store {
	s, err := backup.NewFileStore(t.TempDir())
	require.NoError(t, err)
	return s
}

// s3Store is a store on a fresh bucket of the shared versitygw.
func s3Store(t *testing.T, prefix string) backup.Store {
	t.Helper()
	b := s3test.NewBucket(t)
	s, err := backup.OpenStore(context.Background(), "s3://"+b.Name+"/"+prefix, s3Options(b))
	require.NoError(t, err)
	return s
}

func s3Options(b *s3test.Bucket) backup.StoreOptions {
	return backup.StoreOptions{S3Endpoint: b.Endpoint, S3PathStyle: true, S3Region: s3test.Region, PartSize: 5 << 20,
		S3Credentials: &backup.StaticCredentials{AccessKey: b.AccessKey, SecretKey: b.SecretKey}}
}

// forEachStore runs fn in a parallel subtest for each kind of store, each
// with a fresh store of its own.
func forEachStore(t *testing.T, fn func(t *testing.T, s backup.Store)) {
	t.Parallel()
	for name, mk := range storeKinds {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, mk(t))
		})
	}
}

func TestStoreContract(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		require.NoError(t, s.Check(ctx))

		// a multi-part object streams through and back intact
		big := make([]byte, 17<<20+123)
		_, _ = rand.Read(big)
		n, err := s.Put(ctx, "a/big", io.MultiReader(bytes.NewReader(big)))
		require.NoError(t, err)
		require.EqualValues(t, len(big), n)
		rc, err := s.Get(ctx, "a/big")
		require.NoError(t, err)
		h := sha256.New()
		got, err := io.Copy(h, rc)
		require.NoError(t, err)
		require.NoError(t, rc.Close())
		require.EqualValues(t, len(big), got)
		require.Equal(t, sha256.Sum256(big), [32]byte(h.Sum(nil)))

		_, err = s.Put(ctx, "a/small.json", bytes.NewReader([]byte(`{}`)))
		require.NoError(t, err)
		_, err = s.Put(ctx, "b/other", bytes.NewReader([]byte("x")))
		require.NoError(t, err)

		objs, err := s.List(ctx, "a/")
		require.NoError(t, err)
		require.Equal(t, []string{"a/big", "a/small.json"}, keys(objs))
		all, err := s.List(ctx, "")
		require.NoError(t, err)
		require.Len(t, all, 3)

		// a failed upload leaves no object
		_, err = s.Put(ctx, "c/broken", io.MultiReader(bytes.NewReader(big[:11<<20]), errReader{}))
		require.Error(t, err)
		_, err = s.Get(ctx, "c/broken")
		require.ErrorIs(t, err, backup.ErrNotFound)
		objs, err = s.List(ctx, "c/")
		require.NoError(t, err)
		require.Empty(t, objs)

		require.NoError(t, s.Delete(ctx, "a/big", "a/small.json", "a/never-existed"))
		objs, err = s.List(ctx, "a/")
		require.NoError(t, err)
		require.Empty(t, objs)
		_, err = s.Get(ctx, "a/big")
		require.ErrorIs(t, err, backup.ErrNotFound)

		ups, err := s.Incomplete(ctx)
		require.NoError(t, err)
		require.Empty(t, ups, "a failed Put must not leave an incomplete upload behind")
	})
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("pg_dump died") }

func keys(objs []backup.Object) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Key
	}
	sort.Strings(out)
	return out
}

func TestS3CheckNamesTheCause(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := s3test.NewBucket(t)

	missing, err := backup.OpenStore(ctx, "s3://no-such-bucket-here/x", s3Options(b))
	require.NoError(t, err)
	require.ErrorContains(t, missing.Check(ctx), `bucket "no-such-bucket-here" does not exist`)

	o := s3Options(b)
	o.S3Credentials = &backup.StaticCredentials{AccessKey: b.AccessKey, SecretKey: "wrong-secret-key-value"}
	wrong, err := backup.OpenStore(ctx, "s3://"+b.Name, o)
	require.NoError(t, err)
	err = wrong.Check(ctx)
	require.ErrorContains(t, err, "access denied")
	require.NotContains(t, err.Error(), "wrong-secret-key-value")

	o = s3Options(b)
	o.S3Endpoint = "http://127.0.0.1:1"
	down, err := backup.OpenStore(ctx, "s3://"+b.Name, o)
	require.NoError(t, err)
	require.ErrorContains(t, down.Check(ctx), "cannot reach the S3 endpoint")
}

func TestOpenStoreRejectsBadURLs(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "ftp://x/y", "ftp://u:secret@x/y", "file://relative/path", "s3:///prefix", "s3://AKIA:secret@bucket/x", "::"} {
		_, err := backup.OpenStore(context.Background(), u, backup.StoreOptions{})
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), "secret@", u)
	}
}

func TestFileStoreReadOnlyCommandsDoNotCreateIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir() + "/not/yet"
	s, err := backup.NewFileStore(dir)
	require.NoError(t, err)
	require.NoError(t, s.Check(ctx))
	list, err := backup.List(ctx, s)
	require.NoError(t, err)
	require.Empty(t, list)
	require.NoDirExists(t, dir)
	_, err = s.Put(ctx, "a/b", strings.NewReader("x"))
	require.NoError(t, err)
	require.FileExists(t, dir+"/a/b")

	file, err := backup.NewFileStore(dir + "/a/b")
	require.NoError(t, err)
	require.ErrorContains(t, file.Check(ctx), "not a directory")
}
