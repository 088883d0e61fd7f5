package pgarchive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Table names a table by schema and name.
type Table struct {
	Schema, Name string
}

// ErrCompressed says the archive's data is compressed by pg_dump (-Z > 0):
// its rows cannot be counted as it streams.
var ErrCompressed = errors.New("the archive's data is compressed by pg_dump")

// Scanner reads an archive while it is written elsewhere — pg_dump's
// output on its way to the store, a dump on its way to a temporary file —
// to learn each table's rows and where each data block starts, without
// reading it a second time. A table's data is COPY text, one row per line
// (newlines inside values are escaped), so its rows are its newlines.
//
// Write never fails and never blocks for long: an archive that cannot be
// parsed is read to its end and reported by Close.
type Scanner struct {
	pw     *io.PipeWriter
	done   chan struct{}
	layout *layout
	err    error
}

// NewScanner starts a scanner; Close ends it.
func NewScanner() *Scanner {
	pr, pw := io.Pipe()
	s := &Scanner{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.layout, s.err = scan(pr, false)
		_, _ = io.Copy(io.Discard, pr) // what follows a failure, or nothing
	}()
	return s
}

// Write passes p to the scanner.
func (s *Scanner) Write(p []byte) (int, error) {
	_, _ = s.pw.Write(p)
	return len(p), nil
}

// Close ends the archive and says whether it parsed to its end.
func (s *Scanner) Close() error {
	_ = s.pw.Close()
	<-s.done
	return s.err
}

// Rows returns, after Close, the rows of every table whose data the
// archive holds, or why they could not be counted (ErrCompressed, a format
// it does not know, an archive cut short).
func (s *Scanner) Rows() (map[Table]int64, error) {
	if err := s.Close(); err != nil {
		return nil, err
	}
	if s.layout.rows == nil {
		return nil, ErrCompressed
	}
	return s.layout.rows, nil
}

// SetDataOffsets writes, after Close, into f — the bytes written to the
// scanner — the data offsets pg_dump could not record (see the package
// function of that name).
func (s *Scanner) SetDataOffsets(f io.WriterAt) (Result, error) {
	if err := s.Close(); err != nil {
		return Result{}, err
	}
	return s.layout.setOffsets(f)
}

// copyEnd ends every table's data: pg_dump writes COPY's end marker and
// two blank lines after the rows.
const copyEnd = "\\.\n\n\n"

// countLines passes a data block's chunks and returns the rows: the
// newlines before the end marker, which must end the block.
func (r *reader) countLines(h header) (int64, error) {
	var lines int64
	var tail [len(copyEnd)]byte // the block's last bytes
	for {
		n, err := r.int(h)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		if n < 0 {
			return 0, fmt.Errorf("chunk of %d bytes at %d", n, r.pos)
		}
		for n > 0 {
			if r.br.Buffered() == 0 {
				if _, err := r.br.Peek(1); err != nil {
					return 0, unexpected(err)
				}
			}
			p, _ := r.br.Peek(int(min(n, int64(r.br.Buffered()))))
			lines += int64(bytes.Count(p, []byte{'\n'}))
			k := copy(tail[:], tail[min(len(p), len(tail)):]) // what p leaves of it
			copy(tail[k:], p[max(0, len(p)-len(tail)):])
			d, _ := r.br.Discard(len(p))
			r.pos += int64(d)
			n -= int64(d)
		}
	}
	if string(tail[:]) != copyEnd {
		return 0, fmt.Errorf("the data does not end with COPY's end marker (%q)", tail)
	}
	return lines - int64(strings.Count(copyEnd, "\n")), nil
}
