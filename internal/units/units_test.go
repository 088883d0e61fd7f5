package units_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/units"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	good := map[string]int64{"0": 0, "1024": 1024, "512MB": 512 << 20, "16GB": 16 << 30, "16GiB": 16 << 30, "16G": 16 << 30,
		"1.5G": 3 << 29, "1.5GB": 3 << 29, "64kB": 64 << 10, "64KB": 64 << 10, "64KiB": 64 << 10, "2T": 2 << 40,
		" 8 GB ": 8 << 30, "100b": 100, "100B": 100}
	for in, want := range good {
		got, err := units.ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		require.True(t, units.IsSize(in), in)
	}
	for _, in := range []string{"", "GB", "-1GB", "16 gigs", "1e9", "16PB", "99999999999T", "10s", "1.5.2GB", "0x10", "2m", "16mb"} {
		_, err := units.ParseSize(in)
		require.Error(t, err, in)
	}
	require.False(t, units.IsSize("10s"))
}

func TestFormatBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 512: "512 B", 1536: "1.5 KiB", 3 << 29: "1.5 GiB", 2 << 40: "2.0 TiB"} {
		require.Equal(t, want, units.FormatBytes(n))
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"16GB", "1.5G", "512", "64kB", "x", "", "9999999999999999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := units.ParseSize(s)
		if err == nil {
			require.GreaterOrEqual(t, n, int64(0))
		}
	})
}
