package tuning

import (
	"fmt"

	"github.com/spiredb/spiredb/internal/units"
)

// ParseSize reads a memory size: "16GiB", "16GB" and "16G" all mean
// 16 × 2^30 bytes (PostgreSQL's own convention), "512MB", "1.5G", "1024".
// It is the one size parser every spiredb flag uses.
func ParseSize(s string) (int64, error) { return units.ParseSize(s) }

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
