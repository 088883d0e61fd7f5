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

// Every size flag reads sizes the same way (--ram 1.5GB works, so must
// --max-lag 1.5GB); durations stay durations.
func TestParseLimitSizesAndDurations(t *testing.T) {
	for in, want := range map[string]replication.Limit{
		"1.5GB": {Bytes: 3 << 29}, "16MB": {Bytes: 16 << 20}, "512kB": {Bytes: 512 << 10}, "1GiB": {Bytes: 1 << 30},
		"0": {}, "": {}, "10s": {Duration: 10e9}, "2m": {Duration: 120e9}, "1.5s": {Duration: 1.5e9},
	} {
		got, err := replication.ParseLimit(in)
		if err != nil || got != want {
			t.Errorf("ParseLimit(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"-1s", "1.5 gigs", "16PB", "-16MB"} {
		if _, err := replication.ParseLimit(in); err == nil {
			t.Errorf("ParseLimit(%q) accepted", in)
		}
	}
}
