package backup

import (
	"io"

	"github.com/klauspost/compress/zstd"
)

// Codecs of a logical backup's stored object.
const (
	// CodecZstd: pg_dump writes an uncompressed custom-format archive and
	// spiredb compresses the stream with zstd. The default.
	CodecZstd = "zstd"
	// CodecPgDump: pg_dump compresses the archive itself (gzip, -Z 0-9);
	// every backup written before codecs existed is one.
	CodecPgDump = "pg_dump"
)

// codecOf names m's codec; manifests without one are pg_dump's.
func codecOf(m *Manifest) string {
	if m.Codec == "" {
		return CodecPgDump
	}
	return m.Codec
}

// zstdEncoder compresses into w at zstd's fastest level. Compression is not
// the bottleneck (two goroutines took 0.76 s for a 312 MiB SPIRE archive
// that pg_dump -Z0 needed 2.5 s to write; on a 650 MB base tar one goroutine
// was as fast as two), so one goroutine keeps the encoder's buffers, and the
// RSS, small.
func zstdEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
}

// decodedReader returns what pg_restore reads from the stored object r:
// decrypted (an encrypted backup must be unlocked) and decompressed.
func decodedReader(m *Manifest, r io.Reader) (io.ReadCloser, error) {
	r, err := m.opened(r)
	if err != nil {
		return nil, err
	}
	if codecOf(m) != CodecZstd {
		return io.NopCloser(r), nil
	}
	dec, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(512<<20))
	if err != nil {
		return nil, err
	}
	return dec.IOReadCloser(), nil
}

// decodingWriter returns a writer that takes the stored object's bytes
// and writes what pg_restore reads to sink. Close waits until everything
// is decoded and returns the decoder's error.
func decodingWriter(m *Manifest, sink io.Writer) io.WriteCloser {
	if codecOf(m) != CodecZstd && !m.Encrypted() {
		return nopWriteCloser{sink}
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		rc, err := decodedReader(m, pr)
		if err == nil {
			_, err = io.Copy(sink, rc)
			rc.Close()
		}
		pr.CloseWithError(err)
		done <- err
	}()
	return &decoder{pw: pw, done: done}
}

type decoder struct {
	pw   *io.PipeWriter
	done chan error
}

func (d *decoder) Write(p []byte) (int, error) { return d.pw.Write(p) }

func (d *decoder) Close() error {
	_ = d.pw.Close()
	return <-d.done
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
