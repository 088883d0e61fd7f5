package backup

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stallingS3 is an endpoint that takes requests and then goes silent: a
// GET's response stops after its first kilobyte, a PUT's body is never
// read. It stands for a proxy or an S3 server that hangs mid-transfer.
func stallingS3(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if req.Method == http.MethodGet {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\nContent-Type: application/octet-stream\r\n\r\n")
					_, _ = c.Write(bytes.Repeat([]byte{'x'}, 1024))
				}
				<-done // silent, the connection open
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestStalledTransfersEnd: a transfer that stops making progress fails
// after the stall timeout (each retry too) instead of hanging a CronJob,
// an archive_command or a restore_command forever. Response headers had a
// bound already; a body that stops, in either direction, had none.
func TestStalledTransfersEnd(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := OpenStore(ctx, "s3://bucket/prefix", StoreOptions{S3Endpoint: stallingS3(t), S3PathStyle: true, S3Region: "us-east-1",
		S3Credentials: &StaticCredentials{AccessKey: "AKIDEXAMPLE", SecretKey: "secret"}, PartSize: 64 << 20, StallTimeout: time.Second})
	require.NoError(t, err)

	start := time.Now()
	rc, err := s.Get(ctx, "dump")
	if err == nil {
		_, err = io.Copy(io.Discard, rc)
		_ = rc.Close()
	}
	require.Error(t, err, "a response body that stopped was read to no end")
	require.Less(t, time.Since(start), time.Minute)
	require.NoError(t, ctx.Err(), "the read ended only with the test's own deadline")

	start = time.Now()
	_, err = s.Put(ctx, "dump", strings.NewReader(strings.Repeat("y", 64<<20)))
	require.Error(t, err, "an upload the server stopped reading")
	require.Less(t, time.Since(start), time.Minute)
	require.NoError(t, ctx.Err(), "the upload ended only with the test's own deadline")
}
