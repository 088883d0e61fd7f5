package replication

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Limit is a replication lag limit: bytes of WAL, or time, or none.
type Limit struct {
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
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

var sizeRE = regexp.MustCompile(`^(\d+)\s*(b|B|kB|KB|KiB|k|MB|MiB|M|GB|GiB|G|TB|TiB|T)?$`)

// ParseLimit reads a size ("16MB", "1GiB", "512kB", "0") or a Go duration
// ("10s", "2m").
func ParseLimit(s string) (Limit, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Limit{}, nil
	}
	if m := sizeRE.FindStringSubmatch(s); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return Limit{}, fmt.Errorf("invalid lag limit %q: %w", s, err)
		}
		mult := map[string]int64{"": 1, "b": 1, "B": 1, "k": 1 << 10, "kB": 1 << 10, "KB": 1 << 10, "KiB": 1 << 10,
			"M": 1 << 20, "MB": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GiB": 1 << 30,
			"T": 1 << 40, "TB": 1 << 40, "TiB": 1 << 40}[m[2]]
		if n > (1<<62)/mult {
			return Limit{}, fmt.Errorf("invalid lag limit %q: too large", s)
		}
		return Limit{Bytes: n * mult}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return Limit{}, fmt.Errorf("invalid lag limit %q: want a size (16MB, 1GiB) or a duration (10s, 2m)", s)
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

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
