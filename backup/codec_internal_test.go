package backup

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// TestZstdWriters: every profile spiredb writes (a dump on two threads,
// a base backup's tar, a WAL segment in the caller's thread) is a
// standard zstd frame that the pure-Go reader restore uses decodes, across
// many of libzstd's jobs; and a dump compresses at least as well as the
// pure-Go fastest level it replaced (on a SPIRE archive: 8% smaller).
func TestZstdWriters(t *testing.T) {
	plain := dumpLike(24 << 20)
	sizes := map[string]int{}
	for _, c := range []struct {
		name           string
		level, threads int
	}{{"dump", levelDump, threadsDump}, {"base", levelBase, threadsBase}, {"wal", levelWAL, threadsWAL}} {
		t.Run(c.name, func(t *testing.T) {
			var stored bytes.Buffer
			w, err := zstdWriter(&stored, c.level, c.threads)
			require.NoError(t, err)
			for p := plain; len(p) > 0; p = p[min(len(p), 32<<10):] { // io.Copy's writes
				_, err := w.Write(p[:min(len(p), 32<<10)])
				require.NoError(t, err)
			}
			require.NoError(t, w.Close())
			dec, err := zstd.NewReader(bytes.NewReader(stored.Bytes()))
			require.NoError(t, err)
			defer dec.Close()
			got, err := io.ReadAll(dec)
			require.NoError(t, err)
			require.Equal(t, sha256.Sum256(plain), sha256.Sum256(got))
			sizes[c.name] = stored.Len()
		})
	}
	var pure bytes.Buffer
	enc, err := zstd.NewWriter(&pure, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	require.NoError(t, err)
	_, err = enc.Write(plain)
	require.NoError(t, err)
	require.NoError(t, enc.Close())
	t.Logf("24 MiB of dump-like text: libzstd level 1 %d bytes, klauspost fastest %d", sizes["dump"], pure.Len())
	require.Less(t, sizes["dump"], pure.Len())
}

// TestZstdWriterSinkFails: a sink that fails (the upload ended) fails the
// writer's Write or Close, which returns rather than waiting on its
// threads.
func TestZstdWriterSinkFails(t *testing.T) {
	sink := errors.New("upload ended")
	for _, threads := range []int{0, 2} {
		w, err := zstdWriter(failingWriter{sink}, levelDump, threads)
		require.NoError(t, err)
		plain := dumpLike(8 << 20)
		var werr error
		for p := plain; len(p) > 0 && werr == nil; p = p[min(len(p), 32<<10):] {
			_, werr = w.Write(p[:min(len(p), 32<<10)])
		}
		cerr := w.Close()
		require.ErrorIs(t, errors.Join(werr, cerr), sink, "threads %d", threads)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// TestZstdWriterFreesOnFailure: libzstd's memory is outside Go's heap; a
// writer whose sink failed still frees it when closed (the scheduler runs
// backups and WAL pushes in one long-lived process). 300 contexts of about
// 1 MiB each would show as 300 MiB of resident memory.
func TestZstdWriterFreesOnFailure(t *testing.T) {
	plain := dumpLike(1 << 20)
	rss := func() int64 {
		b, err := os.ReadFile("/proc/self/status")
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				require.NoError(t, err)
				return kb << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	before := rss()
	for i := range 300 {
		w, err := zstdWriter(failingWriter{errors.New("upload ended")}, levelDump, []int{0, 2}[i%2])
		require.NoError(t, err)
		_, werr := w.Write(plain)
		require.Error(t, errors.Join(werr, w.Close()))
	}
	grew := rss() - before
	t.Logf("resident memory grew %d MiB over 300 failed writers", grew>>20)
	require.Less(t, grew, int64(64<<20))
}
