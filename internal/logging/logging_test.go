package logging_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/logging"
)

func TestEveryRecordIsRedacted(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		l, err := logging.New(&buf, "debug", format)
		require.NoError(t, err)
		l.With("dsn", "postgres://u:topsecret1@h/db").Info("connecting with password=topsecret2",
			"err", errors.New("auth failed for host=h password=topsecret3"), "cmd", "pg_dump -d 'host=h password=topsecret4'")
		out := buf.String()
		for _, s := range []string{"topsecret1", "topsecret2", "topsecret3", "topsecret4"} {
			require.NotContains(t, out, s, format)
		}
		require.Contains(t, out, "xxxxx")
	}
}

func TestBadLevelAndFormat(t *testing.T) {
	t.Parallel()
	_, err := logging.New(&bytes.Buffer{}, "loud", "text")
	require.ErrorContains(t, err, "invalid log level")
	_, err = logging.New(&bytes.Buffer{}, "info", "xml")
	require.ErrorContains(t, err, "invalid log format")
}
