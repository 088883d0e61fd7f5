package backup

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
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
