package tuning

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var sizeRE = regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B|[kKMGT]|B)?\s*$`)

// ParseSize reads a memory size: "16GiB", "16GB" and "16G" all mean
// 16 × 2^30 bytes (PostgreSQL's own convention), "512MB", "1.5G", "1024".
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
	switch strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(m[2], "B"), "i")) {
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
	if b > 1<<60 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(b), nil
}

// pgSize renders bytes the way postgresql.conf takes them, in the largest
// unit that divides exactly (kB, MB, GB).
func pgSize(b int64) string {
	switch {
	case b%(1<<30) == 0:
		return fmt.Sprintf("%dGB", b>>30)
	case b%(1<<20) == 0:
		return fmt.Sprintf("%dMB", b>>20)
	default:
		return fmt.Sprintf("%dkB", b>>10)
	}
}

// roundMB rounds bytes down to whole MiB (at least 1 MiB).
func roundMB(b int64) int64 { return max(b>>20, 1) << 20 }
