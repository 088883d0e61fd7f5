package replication_test

import (
	"testing"

	"github.com/spiredb/spiredb/replication"
)

// FuzzParseLimit: --max-lag and --max-replica-lag never panic, and what
// they accept is never negative.
func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"16MB", "1GiB", "10s", "2m", "-1s", "9999999999999TB", "1.5GB", "", "0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := replication.ParseLimit(s)
		if err == nil && (l.Bytes < 0 || l.Duration < 0) {
			t.Fatalf("%q accepted as %+v", s, l)
		}
	})
}
