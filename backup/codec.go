package backup

import (
	"fmt"
	"io"

	ddzstd "github.com/DataDog/zstd"
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

// zstd levels and threads of what spiredb writes. The encoder is libzstd
// (bundled, through cgo, which spiredb needs for libpg_query anyway): at
// level 1 it took 0.70 s of CPU for a 502 MiB SPIRE archive that
// klauspost/compress's fastest level needed 1.30 s for, and wrote 8% less
// (docs/BENCHMARKS.md). On two cores beside pg_dump and the server, that
// CPU is the backup's wall time. Reading stays pure Go (klauspost), which
// decodes every zstd frame, old backups' included.
const (
	// a logical dump: level 1 in the thread reading pg_dump. pg_dump and
	// the server's COPY set the pace (about 150 MB/s here) and one thread
	// compresses 700 MB/s; two were no faster, and their buffers cost
	// 10 MiB of RSS.
	levelDump, threadsDump = 1, 0
	// a base backup's tar: zstd's default level on two threads
	levelBase, threadsBase = 3, 2
	// one WAL segment: level 1 in the calling thread, to keep
	// archive_command light beside the server
	levelWAL, threadsWAL = 1, 0
)

// zstdWriter compresses into w at level with threads worker threads (0:
// in the caller's). Close must be called on every path, failed or not: it
// frees libzstd's context, which Go's collector does not see.
func zstdWriter(w io.Writer, level, threads int) (io.WriteCloser, error) {
	z := ddzstd.NewWriterLevel(w, level)
	if threads > 0 {
		if err := z.SetNbWorkers(threads); err != nil {
			_ = z.Close()
			return nil, fmt.Errorf("zstd with %d threads: %w", threads, err)
		}
	}
	return z, nil
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
