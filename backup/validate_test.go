package backup_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
)

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	s, err := backup.NewFileStore(t.TempDir())
	require.NoError(t, err)
	require.ErrorContains(t, backup.RunOptions{}.Validate(), "no store")
	require.ErrorContains(t, backup.RunOptions{Store: s, Compress: 10}.Validate(), "invalid compression")
	require.NoError(t, backup.RunOptions{Store: s, Compress: -1}.Validate())
	require.ErrorContains(t, backup.RestoreOptions{Store: s}.Validate(), "--id ID or --latest")
	require.ErrorContains(t, backup.RestoreOptions{Store: s, ID: "x", Latest: true}.Validate(), "--id ID or --latest")
	require.NoError(t, backup.RestoreOptions{Store: s, Latest: true}.Validate())
	require.ErrorContains(t, backup.VerifyOptions{Store: s, Latest: true, Level: "deep"}.Validate(), "invalid level")
	cfgErr := backup.VerifyOptions{Store: s, Latest: true, Scratch: pg.Options{DSN: "host=x", MaxConns: -1}}.Validate()
	require.ErrorContains(t, cfgErr, "MaxConns")
}
