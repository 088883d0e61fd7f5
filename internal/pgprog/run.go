package pgprog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spiredb/spiredb/internal/dsn"
)

// Command prepares a run of program path: killed when ctx ends and when
// this process dies (Pdeathsig), with env (nil: this process's), as cred's
// user when cred is set (then in / so that the user can read its working
// directory), stderr to out.
func Command(ctx context.Context, path string, env []string, cred *syscall.Credential, out *Output, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if cred != nil {
		cmd.Dir = "/"
	}
	if out != nil {
		cmd.Stderr = out
	}
	return cmd
}

var progressRE = regexp.MustCompile(`(\d+)/(\d+) kB`)

// Output reads a program's stderr. Each line goes to the logger, redacted,
// at Level; the last five are kept for the error message (Tail). Progress
// lines of pg_basebackup -P and pg_rewind --progress ("123/456 kB (27%)",
// separated by \r) go to Progress instead, and Done keeps the bytes last
// reported.
type Output struct {
	Logger   *slog.Logger
	Program  string
	Level    slog.Level
	Progress func(done, total int64)

	mu   sync.Mutex
	last []string
	buf  bytes.Buffer
	done int64
}

// NewOutput is an Output that logs at Warn: pg_dump and pg_restore write
// to stderr only what went wrong or is worth a look.
func NewOutput(logger *slog.Logger, program string) *Output {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Output{Logger: logger, Program: program, Level: slog.LevelWarn}
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	for {
		data := o.buf.Bytes()
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break // an incomplete line: kept for later
		}
		line := strings.TrimSpace(string(data[:i]))
		o.buf.Next(i + 1)
		o.line(line)
	}
	return len(p), nil
}

func (o *Output) line(line string) {
	if line == "" {
		return
	}
	if m := progressRE.FindStringSubmatch(line); m != nil {
		d, _ := strconv.ParseInt(m[1], 10, 64)
		t, _ := strconv.ParseInt(m[2], 10, 64)
		o.done = d << 10
		if o.Progress != nil {
			o.Progress(d<<10, t<<10)
		}
		return
	}
	line = dsn.RedactText(line)
	o.logger().Log(context.Background(), o.Level, line, "program", o.Program)
	o.last = append(o.last, line)
	if len(o.last) > 5 {
		o.last = o.last[1:]
	}
}

func (o *Output) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Tail returns the last lines the program wrote, redacted, "; "-joined.
func (o *Output) Tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	lines := append([]string(nil), o.last...)
	if rest := strings.TrimSpace(o.buf.String()); rest != "" {
		lines = append(lines, dsn.RedactText(rest))
	}
	return strings.Join(lines, "; ")
}

// Done is the progress the program last reported, in bytes.
func (o *Output) Done() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done
}

var fullVersionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// ParseVersion reads "pg_dump (PostgreSQL) 15.18 (Debian …)": the version
// ("15.18") and its major (15).
func ParseVersion(s string) (string, int, error) {
	m := fullVersionRE.FindStringSubmatch(s)
	if m == nil {
		return "", 0, fmt.Errorf("no PostgreSQL version in %q", strings.TrimSpace(s))
	}
	major, err := strconv.Atoi(m[1])
	if err != nil {
		return "", 0, err
	}
	full := m[1]
	if m[2] != "" {
		full += "." + m[2]
	}
	return full, major, nil
}

// FullVersion runs `path --version` and returns its version and major.
func FullVersion(ctx context.Context, path string) (string, int, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", 0, fmt.Errorf("running %s --version: %w", path, err)
	}
	full, major, err := ParseVersion(string(out))
	if err != nil {
		return "", 0, fmt.Errorf("%s --version: %w", path, err)
	}
	return full, major, nil
}

// PgCtl runs pg_ctl (start, stop, promote …) as cred's user, when set, and
// waits for it. It is not killed with this process: a server it starts
// outlives spiredb, as a server should. The error carries its output.
func PgCtl(ctx context.Context, path string, cred *syscall.Credential, args ...string) error {
	cmd := exec.CommandContext(ctx, path, args...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		what := "pg_ctl"
		if len(args) > 0 {
			what += " " + args[len(args)-1]
		}
		return fmt.Errorf("%s: %w: %s", what, err, dsn.RedactText(strings.TrimSpace(string(out))))
	}
	return nil
}
