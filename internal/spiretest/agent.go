package spiretest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgcluster"
)

// Agent is a running spire-agent, attested to a Server with a join token.
type Agent struct {
	// SPIFFEID is the agent's ID: spiffe://TD/spire/agent/join_token/TOKEN.
	SPIFFEID string
	Dir      string

	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// StartAgent generates a join token on s and starts a spire-agent that
// attests with it (insecure bootstrap: the test trusts the server it
// started); it returns once the server has recorded the attested agent.
func (s *Server) StartAgent(ctx context.Context) (_ *Agent, err error) {
	bin, err := harness.Binary("spire-agent")
	if err != nil {
		return nil, err
	}
	out, err := s.cli(ctx, "token", "generate", "-ttl", "600")
	if err != nil {
		return nil, err
	}
	// "Token: UUID" (then a warning that no SPIFFE ID was given)
	var token string
	for _, line := range strings.Split(string(out), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "Token:"); ok {
			token = strings.TrimSpace(t)
		}
	}
	if token == "" || strings.ContainsAny(token, " ") {
		return nil, fmt.Errorf("unexpected token generate output %q", out)
	}
	dir, err := os.MkdirTemp(pgcluster.DefaultRoot(), "spire-agent-")
	if err != nil {
		return nil, err
	}
	a := &Agent{SPIFFEID: fmt.Sprintf("spiffe://%s/spire/agent/join_token/%s", TrustDomain, token), Dir: dir,
		logPath: filepath.Join(dir, "agent.log")}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  join_token = %q
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data {} }
}
`, filepath.Join(dir, "data"), s.Port, filepath.Join(dir, "agent.sock"), TrustDomain, token)
	if err := os.WriteFile(filepath.Join(dir, "agent.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "-config", filepath.Join(dir, "agent.conf"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting spire-agent: %w", err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.exited) }()
	if err := pgcluster.WriteOwner(dir); err != nil {
		return nil, err
	}
	if err := pgcluster.RecordChild(dir, "spire-agent", cmd.Process.Pid); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-a.exited:
			return nil, fmt.Errorf("spire-agent exited during attestation: %s", a.LogTail(15))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if out, err := s.cli(ctx, "agent", "show", "-spiffeID", a.SPIFFEID); err == nil && strings.Contains(string(out), a.SPIFFEID) {
			return a, nil
		}
	}
	return nil, fmt.Errorf("spire-agent not attested after 60s: %s", a.LogTail(15))
}

// Stop ends the agent and removes its directory.
func (a *Agent) Stop() {
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	}
	_ = os.RemoveAll(a.Dir)
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	b, _ := os.ReadFile(a.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
