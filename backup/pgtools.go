package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spiredb/spiredb/internal/dsn"
)

// Tools locates the PostgreSQL client programs (pg_dump, pg_restore).
type Tools struct {
	// BinDir holds them; empty means $PATH.
	BinDir string
}

// Path returns the path of program name.
func (t Tools) Path(name string) (string, error) {
	if t.BinDir != "" {
		p := filepath.Join(t.BinDir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s not found in %s: install the PostgreSQL client (postgresql-client) or fix --pg-bin", name, t.BinDir)
		}
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found on PATH: install the PostgreSQL client (postgresql-client) or pass --pg-bin", name)
	}
	return p, nil
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// Version runs `name --version` and returns the full version and the major.
func (t Tools) Version(ctx context.Context, name string) (string, int, error) {
	p, err := t.Path(name)
	if err != nil {
		return "", 0, err
	}
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return "", 0, fmt.Errorf("running %s --version: %w", p, err)
	}
	full, major, err := ParseToolVersion(string(out))
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", p, err)
	}
	return full, major, nil
}

// command prepares program path with args: killed with ctx and with this
// process, env as given (nil: inherit), stderr forwarded to the logger and
// kept for error messages (the returned stderrLog).
func command(ctx context.Context, path string, env []string, stderr *stderrLog, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = stderr
	return cmd
}

// ParseToolVersion reads "pg_dump (PostgreSQL) 15.18 (Debian …)".
func ParseToolVersion(s string) (string, int, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return "", 0, fmt.Errorf("unexpected version output %q", strings.TrimSpace(s))
	}
	major, _ := strconv.Atoi(m[1])
	full := m[1]
	if m[2] != "" {
		full += "." + m[2]
	}
	return full, major, nil
}

// CheckDumpVersion refuses a pg_dump older than the server: it cannot dump
// a newer server's catalog.
func CheckDumpVersion(dumpMajor, serverVersionNum int) error {
	serverMajor := serverVersionNum / 10000
	if dumpMajor < serverMajor {
		return fmt.Errorf("pg_dump %d is older than the server (PostgreSQL %d): install postgresql-client-%d and pass --pg-bin /usr/lib/postgresql/%d/bin",
			dumpMajor, serverMajor, serverMajor, serverMajor)
	}
	return nil
}

// stderrLog forwards a program's stderr to the logger line by line and
// keeps the last lines for error messages.
type stderrLog struct {
	mu     sync.Mutex
	logger *slog.Logger
	prog   string
	last   []string
	buf    bytes.Buffer
}

func newStderrLog(logger *slog.Logger, prog string) *stderrLog {
	return &stderrLog{logger: logger, prog: prog}
}

func (s *stderrLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	for {
		line, err := s.buf.ReadString('\n')
		if errors.Is(err, io.EOF) {
			s.buf.WriteString(line) // incomplete line: keep for later
			break
		}
		line = strings.TrimRight(line, "\n")
		if line == "" {
			continue
		}
		s.logger.Warn(line, "program", s.prog)
		s.last = append(s.last, line)
		if len(s.last) > 5 {
			s.last = s.last[1:]
		}
	}
	return len(p), nil
}

// Tail returns the last lines the program wrote, redacted.
func (s *stderrLog) Tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := append([]string(nil), s.last...)
	if rest := strings.TrimSpace(s.buf.String()); rest != "" {
		lines = append(lines, rest)
	}
	return dsn.RedactText(strings.Join(lines, "; "))
}
