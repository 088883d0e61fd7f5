// Package s3test runs a real S3 server for tests: versitygw (built by
// scripts/setup.sh into the cache) over a temporary directory on 127.0.0.1,
// with random access and secret keys. versitygw checks SigV4 signatures as
// AWS does, so a client that signs wrongly fails here too.
//
// One server per test package (started on first use, stopped by
// harness.Main); one fresh bucket per test.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgcluster"
)

// Region the server reports.
const Region = "us-east-1"

// Server is a running versitygw.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string

	cmd    *exec.Cmd
	exited chan struct{}
	logf   *os.File
}

var (
	mu       sync.Mutex
	shared   *Server
	startErr error
)

// Options place a server somewhere other than 127.0.0.1 (benchmarks).
type Options struct {
	// Netns runs the server inside this network namespace (ip netns exec),
	// listening on Host; the namespace must route to and from the caller.
	Netns string
	Host  string
}

// Start starts a versitygw of its own on 127.0.0.1; the caller must Stop it.
func Start(ctx context.Context) (*Server, error) { return StartWith(ctx, Options{}) }

// StartWith starts a versitygw placed by o; the caller must Stop it.
func StartWith(ctx context.Context, o Options) (_ *Server, err error) {
	bin, err := harness.Binary("versitygw")
	if err != nil {
		return nil, err
	}
	root := pgcluster.DefaultRoot()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(root, "s3-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, AccessKey: "AK" + randHex(9), SecretKey: randHex(20)}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		return nil, err
	}
	host, port := "127.0.0.1", 0
	if o.Netns != "" {
		host, port = o.Host, 9000 // a namespace of our own: the port is free
	} else if port, err = pgcluster.FreePort(0, 0); err != nil {
		return nil, err
	}
	s.Endpoint = fmt.Sprintf("http://%s:%d", host, port)
	if s.logf, err = os.Create(filepath.Join(dir, "versitygw.log")); err != nil {
		return nil, err
	}
	args := []string{"--port", fmt.Sprintf("%s:%d", host, port), "--region", Region, "--quiet", "posix", data}
	cmd := exec.Command(bin, args...)
	if o.Netns != "" {
		// ip execs versitygw in place: same pid, same parent-death signal
		cmd = exec.Command("ip", append([]string{"netns", "exec", o.Netns, bin}, args...)...)
	}
	// keys through the environment, not argv (ps would show them)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = s.logf, s.logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting versitygw: %w", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }()
	// the owner file makes CleanStale treat the dir as ours; the pid file
	// lets it stop this server if we die without stopping it
	if err := writeOwnerAndPID(dir, cmd.Process.Pid); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func writeOwnerAndPID(dir string, pid int) error {
	if err := pgcluster.WriteOwner(dir); err != nil {
		return err
	}
	return pgcluster.RecordChild(dir, "versitygw", pid)
}

func (s *Server) waitReady(ctx context.Context) error {
	addr := strings.TrimPrefix(s.Endpoint, "http://")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			b, _ := os.ReadFile(s.logf.Name())
			return fmt.Errorf("versitygw exited during start-up: %s", strings.TrimSpace(string(b)))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("versitygw did not listen within 30s")
}

// Stop ends the server and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if s.logf != nil {
		_ = s.logf.Close()
	}
	_ = os.RemoveAll(s.Dir)
}

// Client returns an S3 client for the server (path-style, static keys).
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

// Shared returns the package's server, starting it on first use.
func Shared(t testing.TB) *Server {
	t.Helper()
	if !harness.InMain() {
		t.Fatal("s3test: add `func TestMain(m *testing.M) { pgtest.Main(m) }` (or harness.Main) to this package")
	}
	mu.Lock()
	defer mu.Unlock()
	if shared == nil && startErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shared, startErr = Start(ctx)
		if startErr == nil {
			srv := shared
			harness.AtExit(srv.Stop)
		}
	}
	require.NoError(t, startErr, "starting versitygw")
	return shared
}

// Bucket is a fresh bucket of the test's own on the shared server.
type Bucket struct {
	*Server
	Name string
}

// NewBucket creates a fresh bucket on the shared server.
func NewBucket(t testing.TB) *Bucket {
	t.Helper()
	s := Shared(t)
	name := "t-" + randHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	require.NoError(t, err, "creating bucket %s", name)
	return &Bucket{Server: s, Name: name}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
