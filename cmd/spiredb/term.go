package main

import (
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// statusWriter is stderr on a terminal: it can show one live status line
// (progress) that any other write (a log record) clears first.
type statusWriter struct {
	mu    sync.Mutex
	w     io.Writer
	dirty bool
}

// newStatusWriter returns a statusWriter when w is a terminal, else nil.
func newStatusWriter(w io.Writer) *statusWriter {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &statusWriter{w: w}
}

func (s *statusWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty {
		_, _ = io.WriteString(s.w, "\r\033[K")
		s.dirty = false
	}
	return s.w.Write(p)
}

// Status replaces the live line.
func (s *statusWriter) Status(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = io.WriteString(s.w, "\r"+line+"\033[K")
	s.dirty = true
}

// End keeps the live line, if any, and moves below it.
func (s *statusWriter) End() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty {
		_, _ = io.WriteString(s.w, "\n")
		s.dirty = false
	}
}

// barWriter hands each frame a progress bar renders to the status line, so
// log records still clear it first.
type barWriter struct{ s *statusWriter }

func (b barWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(strings.NewReplacer("\r", "", "\033[J", "", "\033[K", "").Replace(string(p)))
	if line != "" {
		b.s.Status(line)
	}
	return len(p), nil
}

// newBar returns a progress bar (github.com/schollz/progressbar) drawn on
// the terminal's status line, or nil when stderr is not a terminal. max < 0
// is an unknown total (a spinner with the count).
func newBar(g *globals, description string, max int64, bytes bool) *progressbar.ProgressBar {
	if g.status == nil {
		return nil
	}
	count := progressbar.OptionShowCount()
	if max >= 0 && !bytes {
		count = func(*progressbar.ProgressBar) {} // a fraction: the percentage says it
	}
	return progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(barWriter{g.status}),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowBytes(bytes),
		count,
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSpinnerType(14),
	)
}
