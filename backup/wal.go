package backup

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// An archived WAL object is one header line, then the file compressed with
// zstd:
//
//	SPIREDB-WAL 1 sha256=HEX size=N mtime=RFC3339NANO
//
// The sha256 and size are the uncompressed file's: fetch checks both before
// it hands a file to PostgreSQL. mtime is the file's modification time when
// it was pushed: every record in a complete segment was written by then, so
// it bounds the newest point in time the archive can restore.
const walMagic = "SPIREDB-WAL 1"

// ErrWALConflict is returned by PushWAL when the store already holds a
// different file under the same name: two clusters archive into one store,
// or a restored cluster archives on a timeline the store already has.
var ErrWALConflict = errors.New("the store already holds a different file under this name")

// WALHeader is what an archived WAL object says about its file.
type WALHeader struct {
	SHA256 string
	Size   int64
	MTime  time.Time
	// Encrypted: the compressed file is an age file, encrypted to the
	// recipients of wal push --recipient.
	Encrypted bool
}

func (h WALHeader) line() string {
	enc := ""
	if h.Encrypted {
		enc = " enc=age"
	}
	return fmt.Sprintf("%s sha256=%s size=%d mtime=%s%s\n", walMagic, h.SHA256, h.Size, h.MTime.UTC().Format(time.RFC3339Nano), enc)
}

func parseWALHeader(line string) (WALHeader, error) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), walMagic+" ")
	if !ok {
		return WALHeader{}, errors.New("not an archived WAL file written by spiredb")
	}
	var h WALHeader
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "sha256":
			h.SHA256 = v
		case "size":
			h.Size, _ = strconv.ParseInt(v, 10, 64)
		case "mtime":
			h.MTime, _ = time.Parse(time.RFC3339Nano, v)
		case "enc":
			if v != "age" {
				return WALHeader{}, fmt.Errorf("encrypted with %q, which this spiredb does not read", v)
			}
			h.Encrypted = true
		}
	}
	if len(h.SHA256) != 64 || h.Size <= 0 {
		return WALHeader{}, errors.New("damaged header")
	}
	return h, nil
}

// readWALHeader opens name in the store and reads its header; the returned
// reader is positioned at the compressed data.
func readWALHeader(ctx context.Context, s Store, name string) (WALHeader, *bufio.Reader, io.Closer, error) {
	rc, err := s.Get(ctx, walKey(name))
	if err != nil {
		return WALHeader{}, nil, nil, err
	}
	br := bufio.NewReaderSize(rc, 64<<10)
	line, err := br.ReadString('\n')
	if err != nil {
		_ = rc.Close()
		return WALHeader{}, nil, nil, fmt.Errorf("archived WAL %s: reading header: %w", name, err)
	}
	h, err := parseWALHeader(line)
	if err != nil {
		_ = rc.Close()
		return WALHeader{}, nil, nil, fmt.Errorf("archived WAL %s: %w", name, err)
	}
	return h, br, rc, nil
}

// PushResult is what PushWAL did.
type PushResult struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Stored is the compressed size; 0 when the file was already archived.
	Stored int64 `json:"stored"`
	// AlreadyArchived: an identical file was in the store (a retried
	// archive_command); nothing was written.
	AlreadyArchived bool `json:"already_archived"`
}

// PushWAL archives the file at path (archive_command's %p) under its base
// name. Pushing a file the store already holds with the same content
// succeeds without writing; a different content under the same name is
// ErrWALConflict, and nothing is overwritten.
//
// With keys.Recipients the compressed file is encrypted to them (age); the
// header keeps the plaintext's size and sha256 for the checks.
func PushWAL(ctx context.Context, s Store, path string, keys Keys, logger *slog.Logger) (*PushResult, error) {
	logger = orDiscard(logger)
	name := filepath.Base(path)
	if _, ok := ParseWALName(name); !ok {
		return nil, fmt.Errorf("%s is not a WAL file name PostgreSQL archives: pass archive_command's %%p", name)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	hash := sha256.New()
	size, err := io.Copy(hash, f)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if size == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	h := WALHeader{SHA256: hex.EncodeToString(hash.Sum(nil)), Size: size, MTime: st.ModTime(), Encrypted: len(keys.Recipients) > 0}
	res := &PushResult{Name: name, Size: size}

	old, _, closer, err := readWALHeader(ctx, s, name)
	switch {
	case err == nil:
		closer.Close()
		if old.SHA256 == h.SHA256 && old.Size == h.Size {
			res.AlreadyArchived = true
			logger.Info("WAL file already archived with the same content", "name", name)
			return res, nil
		}
		return nil, fmt.Errorf("archiving %s: %w (stored sha256 %s, this file %s): is another cluster archiving into %s?", name, ErrWALConflict, old.SHA256[:12], h.SHA256[:12], s)
	case !errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("archiving %s: %w", name, err)
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(compressWAL(pw, h, f, keys.Recipients))
	}()
	// the object is at most the file plus zstd's framing: one part
	store := s
	if sz, ok := s.(sizer); ok {
		store = sz.ForSize(size)
	}
	n, err := store.Put(ctx, walKey(name), pr)
	_ = pr.CloseWithError(err)
	if err != nil {
		return nil, fmt.Errorf("archiving %s: %w", name, err)
	}
	res.Stored = n
	logger.Info("WAL file archived", "name", name, "bytes", size, "stored", n)
	return res, nil
}

func compressWAL(w io.Writer, h WALHeader, r io.Reader, recipients []age.Recipient) error {
	if _, err := io.WriteString(w, h.line()); err != nil {
		return err
	}
	// WAL compresses well at level 1, in this thread (levelWAL)
	var sealed io.WriteCloser = nopWriteCloser{w}
	if h.Encrypted {
		aw, err := age.Encrypt(w, recipients...)
		if err != nil {
			return fmt.Errorf("encrypting: %w", err)
		}
		sealed = aw
	}
	enc, err := zstdWriter(sealed, levelWAL, threadsWAL)
	if err != nil {
		return err
	}
	if _, err := io.Copy(enc, r); err != nil {
		_ = enc.Close()
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	return sealed.Close()
}

// FetchOptions configure FetchWAL.
type FetchOptions struct {
	Store Store
	// Name is restore_command's %f, Dest its %p.
	Name, Dest string
	// Prefetch is how many following segments to download in parallel
	// with Name into SpoolDir (default 8; 0 after defaults: none, pass -1).
	Prefetch int
	// SpoolDir holds prefetched segments (default: Dest's directory's
	// .spiredb-prefetch, inside pg_wal).
	SpoolDir string
	// Keys.Identities open encrypted files.
	Keys   Keys
	Logger *slog.Logger
}

// FetchWAL restores one archived file to Dest (restore_command). A file
// the store does not hold is ErrNotFound: PostgreSQL asks for files that
// do not exist as a matter of course (the next timeline's history, the
// segment after the newest). A file whose content does not match its
// header's sha256 is an error and never reaches Dest.
//
// With Prefetch, the segments after Name are downloaded in parallel with it
// into SpoolDir, checked, and handed over by the next calls without a
// download.
func FetchWAL(ctx context.Context, o FetchOptions) error {
	logger := orDiscard(o.Logger)
	w, ok := ParseWALName(o.Name)
	if !ok {
		return fmt.Errorf("%s is not a WAL file name: pass restore_command's %%f", o.Name)
	}
	if o.Dest == "" {
		return errors.New("no destination: pass restore_command's %p")
	}
	if o.Prefetch == 0 {
		o.Prefetch = 8
	}
	if o.SpoolDir == "" {
		o.SpoolDir = filepath.Join(filepath.Dir(o.Dest), ".spiredb-prefetch")
	}
	spooled := filepath.Join(o.SpoolDir, o.Name+spoolSuffix)
	if _, err := os.Stat(spooled); err == nil {
		// checked when it was spooled: hand it over
		if err := os.Rename(spooled, o.Dest); err == nil {
			logger.Info("WAL file restored from the prefetch spool", "name", o.Name)
			cleanSpool(o.SpoolDir, o.Name)
			return nil
		}
	}
	var wg sync.WaitGroup
	if w.Kind == WALSegment && o.Prefetch > 0 {
		if err := os.MkdirAll(o.SpoolDir, 0o700); err == nil {
			cleanSpool(o.SpoolDir, o.Name)
			next := w.SegNo(defaultSegSize)
			for i := range o.Prefetch {
				name := SegmentName(w.TLI, next+uint64(i)+1, defaultSegSize)
				to := filepath.Join(o.SpoolDir, name+spoolSuffix)
				if _, err := os.Stat(to); err == nil {
					continue
				}
				wg.Go(func() {
					// a missing next segment is the archive's end: normal
					if err := restoreWAL(ctx, o.Store, name, to, o.Keys); err != nil && !errors.Is(err, ErrNotFound) {
						logger.Warn("prefetching a WAL file failed; it is fetched again when needed", "name", name, "err", err)
					}
				})
			}
		}
	}
	err := restoreWAL(ctx, o.Store, o.Name, o.Dest, o.Keys)
	wg.Wait()
	if err != nil {
		return err
	}
	logger.Info("WAL file restored", "name", o.Name)
	return nil
}

// spoolSuffix ends the name of every file fetch spools: the spool may be a
// directory that holds other files (--spool-dir), WAL-named ones included,
// and fetch hands over, and removes, only what it wrote itself.
const spoolSuffix = ".spiredb-spooled"

// spooledWAL is the WAL file name a spool entry holds, and whether it is
// an unfinished download; ok is false for a file fetch did not write.
func spooledWAL(entry string) (name string, partial, ok bool) {
	if rest, tmp := strings.CutPrefix(entry, "."); tmp {
		if entry, _, partial = strings.Cut(rest, partialMarker); !partial {
			return "", false, false
		}
	}
	name, ok = strings.CutSuffix(entry, spoolSuffix)
	if _, wal := ParseWALName(name); !ok || !wal {
		return "", false, false
	}
	return name, partial, true
}

// cleanSpool removes the files fetch spooled that sort before name
// (recovery has passed them, or moved to a later timeline) and its
// unfinished downloads (restore_command runs one at a time, and each
// waits for its prefetches). Nothing else in dir is touched.
func cleanSpool(dir, name string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		wal, partial, ok := spooledWAL(e.Name())
		if ok && e.Type().IsRegular() && (partial || wal < name) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// restoreWAL downloads name into dest: decompressed to a temporary file
// next to dest, checked against the header, synced, renamed into place.
func restoreWAL(ctx context.Context, s Store, name, dest string, keys Keys) error {
	h, br, closer, err := readWALHeader(ctx, s, name)
	if err != nil {
		return err
	}
	defer closer.Close()
	var body io.Reader = br
	if h.Encrypted {
		if body, err = decryptWith(br, keys.Identities); err != nil {
			return fmt.Errorf("archived WAL %s is encrypted: %w", name, err)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+partialMarker)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	dec, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
	if err != nil {
		tmp.Close()
		return err
	}
	defer dec.Close()
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, hash), io.LimitReader(ctxReader{ctx, dec}, h.Size+1))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restoring WAL %s: %w", name, err)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); n != h.Size || got != h.SHA256 {
		return fmt.Errorf("archived WAL %s is damaged: %d bytes with sha256 %s, the header says %d bytes with %s", name, n, got[:12], h.Size, h.SHA256[:12])
	}
	return os.Rename(tmp.Name(), dest)
}

// WALFile is an archived file as the store lists it.
type WALFile struct {
	WALName
	Stored   int64
	Modified time.Time
}

// ListWAL returns the archived WAL files, sorted by name. Objects under
// wal/ with other names are returned in foreign.
func ListWAL(ctx context.Context, s Store) (files []WALFile, foreign []string, err error) {
	objs, err := s.List(ctx, walPrefix)
	if err != nil {
		return nil, nil, err
	}
	for _, o := range objs {
		name := strings.TrimPrefix(o.Key, walPrefix)
		w, ok := ParseWALName(name)
		if !ok {
			foreign = append(foreign, o.Key)
			continue
		}
		files = append(files, WALFile{WALName: w, Stored: o.Size, Modified: o.Modified})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return files, foreign, nil
}

// ArchivedTimelines lists the timelines whose history file the store's WAL
// archive holds, ascending. A history file is archived by a server the
// moment it is promoted: one newer than a standby's timeline says another
// server of the cluster was promoted already.
func ArchivedTimelines(ctx context.Context, s Store) ([]uint32, error) {
	files, _, err := ListWAL(ctx, s)
	if err != nil {
		return nil, err
	}
	return TimelinesOf(files), nil
}

// TimelinesOf is ArchivedTimelines over a listing already taken (ListWAL).
func TimelinesOf(files []WALFile) []uint32 {
	var out []uint32
	for _, f := range files {
		if f.Kind == WALTimelineHistory {
			out = append(out, f.TLI)
		}
	}
	slices.Sort(out)
	return out
}
