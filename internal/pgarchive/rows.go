package pgarchive

import (
	"bufio"
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

// RowCounter counts the rows of each table's data in a custom-format
// archive while it is written elsewhere: pg_dump -Fc -Z0's output goes
// through Write. A table's data is COPY text, one row per line (newlines
// inside values are escaped), so its rows are its newlines. The server
// does not count them a second time.
//
// Write never fails and never blocks for long: an archive that cannot be
// parsed is read to its end and reported by Close.
type RowCounter struct {
	pw   *io.PipeWriter
	done chan struct{}
	rows map[Table]int64
	err  error
}

// NewRowCounter starts a counter; Close ends it.
func NewRowCounter() *RowCounter {
	pr, pw := io.Pipe()
	c := &RowCounter{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.rows, c.err = countRows(pr)
		_, _ = io.Copy(io.Discard, pr) // what follows a failure, or nothing
	}()
	return c
}

// Write passes p to the counter.
func (c *RowCounter) Write(p []byte) (int, error) {
	_, _ = c.pw.Write(p)
	return len(p), nil
}

// Close ends the archive and returns the rows of every table whose data it
// holds, or why they could not be counted (ErrCompressed, a format it does
// not know, an archive cut short).
func (c *RowCounter) Close() (map[Table]int64, error) {
	_ = c.pw.Close()
	<-c.done
	return c.rows, c.err
}

func countRows(src io.Reader) (map[Table]int64, error) {
	r := &reader{br: bufio.NewReaderSize(src, 256<<10)}
	h, err := r.header()
	if err != nil {
		return nil, err
	}
	if h.compressed {
		return nil, ErrCompressed
	}
	toc, err := r.toc(h)
	if err != nil {
		return nil, fmt.Errorf("reading the archive's table of contents: %w", err)
	}
	byID := make(map[int64]*entry, len(toc))
	for i := range toc {
		byID[toc[i].dumpID] = &toc[i]
	}
	rows := map[Table]int64{}
	for {
		typ, err := r.byte()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		if err != nil {
			return nil, err
		}
		id, err := r.int(h)
		if err != nil {
			return nil, err
		}
		e, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("data block of entry %d, which is not in the table of contents", id)
		}
		switch {
		case typ == blockData && e.desc == "TABLE DATA":
			t := Table{Schema: e.namespace, Name: e.tag}
			if _, dup := rows[t]; dup {
				return nil, fmt.Errorf("table %s.%s has a second data block", t.Schema, t.Name)
			}
			n, err := r.countLines(h)
			if err != nil {
				return nil, fmt.Errorf("data of %s.%s: %w", t.Schema, t.Name, unexpected(err))
			}
			rows[t] = n
		case typ == blockData:
			err = r.skipChunks(h)
		case typ == blockBlobs:
			err = r.skipBlobs(h)
		default:
			return nil, fmt.Errorf("data block of entry %d has unknown type %d", id, typ)
		}
		if err != nil {
			return nil, fmt.Errorf("data block of entry %d: %w", id, unexpected(err))
		}
	}
}

// copyEnd ends every table's data: pg_dump writes COPY's end marker and
// two blank lines after the rows.
const copyEnd = "\\.\n\n\n"

// countLines passes a data block's chunks and returns the rows: the
// newlines before the end marker, which must end the block.
func (r *reader) countLines(h header) (int64, error) {
	var lines int64
	var tail []byte // the block's last bytes, up to len(copyEnd)
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
			tail = append(tail, p[max(0, len(p)-len(copyEnd)):]...)
			tail = tail[max(0, len(tail)-len(copyEnd)):]
			d, _ := r.br.Discard(len(p))
			r.pos += int64(d)
			n -= int64(d)
		}
	}
	if string(tail) != copyEnd {
		return 0, fmt.Errorf("the data does not end with COPY's end marker (%q)", tail)
	}
	return lines - int64(strings.Count(copyEnd, "\n")), nil
}
