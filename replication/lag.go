package replication

import (
	"fmt"
	"strings"
	"time"

	"github.com/spiredb/spiredb/internal/units"
)

// Limit is a replication lag limit: bytes of WAL, or time, or none.
type Limit struct {
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
}

// Validate refuses a negative limit.
func (l Limit) Validate() error {
	if l.Bytes < 0 || l.Duration < 0 {
		return fmt.Errorf("negative lag limit %s", l)
	}
	return nil
}

// IsZero reports whether no limit is set.
func (l Limit) IsZero() bool { return l.Bytes == 0 && l.Duration == 0 }

func (l Limit) String() string {
	switch {
	case l.Bytes > 0:
		return formatBytes(l.Bytes)
	case l.Duration > 0:
		return l.Duration.String()
	}
	return "none"
}

// ParseLimit reads a size ("16MB", "1.5GiB", "512kB", "0"), as every
// spiredb size flag does, or a Go duration ("10s", "2m").
func ParseLimit(s string) (Limit, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Limit{}, nil
	}
	if units.IsSize(s) {
		n, err := units.ParseSize(s)
		if err != nil {
			return Limit{}, fmt.Errorf("invalid lag limit %q: %w", s, err)
		}
		return Limit{Bytes: n}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return Limit{}, fmt.Errorf("invalid lag limit %q: want a size (16MB, 1.5GiB) or a duration (10s, 2m)", s)
	}
	return Limit{Duration: d}, nil
}

// Exceeded reports whether a lag of bytes and seconds is over the limit, and
// says by how much.
func (l Limit) Exceeded(bytes int64, lag time.Duration) (bool, string) {
	switch {
	case l.Bytes > 0 && bytes > l.Bytes:
		return true, fmt.Sprintf("%s behind, limit %s", formatBytes(bytes), formatBytes(l.Bytes))
	case l.Duration > 0 && lag > l.Duration:
		return true, fmt.Sprintf("%s behind, limit %s", lag.Round(time.Millisecond), l.Duration)
	}
	return false, ""
}

func formatBytes(n int64) string { return units.FormatBytes(n) }
