// Package units reads and writes the byte sizes spiredb's flags take
// (--ram, --max-lag, --max-replica-lag, …): one parser, so that every flag
// accepts the same spellings.
package units

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var sizeRE = regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?[bB]|[kKMGT]|[bB])?\s*$`)

// maxSize bounds what ParseSize accepts (an exabyte): far above any real
// setting, far below int64's overflow.
const maxSize = 1 << 60

// ParseSize reads a size in bytes: "16GiB", "16GB" and "16G" all mean
// 16 × 2^30 bytes (PostgreSQL's own convention: its kB, MB, GB are powers of
// two), and so on for k, M, T; "1.5GB", "512kB", "1024" (bytes) work too.
// Negative, exponent and unknown units are refused.
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("invalid size %q: want e.g. 512MB, 16GB, 1.5GiB", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	mult := float64(1)
	switch strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m[2], "B"), "b"), "i")) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	b := v * mult
	if b > maxSize {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(b), nil
}

// IsSize reports whether s is spelled as a size (digits with an optional
// unit), as opposed to, say, a duration ("10s").
func IsSize(s string) bool { return sizeRE.MatchString(s) }

// FormatBytes renders a size for people: "1.5 GiB", "12.0 MiB", "512 B".
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<40:
		return fmt.Sprintf("%.1f TiB", float64(n)/(1<<40))
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
