// Package harness holds what the test helpers (pgtest, s3test, spiretest)
// share: the cache of built tool binaries and a TestMain that tears down
// whatever the tests started.
package harness

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

var (
	mu      sync.Mutex
	atExit  []func()
	inMain  bool
	exiting bool
)

// CacheDir is where setup builds tool binaries: $SPIREDB_CACHE, else
// $XDG_CACHE_HOME/spiredb, else ~/.cache/spiredb. It lives outside the
// checkout so that builds survive fresh clones.
func CacheDir() string {
	if d := os.Getenv("SPIREDB_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "spiredb")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "spiredb-cache")
	}
	return filepath.Join(home, ".cache", "spiredb")
}

// Binary returns the path of a tool built by scripts/setup.sh (versitygw,
// spire-server), or an error that says how to build it.
func Binary(name string) (string, error) {
	p := filepath.Join(CacheDir(), "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not built: run `make setup` (scripts/setup.sh) first: %w", name, err)
	}
	return p, nil
}

// Main runs m and then every AtExit function, also on SIGINT/SIGTERM.
func Main(m *testing.M) {
	mu.Lock()
	inMain = true
	mu.Unlock()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		runAtExit()
		fmt.Fprintf(os.Stderr, "harness: %v: test servers stopped\n", s)
		os.Exit(130)
	}()
	code := m.Run()
	runAtExit()
	os.Exit(code)
}

// InMain reports whether the package's TestMain calls Main.
func InMain() bool {
	mu.Lock()
	defer mu.Unlock()
	return inMain
}

// AtExit registers f to run when the package's tests end.
func AtExit(f func()) {
	mu.Lock()
	defer mu.Unlock()
	atExit = append(atExit, f)
}

func runAtExit() {
	mu.Lock()
	if exiting {
		mu.Unlock()
		return
	}
	exiting = true
	fs := atExit
	mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
