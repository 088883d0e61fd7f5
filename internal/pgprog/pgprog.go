// Package pgprog finds PostgreSQL's programs (pg_basebackup, pg_rewind,
// pg_ctl, ...) where they are installed: an explicit directory, $PATH,
// pg_config --bindir, Debian's /usr/lib/postgresql/MAJOR/bin. It needs no
// server installation (the shipped image has client tools and pg_rewind
// but no initdb), and it picks the version a data directory or a server
// needs: pg_rewind and pg_ctl must match the data directory's major,
// pg_basebackup must be at least the server's.
package pgprog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Match says which majors of a program are acceptable.
type Match int

const (
	// Any accepts every version (the newest found wins).
	Any Match = iota
	// Exact needs the same major (pg_rewind, pg_ctl on a data directory).
	Exact
	// AtLeast needs the same major or newer (pg_basebackup, pg_dump).
	AtLeast
)

// Request names a program and the major it must serve.
type Request struct {
	Name string
	// BinDir, when set, is the only place looked at.
	BinDir string
	// Major is the server's or data directory's major version (0: any).
	Major int
	Match Match
}

// Program is a found program.
type Program struct {
	Path  string
	Major int
}

// Version runs `path --version` and returns its major.
func Version(ctx context.Context, path string) (int, error) {
	_, major, err := FullVersion(ctx, path)
	return major, err
}

// Find returns the program r asks for. Without BinDir it looks, in order,
// at Debian's /usr/lib/postgresql/MAJOR/bin for the wanted major, $PATH,
// pg_config --bindir and every /usr/lib/postgresql/*/bin (newest first),
// and takes the first whose version fits.
func Find(ctx context.Context, r Request) (*Program, error) {
	var candidates []string
	if r.BinDir != "" {
		candidates = []string{filepath.Join(r.BinDir, r.Name)}
	} else {
		if r.Major > 0 {
			candidates = append(candidates, filepath.Join("/usr/lib/postgresql", strconv.Itoa(r.Major), "bin", r.Name))
		}
		if p, err := exec.LookPath(r.Name); err == nil {
			candidates = append(candidates, p)
		}
		if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
			candidates = append(candidates, filepath.Join(strings.TrimSpace(string(out)), r.Name))
		}
		debian, _ := filepath.Glob(filepath.Join("/usr/lib/postgresql/*/bin", r.Name))
		sort.Slice(debian, func(i, j int) bool { return debianMajor(debian[i]) > debianMajor(debian[j]) })
		candidates = append(candidates, debian...)
	}
	var seen []string
	for _, c := range candidates {
		if st, err := os.Stat(c); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			continue
		}
		major, err := Version(ctx, c)
		if err != nil {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s (%d)", c, major))
		if fits(r, major) {
			return &Program{Path: c, Major: major}, nil
		}
	}
	return nil, notFound(r, seen)
}

func fits(r Request, major int) bool {
	switch {
	case r.Major == 0 || r.Match == Any:
		return true
	case r.Match == Exact:
		return major == r.Major
	default:
		return major >= r.Major
	}
}

func notFound(r Request, seen []string) error {
	want := ""
	switch {
	case r.Major > 0 && r.Match == Exact:
		want = fmt.Sprintf(" of PostgreSQL %d", r.Major)
	case r.Major > 0 && r.Match == AtLeast:
		want = fmt.Sprintf(" of PostgreSQL %d or newer", r.Major)
	}
	where := "on PATH, from pg_config or under /usr/lib/postgresql"
	if r.BinDir != "" {
		where = "in " + r.BinDir
	}
	msg := fmt.Sprintf("no %s%s %s", r.Name, want, where)
	if len(seen) > 0 {
		msg += " (found " + strings.Join(seen, ", ") + ")"
	}
	return errors.New(msg + ": install the matching PostgreSQL package or pass --pg-bin")
}

func debianMajor(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// DataDirMajor reads a data directory's PG_VERSION.
func DataDirMajor(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return 0, fmt.Errorf("%s is not a PostgreSQL data directory: %w", dir, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s/PG_VERSION: %q is not a version", dir, strings.TrimSpace(string(b)))
	}
	return v, nil
}

// Credential is who runs a server program on dir. PostgreSQL refuses to
// run as root, so root runs them as the directory's owner when that is not
// root, else as the "postgres" OS user; any other user runs them as itself
// (nil).
func Credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if st, err := os.Stat(dir); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
			return &syscall.Credential{Uid: sys.Uid, Gid: sys.Gid}, nil
		}
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running PostgreSQL's programs as root needs a 'postgres' OS user (or a data directory owned by the server's user): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
