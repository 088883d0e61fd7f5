package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A one-shot command pushes its outcome: the Pushgateway protocol (POST
// to /metrics/job/NAME, text or protobuf exposition) as a real gateway
// receives it.
func TestPushGateway(t *testing.T) {
	t.Parallel()
	type request struct {
		method, path string
		body         []byte
	}
	var mu sync.Mutex
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, request{r.Method, r.URL.Path, b})
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	_, _, code := runArgs(t, "version", "--push-gateway", srv.URL)
	require.Equal(t, 0, code)
	_, stderr, code := runArgs(t, "doctor", "--push-gateway", srv.URL, "--dsn", "postgres://u:hunter2@127.0.0.1:1/x?connect_timeout=1")
	require.Equal(t, 3, code)
	assert.NotContains(t, stderr, "hunter2")
	_, _, code = runArgs(t, "stats", "top", "--by", "nonsense", "--push-gateway", srv.URL)
	require.Equal(t, 2, code, "usage errors are not runs: nothing pushed")

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 2)
	assert.Equal(t, "POST", got[0].method, "add, so a failure keeps the last success")
	assert.Equal(t, "/metrics/job/version", got[0].path)
	assert.Contains(t, string(got[0].body), "spiredb_job_last_success_timestamp_seconds")
	assert.Contains(t, string(got[0].body), "spiredb_job_last_exit_code")
	assert.Equal(t, "/metrics/job/doctor", got[1].path)
	assert.NotContains(t, string(got[1].body), "spiredb_job_last_success_timestamp_seconds", "a failed run does not count as a success")
	assert.Contains(t, string(got[1].body), "spiredb_job_last_duration_seconds")
}
