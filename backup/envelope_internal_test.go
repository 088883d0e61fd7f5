package backup

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// TestEnvelopeRoundTrip: what encodingWriter seals, opened unlocks with an
// identity of a recipient and with nothing else; a rekey opens with the
// new identity only, and the data key never appears in the object.
func TestEnvelopeRoundTrip(t *testing.T) {
	alice, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	bob, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	plain := dumpLike(1 << 20)
	var stored bytes.Buffer
	w, enc, err := encodingWriter(&stored, zstdDump, []age.Recipient{alice.Recipient()})
	require.NoError(t, err)
	_, err = w.Write(plain)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.Equal(t, EncryptionScheme, enc.Scheme)

	m := &Manifest{ID: "x", Codec: CodecZstd, Encryption: enc}
	require.ErrorIs(t, m.Unlock(nil), ErrNoIdentity)
	require.ErrorIs(t, m.Unlock([]age.Identity{bob}), ErrWrongIdentity)
	require.NoError(t, m.Unlock([]age.Identity{alice}))
	require.False(t, bytes.Contains(stored.Bytes(), m.dataKeyPlain), "the data key is in the object")
	read := func(m *Manifest) []byte {
		r, err := decodedReader(m, bytes.NewReader(stored.Bytes()))
		require.NoError(t, err)
		defer r.Close()
		b, err := io.ReadAll(r)
		require.NoError(t, err)
		return b
	}
	require.Equal(t, sha256.Sum256(plain), sha256.Sum256(read(m)))

	re := &Manifest{ID: "x", Codec: CodecZstd, Encryption: enc}
	require.NoError(t, re.Rekey([]age.Identity{alice}, []age.Recipient{bob.Recipient()}))
	fresh := &Manifest{ID: "x", Codec: CodecZstd, Encryption: re.Encryption}
	require.ErrorIs(t, fresh.Unlock([]age.Identity{alice}), ErrWrongIdentity, "the old identity still opens a rekeyed backup")
	require.NoError(t, fresh.Unlock([]age.Identity{bob}))
	require.Equal(t, sha256.Sum256(plain), sha256.Sum256(read(fresh)))
}

// BenchmarkEncodingWriter: the CPU cost of encryption next to compression
// alone, on pg_dump-like data, and of the pure-Go encoder spiredb used
// before libzstd (make bench; docs/BENCHMARKS.md). SPIREDB_BENCH_ARCHIVE
// names a real archive to compress instead (`pg_dump -Fc -Z0 -f FILE`).
func BenchmarkEncodingWriter(b *testing.B) {
	plain := dumpLike(64 << 20)
	if f := os.Getenv("SPIREDB_BENCH_ARCHIVE"); f != "" {
		var err error
		plain, err = os.ReadFile(f)
		require.NoError(b, err)
	}
	id, err := age.GenerateX25519Identity()
	require.NoError(b, err)
	pureGo := func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	}
	for _, c := range []struct {
		name       string
		compress   func(io.Writer) (io.WriteCloser, error)
		recipients []age.Recipient
	}{{"zstd", zstdDump, nil}, {"zstd+age", zstdDump, []age.Recipient{id.Recipient()}}, {"pure-go-fastest", pureGo, nil}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			var out countWriter
			for range b.N {
				out = 0
				w, _, err := encodingWriter(&out, c.compress, c.recipients)
				require.NoError(b, err)
				_, err = w.Write(plain)
				require.NoError(b, err)
				require.NoError(b, w.Close())
			}
			b.ReportMetric(float64(out)/float64(len(plain)), "stored/plain")
		})
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// dumpLike returns n bytes shaped like a SPIRE dump's COPY data: SPIFFE
// IDs, hashes, numbers (compressible about as much).
func dumpLike(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	for i := 0; buf.Len() < n; i++ {
		fmt.Fprintf(&buf, "%d\t2026-12-02 10:00:00+00\t%016x%016x\tspiffe://example.org/ns-%d/w-%d\tspiffe://example.org/spire/agent/node-%d\t3600\tf\n",
			i, r.Uint64(), r.Uint64(), i%50, i, i%20)
	}
	return buf.Bytes()[:n]
}
