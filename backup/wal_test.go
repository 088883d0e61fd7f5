package backup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
)

func TestParseWALName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]backup.WALKind{
		"000000010000000000000003":                 backup.WALSegment,
		"0000000A00000001000000FF":                 backup.WALSegment,
		"000000010000000000000003.partial":         backup.WALPartial,
		"000000010000000000000004.00000028.backup": backup.WALBackupHistory,
		"00000002.history":                         backup.WALTimelineHistory,
	} {
		w, ok := backup.ParseWALName(name)
		require.True(t, ok, name)
		require.Equal(t, want, w.Kind, name)
	}
	for _, bad := range []string{"", "RECOVERYXLOG", "000000000000000000000003", "00000001000000000000003", "000000010000000000000003.gz",
		"../000000010000000000000003", "0000000100000000000000ab", "00000000.history"} {
		_, ok := backup.ParseWALName(bad)
		require.False(t, ok, bad)
	}
	w, _ := backup.ParseWALName("0000000200000001000000FE")
	require.Equal(t, uint64(0x1FE), w.SegNo(16<<20))
	require.Equal(t, "0000000200000001000000FE", backup.SegmentName(2, 0x1FE, 16<<20))
	lsn, err := backup.ParseLSN("1/FE000028")
	require.NoError(t, err)
	require.Equal(t, uint64(0x1FE), lsn.SegNo(16<<20))
	_, err = backup.ParseLSN("1/XYZ")
	require.Error(t, err)
}

// walFile writes a segment-sized file of random (incompressible) and zero
// (compressible) halves under name in a new pg_wal-like directory.
func walFile(t *testing.T, name string) (path string, content []byte) {
	t.Helper()
	content = make([]byte, 1<<20)
	_, _ = rand.Read(content[:len(content)/2])
	path = filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, content, 0o600))
	return path, content
}

func TestWALPushFetch(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		name := "000000010000000000000007"
		path, content := walFile(t, name)
		res, err := backup.PushWAL(ctx, s, path, backup.Keys{}, nil)
		require.NoError(t, err)
		require.False(t, res.AlreadyArchived)
		require.Less(t, res.Stored, res.Size, "compressed")

		// a retried archive_command: same content, success, nothing written
		res, err = backup.PushWAL(ctx, s, path, backup.Keys{}, nil)
		require.NoError(t, err)
		require.True(t, res.AlreadyArchived)

		// a different file under the same name: refused, the stored one kept
		other := filepath.Join(t.TempDir(), name)
		require.NoError(t, os.WriteFile(other, bytes.Repeat([]byte{1}, 1<<20), 0o600))
		_, err = backup.PushWAL(ctx, s, other, backup.Keys{}, nil)
		require.ErrorIs(t, err, backup.ErrWALConflict)

		dir := t.TempDir()
		dest := filepath.Join(dir, "RECOVERYXLOG")
		require.NoError(t, backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: -1}))
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.True(t, bytes.Equal(content, got), "fetched content differs")

		err = backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: "000000010000000000000009", Dest: filepath.Join(dir, "x"), Prefetch: -1})
		require.ErrorIs(t, err, backup.ErrNotFound)
		_, err = os.Stat(filepath.Join(dir, "x"))
		require.ErrorIs(t, err, os.ErrNotExist)

		_, err = backup.PushWAL(ctx, s, filepath.Join(dir, "RECOVERYXLOG"), backup.Keys{}, nil)
		require.ErrorContains(t, err, "not a WAL file name")
	})
}

// TestWALFetchRefusesDamagedSegments: an archived file whose content no
// longer matches its header never reaches PostgreSQL's %p.
func TestWALFetchRefusesDamagedSegments(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		name := "000000010000000000000003"
		path, _ := walFile(t, name)
		_, err := backup.PushWAL(ctx, s, path, backup.Keys{}, nil)
		require.NoError(t, err)
		rc, err := s.Get(ctx, "wal/"+name)
		require.NoError(t, err)
		stored, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)

		// the same header over another segment's compressed data
		other, _ := walFile(t, "000000010000000000000004")
		_, err = backup.PushWAL(ctx, s, other, backup.Keys{}, nil)
		require.NoError(t, err)
		rc, err = s.Get(ctx, "wal/000000010000000000000004")
		require.NoError(t, err)
		otherStored, _ := io.ReadAll(rc)
		rc.Close()
		header := stored[:bytes.IndexByte(stored, '\n')+1]
		body := otherStored[bytes.IndexByte(otherStored, '\n')+1:]
		_, err = s.Put(ctx, "wal/"+name, bytes.NewReader(append(append([]byte{}, header...), body...)))
		require.NoError(t, err)

		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		err = backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: -1})
		require.ErrorContains(t, err, "is damaged")
		require.False(t, errors.Is(err, backup.ErrNotFound))
		_, err = os.Stat(dest)
		require.ErrorIs(t, err, os.ErrNotExist)

		// a truncated object
		_, err = s.Put(ctx, "wal/"+name, bytes.NewReader(stored[:len(stored)/2]))
		require.NoError(t, err)
		err = backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: -1})
		require.Error(t, err)
		_, err = os.Stat(dest)
		require.ErrorIs(t, err, os.ErrNotExist)
	})
}

// TestWALFetchPrefetches: the segments after the requested one are
// downloaded with it and handed over from the spool, checked, without the
// store.
func TestWALFetchPrefetches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	contents := map[string][]byte{}
	for _, name := range []string{"0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"} {
		path, c := walFile(t, name)
		contents[name] = c
		_, err := backup.PushWAL(ctx, s, path, backup.Keys{}, nil)
		require.NoError(t, err)
	}
	pgwal := t.TempDir()
	dest := filepath.Join(pgwal, "RECOVERYXLOG")
	require.NoError(t, backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: "0000000100000000000000FE", Dest: dest, Prefetch: 4}))
	spool, err := os.ReadDir(filepath.Join(pgwal, ".spiredb-prefetch"))
	require.NoError(t, err)
	var names []string
	for _, e := range spool {
		name, ok := strings.CutSuffix(e.Name(), ".spiredb-spooled")
		require.True(t, ok, "spooled files are named as spiredb's: %s", e.Name())
		names = append(names, name)
	}
	require.Equal(t, []string{"0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"}, names, "the next segments, across the log boundary")

	// the store loses them: the spool still serves them
	require.NoError(t, s.Delete(ctx, "wal/0000000100000000000000FF", "wal/000000010000000100000000"))
	for _, name := range []string{"0000000100000000000000FF", "000000010000000100000000"} {
		require.NoError(t, backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: 4}))
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.True(t, bytes.Equal(contents[name], got), name)
	}
	spool, _ = os.ReadDir(filepath.Join(pgwal, ".spiredb-prefetch"))
	require.NotEmpty(t, spool)
	for _, e := range spool {
		require.False(t, strings.Compare(strings.TrimSuffix(e.Name(), ".spiredb-spooled"), "000000010000000100000000") <= 0, "passed segments are cleaned: %s", e.Name())
	}
}

// TestWALEncrypted: wal push --recipient stores no plaintext byte of the
// segment; fetch without an identity, or with the wrong one, fails with
// nothing at %p (not "not found": PostgreSQL must not take it for the end of
// the archive); the right identity gets identical bytes.
func TestWALEncrypted(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		right, err := age.GenerateX25519Identity()
		require.NoError(t, err)
		wrong, err := age.GenerateX25519Identity()
		require.NoError(t, err)
		name := "000000010000000000000005"
		content := bytes.Repeat([]byte("spiffe://example.org/workload/a\x00"), (1<<20)/32)
		path := filepath.Join(t.TempDir(), name)
		require.NoError(t, os.WriteFile(path, content, 0o600))
		keys := backup.Keys{Recipients: []age.Recipient{right.Recipient()}}
		res, err := backup.PushWAL(ctx, s, path, keys, nil)
		require.NoError(t, err)
		require.Less(t, res.Stored, res.Size/10, "compressed before it is encrypted")
		rc, err := s.Get(ctx, "wal/"+name)
		require.NoError(t, err)
		stored, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		require.NotContains(t, string(stored), "spiffe://")
		require.Contains(t, string(stored[:bytes.IndexByte(stored, '\n')]), "enc=age")

		// a retried push of the same content is recognised through the header
		res, err = backup.PushWAL(ctx, s, path, keys, nil)
		require.NoError(t, err)
		require.True(t, res.AlreadyArchived)

		dir := t.TempDir()
		dest := filepath.Join(dir, "RECOVERYXLOG")
		for _, ids := range [][]age.Identity{nil, {wrong}} {
			err = backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: -1, Keys: backup.Keys{Identities: ids}})
			require.Error(t, err)
			require.False(t, errors.Is(err, backup.ErrNotFound))
			entries, _ := os.ReadDir(dir)
			require.Empty(t, entries, "a failed fetch left a file")
		}
		require.NoError(t, backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: -1,
			Keys: backup.Keys{Identities: []age.Identity{wrong, right}}}))
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.True(t, bytes.Equal(content, got), "fetched content differs")
	})
}

// TestWALFetchSpoolTouchesOnlyItsOwnFiles: --spool-dir may name a
// directory that holds other files, WAL-named ones included (an old
// cp-based archive, say). Fetch never hands one of them to PostgreSQL as
// a checked segment, never moves one, and never deletes one; it cleans
// only the files it spooled.
func TestWALFetchSpoolTouchesOnlyItsOwnFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	contents := map[string][]byte{}
	for _, name := range []string{"0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000"} {
		path, c := walFile(t, name)
		contents[name] = c
		_, err := backup.PushWAL(ctx, s, path, backup.Keys{}, nil)
		require.NoError(t, err)
	}
	spool := t.TempDir()
	foreign := map[string]string{
		".env":                     "SECRET=1",
		"-notes":                   "kept",
		"README":                   "another archive",
		"000000010000000000000001": "an older cluster's segment",
		"0000000100000000000000FF": "not the store's segment",
		"x.partial-1":              "someone's partial download",
	}
	for name, c := range foreign {
		require.NoError(t, os.WriteFile(filepath.Join(spool, name), []byte(c), 0o600))
	}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	for _, name := range []string{"0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000"} {
		require.NoError(t, backup.FetchWAL(ctx, backup.FetchOptions{Store: s, Name: name, Dest: dest, Prefetch: 4, SpoolDir: spool}))
		got, err := os.ReadFile(dest)
		require.NoError(t, err)
		require.True(t, bytes.Equal(contents[name], got), "%s is the store's, checked, not a file that was in the spool", name)
	}
	for name, c := range foreign {
		got, err := os.ReadFile(filepath.Join(spool, name))
		require.NoError(t, err, "%s was in the spool before spiredb: it stays", name)
		require.Equal(t, c, string(got), name)
	}
	left, err := os.ReadDir(spool)
	require.NoError(t, err)
	require.Len(t, left, len(foreign), "what fetch spooled was handed over or cleaned")
}
