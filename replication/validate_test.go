package replication_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// Options that cannot work are refused in one line before any connection.
func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	two := pg.Options{DSN: "host=a", Pool: nil, Config: nil}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"bootstrap without dir", replication.BootstrapOptions{}.Validate(), "no data directory"},
		{"bootstrap bad slot", replication.BootstrapOptions{DataDir: "/x", Slot: "Bad-Slot"}.Validate(), "invalid slot name"},
		{"bootstrap start without port", replication.BootstrapOptions{DataDir: "/x", Start: true}.Validate(), "--start needs --port"},
		{"rejoin bad port", replication.RejoinOptions{DataDir: "/x", Port: 70000}.Validate(), "invalid port"},
		{"switchover negative wait", replication.SwitchoverOptions{Wait: -1}.Validate(), "negative wait"},
		{"fence empty database", replication.FenceOptions{Databases: []string{""}}.Validate(), "empty database"},
		{"promote negative lag", replication.PromoteOptions{MaxLag: replication.Limit{Bytes: -1}}.Validate(), "negative lag"},
	} {
		require.ErrorContains(t, tc.err, tc.want, tc.name)
	}
	require.NoError(t, replication.BootstrapOptions{DataDir: "/x", Primary: two}.Validate())
	require.NoError(t, replication.SwitchoverOptions{Primary: two, Standby: two}.Validate())
}
