package main

import (
	"io"
	"os"
	"sync"

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
