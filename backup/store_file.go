package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// partialMarker names in-progress files of the file store.
const partialMarker = ".partial-"

// FileStore keeps backups in a local directory. Objects are written to a
// partial file, synced and renamed into place, so a killed writer never
// leaves an object that looks complete.
type FileStore struct{ root string }

// NewFileStore returns a store rooted at dir (created when missing).
func NewFileStore(dir string) (*FileStore, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file store directory must be absolute: %s", dir)
	}
	return &FileStore{root: filepath.Clean(dir)}, nil
}

func (s *FileStore) String() string { return "file://" + s.root }

func (s *FileStore) path(key string) (string, error) {
	clean := path.Clean("/" + key)
	if clean == "/" || strings.Contains(key, "\x00") {
		return "", fmt.Errorf("invalid key %q", key)
	}
	return filepath.Join(s.root, filepath.FromSlash(clean)), nil
}

// Check makes sure the directory, when it exists, is a readable directory.
// A missing one is fine: it holds no backups, and the first Put creates it
// (read-only commands must not create it). Reading needs nothing more:
// commands that write call CheckWrite too.
func (s *FileStore) Check(_ context.Context) error {
	st, err := os.Stat(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &StoreError{Store: s.String(), Err: err}
	}
	if !st.IsDir() {
		return &StoreError{Store: s.String(), Err: errors.New("not a directory")}
	}
	d, err := os.Open(s.root)
	if err != nil {
		return &StoreError{Store: s.String(), Err: fmt.Errorf("not readable: %w", err)}
	}
	_ = d.Close()
	return nil
}

// CheckWrite makes sure a backup can be written: the directory (created
// when missing, 0700) accepts a new file.
func (s *FileStore) CheckWrite(ctx context.Context) error {
	if err := s.Check(ctx); err != nil {
		return err
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return &StoreError{Store: s.String(), Err: fmt.Errorf("not writable: %w", err)}
	}
	f, err := os.CreateTemp(s.root, ".check-")
	if err != nil {
		return &StoreError{Store: s.String(), Err: fmt.Errorf("not writable: %w", err)}
	}
	_ = f.Close()
	_ = os.Remove(f.Name())
	return nil
}

// Put writes r to key atomically.
func (s *FileStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	p, err := s.path(key)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return 0, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tmp := p + partialMarker + hex.EncodeToString(b)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return n, fmt.Errorf("writing %s: %w", key, err)
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return n, nil
}

// Get opens key.
func (s *FileStore) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return f, err
}

// walk calls fn with the key and info of every file in the store (a
// directory or file removed meanwhile is skipped).
func (s *FileStore) walk(fn func(key string, info fs.FileInfo)) error {
	return filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(s.root, p)
		fn(filepath.ToSlash(rel), info)
		return nil
	})
}

// List returns the objects under prefix, skipping partial files.
func (s *FileStore) List(_ context.Context, prefix string) ([]Object, error) {
	var out []Object
	err := s.walk(func(key string, info fs.FileInfo) {
		name := path.Base(key)
		if strings.Contains(name, partialMarker) || strings.HasPrefix(name, ".check-") || !strings.HasPrefix(key, prefix) {
			return
		}
		out = append(out, Object{Key: key, Size: info.Size(), Modified: info.ModTime()})
	})
	return out, err
}

// Delete removes keys and then empty parent directories.
func (s *FileStore) Delete(_ context.Context, keys ...string) error {
	for _, k := range keys {
		p, err := s.path(k)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s.removeEmptyParents(filepath.Dir(p))
	}
	return nil
}

func (s *FileStore) removeEmptyParents(dir string) {
	for dir != s.root && strings.HasPrefix(dir, s.root) {
		if os.Remove(dir) != nil {
			return
		}
		dir = filepath.Dir(dir)
	}
}

// Incomplete lists partial files left by killed writers.
func (s *FileStore) Incomplete(_ context.Context) ([]Upload, error) {
	var out []Upload
	err := s.walk(func(key string, info fs.FileInfo) {
		if base, _, ok := strings.Cut(key, partialMarker); ok {
			out = append(out, Upload{Key: base, ID: key, Initiated: info.ModTime()})
		}
	})
	return out, err
}

// Abort removes a partial file.
func (s *FileStore) Abort(_ context.Context, u Upload) error {
	p, err := s.path(u.ID)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.removeEmptyParents(filepath.Dir(p))
	return nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
