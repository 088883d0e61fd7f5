package sqlfile_test

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/sqlfile"
)

func TestMust(t *testing.T) {
	fsys := fstest.MapFS{"sql/q.sql": {Data: []byte("\nSELECT 1\n")}}
	require.Equal(t, "SELECT 1", sqlfile.Must(fsys, "q"))
	require.Panics(t, func() { sqlfile.Must(fsys, "missing") })
}
