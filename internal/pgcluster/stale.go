package pgcluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const ownerFile = "owner"

// WriteOwner records the current process (pid and start time, so a reused
// pid is not mistaken for it) as the owner of dir.
//
// The file is written to a temporary name and renamed into place: a
// concurrent CleanStale (another test package) must never read it half
// written and take a live cluster for an orphan.
func WriteOwner(dir string) error {
	pid := os.Getpid()
	return writeAtomic(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %s\n", pid, procStart(pid)))
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// procStart returns field 22 of /proc/PID/stat (start time in clock ticks),
// or "" when the process does not exist.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// the command name (field 2) may hold spaces; fields after ')' are plain
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// ownerAlive reports whether the process that created dir still runs.
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	f := strings.Fields(string(b))
	if err != nil || len(f) != 2 {
		// no usable owner file: a directory being created right now, or
		// garbage. Give a fresh directory the benefit of the doubt.
		st, serr := os.Stat(dir)
		return serr == nil && time.Since(st.ModTime()) < time.Minute
	}
	pid, _ := strconv.Atoi(f[0])
	return pid > 0 && procStart(pid) == f[1]
}

// CleanStale stops and removes every cluster under root whose owner process
// is gone. A postmaster is signalled only when its pid, read from the
// cluster's own postmaster.pid, is a running process whose command line
// names that data directory.
func CleanStale(root string, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if ownerAlive(dir) {
			continue
		}
		stopChildren(dir, logger)
		// every data directory below it (a cluster dir may hold standbys too)
		pidfiles, _ := filepath.Glob(filepath.Join(dir, "*", "postmaster.pid"))
		for _, pf := range pidfiles {
			if pid := postmasterPID(pf); pid > 0 {
				logger.Info("stopping stale cluster", "dir", filepath.Dir(pf), "pid", pid)
				stopPID(pid)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			logger.Warn("removing stale cluster dir", "dir", dir, "err", err)
		}
	}
}

// postmasterPID returns the pid in pidfile when that process is a postgres
// whose command line names the data directory the pidfile is in.
func postmasterPID(pidfile string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return 0
	}
	dataDir := strings.TrimSpace(lines[1])
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(string(cmdline), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
		return 0
	}
	for _, a := range args {
		if a == dataDir {
			return pid
		}
	}
	return 0
}

func stopPID(pid int) {
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// RecordChild writes dir/name.pid so that CleanStale can stop a helper
// process (versitygw, spire-server) whose owner died.
func RecordChild(dir, name string, pid int) error {
	return writeAtomic(filepath.Join(dir, name+".pid"), fmt.Appendf(nil, "%d %s\n", pid, procStart(pid)))
}

// stopChildren stops the helper processes recorded in dir whose pid and
// start time still match.
func stopChildren(dir string, logger *slog.Logger) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		fields := strings.Fields(string(b))
		if len(fields) != 2 {
			continue
		}
		pid, _ := strconv.Atoi(fields[0])
		if pid > 0 && procStart(pid) == fields[1] {
			logger.Info("stopping stale helper", "file", f, "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 60 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
