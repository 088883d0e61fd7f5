package spire_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/spire"
)

func TestCheckUpgradeStep(t *testing.T) {
	v := func(s string) spire.Version {
		t.Helper()
		x, err := spire.ParseVersion(s)
		require.NoError(t, err)
		return x
	}
	require.Equal(t, spire.Version{1, 14, 0}, v("v1.14"))
	require.Equal(t, spire.Version{1, 13, 3}, v("1.13.3-rc1"))
	for _, bad := range []string{"", "1", "1.x.0", "1.2.3.4", "-1.2.3"} {
		_, err := spire.ParseVersion(bad)
		require.Error(t, err, bad)
	}
	for _, tc := range []struct {
		from, to      string
		ok, downgrade bool
		path          []string
	}{
		{"1.13.3", "1.13.5", true, false, nil},
		{"1.13.3", "1.14.0", true, false, nil},
		{"1.13.3", "1.16.1", false, false, []string{"1.14.x", "1.15.x", "1.16.x"}},
		{"1.13.3", "1.12.9", true, true, nil},
		{"1.13.3", "1.13.1", true, true, nil},
		{"1.13.3", "1.11.0", false, true, nil},
		{"1.13.3", "2.0.0", false, false, nil},
	} {
		st := spire.CheckUpgradeStep(v(tc.from), v(tc.to))
		require.Equal(t, tc.ok, st.OK, "%s → %s: %s", tc.from, tc.to, st.Reason)
		require.Equal(t, tc.downgrade, st.Downgrade, "%s → %s", tc.from, tc.to)
		require.Equal(t, tc.path, st.Path, "%s → %s", tc.from, tc.to)
	}
}
