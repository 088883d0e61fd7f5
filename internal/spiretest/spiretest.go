// Package spiretest runs a real spire-server (v1.13.3, built from its Go
// module by scripts/setup.sh) on a database of the test harness, and drives
// it through its own CLI: create entries, count them, dump them as
// normalized JSON for comparisons.
package spiretest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// Version is the spire-server release the harness builds.
const Version = "v1.13.3"

// TrustDomain every harness server serves.
const TrustDomain = spirefixture.TrustDomain

// Options configure a server.
type Options struct {
	// ConnectionString is the DataStore "sql" connection_string
	// (key=value or URL, as lib/pq takes it).
	ConnectionString string
	// ROConnectionString, when set, is ro_connection_string.
	ROConnectionString string
	// DisableMigration sets disable_migration = true.
	DisableMigration bool
	// DiskKeys keeps the CA keys on disk (KeyManager "disk") so a restarted
	// server keeps its CA; default is KeyManager "memory".
	DiskKeys bool
	// Dir, when set, is reused (restart with the same keys); else a new dir.
	Dir string
	// DataStoreLines are extra lines of the sql DataStore's plugin_data
	// (e.g. "max_open_conns = 20").
	DataStoreLines []string
	// ServerLines are extra lines of the server block (e.g. `agent_ttl =
	// "30s"`).
	ServerLines []string
	// Experimental are lines of the server's experimental block, e.g.
	// "events_based_cache = true", "prune_events_older_than = \"10s\"".
	Experimental []string
}

// Server is a running spire-server.
type Server struct {
	Bin    string
	Dir    string
	Socket string
	Port   int

	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// Start writes a server.conf and starts spire-server, waiting until its
// health check passes.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	bin, err := harness.Binary("spire-server")
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		root := pgcluster.DefaultRoot()
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if dir, err = os.MkdirTemp(root, "spire-"); err != nil {
			return nil, err
		}
	}
	// SPIRE wants ports outside the ephemeral range 32768-60999.
	port, err := pgcluster.FreePort(20000, 32000)
	if err != nil {
		return nil, err
	}
	s := &Server{Bin: bin, Dir: dir, Socket: filepath.Join(dir, "api.sock"), Port: port, logPath: filepath.Join(dir, "server.log")}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "server.conf"), []byte(s.config(opts)), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	_ = os.Remove(s.Socket)
	cmd := exec.Command(bin, "run", "-config", filepath.Join(dir, "server.conf"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting spire-server: %w", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }()
	if err := pgcluster.WriteOwner(dir); err != nil {
		return nil, err
	}
	if err := pgcluster.RecordChild(dir, "spire-server", cmd.Process.Pid); err != nil {
		return nil, err
	}
	if err := s.waitHealthy(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) config(o Options) string {
	km := `KeyManager "memory" { plugin_data {} }`
	if o.DiskKeys {
		km = fmt.Sprintf(`KeyManager "disk" { plugin_data { keys_path = %q } }`, filepath.Join(s.Dir, "keys.json"))
	}
	ds := fmt.Sprintf("database_type = \"postgres\"\n      connection_string = %q", o.ConnectionString)
	if o.ROConnectionString != "" {
		ds += fmt.Sprintf("\n      ro_connection_string = %q", o.ROConnectionString)
	}
	if o.DisableMigration {
		ds += "\n      disable_migration = true"
	}
	for _, l := range o.DataStoreLines {
		ds += "\n      " + l
	}
	serverLines := ""
	for _, l := range o.ServerLines {
		serverLines += "\n  " + l
	}
	experimental := ""
	if len(o.Experimental) > 0 {
		experimental = "\n  experimental {\n    " + strings.Join(o.Experimental, "\n    ") + "\n  }"
	}
	return fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "WARN"%s%s
}

plugins {
  DataStore "sql" {
    plugin_data {
      %s
    }
  }
  %s
  NodeAttestor "join_token" { plugin_data {} }
}
`, s.Port, s.Socket, TrustDomain, filepath.Join(s.Dir, "data"), serverLines, experimental, ds, km)
}

func (s *Server) waitHealthy(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("spire-server exited during start-up: %s", s.LogTail(15))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if _, err := os.Stat(s.Socket); err == nil {
			if _, last = s.cli(ctx, "healthcheck", "-shallow"); last == nil {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("spire-server not healthy after 90s: %w: %s", last, s.LogTail(15))
}

// Stop ends the server and removes its directory.
func (s *Server) Stop() {
	s.Halt()
	_ = os.RemoveAll(s.Dir)
}

// Halt ends the server but keeps its directory (for a restart on it).
func (s *Server) Halt() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CLI runs `spire-server SUBCOMMAND... -socketPath S FLAGS...` against this
// server and returns its standard output.
func (s *Server) CLI(ctx context.Context, args ...string) ([]byte, error) { return s.cli(ctx, args...) }

// cli runs `spire-server SUBCOMMAND... -socketPath S ARGS`.
func (s *Server) cli(ctx context.Context, args ...string) ([]byte, error) {
	// the subcommand words come first, then flags
	var words, flags []string
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			flags = args[i:]
			break
		}
		words = append(words, a)
	}
	full := append(append(words, "-socketPath", s.Socket), flags...)
	cmd := exec.CommandContext(ctx, s.Bin, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("spire-server %s: %w: %s %s", strings.Join(words, " "), err, strings.TrimSpace(stderr.String()), strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Entry is spirefixture.Entry: one generator serves the API path and the
// COPY path.
type Entry = spirefixture.Entry

// CreateEntries creates entries through the server's API, 500 per call as
// an operator's script would.
func (s *Server) CreateEntries(ctx context.Context, entries []Entry) error {
	for start := 0; start < len(entries); start += 500 {
		batch := entries[start:min(start+500, len(entries))]
		b, err := json.Marshal(map[string]any{"entries": batch})
		if err != nil {
			return err
		}
		f := filepath.Join(s.Dir, "batch.json")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return err
		}
		out, err := s.cli(ctx, "entry", "create", "-data", f)
		if err != nil {
			return err
		}
		if bytes.Contains(out, []byte("FAILED")) || bytes.Contains(out, []byte("Failed to create")) {
			return fmt.Errorf("entry create: %s", firstLines(string(out), 5))
		}
	}
	return nil
}

var countRE = regexp.MustCompile(`(\d+) registration entr`)

// Count returns `spire-server entry count`.
func (s *Server) Count(ctx context.Context) (int, error) {
	out, err := s.cli(ctx, "entry", "count")
	if err != nil {
		return 0, err
	}
	m := countRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("unexpected entry count output: %q", out)
	}
	return strconv.Atoi(string(m[1]))
}

// Show returns `spire-server entry show -output json` normalized for
// comparison: entries sorted by id, created_at dropped, canonical JSON.
func (s *Server) Show(ctx context.Context, args ...string) ([]byte, error) {
	out, err := s.cli(ctx, append([]string{"entry", "show", "-output", "json"}, args...)...)
	if err != nil {
		return nil, err
	}
	return NormalizeShow(out)
}

// NormalizeShow canonicalizes `entry show -output json` output.
func NormalizeShow(raw []byte) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parsing entry show output: %w", err)
	}
	list, _ := doc["entries"].([]any)
	entries := make([]map[string]any, 0, len(list))
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, errors.New("entry show: entry is not an object")
		}
		delete(m, "created_at")
		entries = append(entries, m)
	}
	sort.Slice(entries, func(i, j int) bool { return fmt.Sprint(entries[i]["id"]) < fmt.Sprint(entries[j]["id"]) })
	return json.MarshalIndent(entries, "", " ")
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
