package integration_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// spire check-config against real spire-servers: the configuration a
// server runs healthy with passes (--connect included); the connection
// strings it flags as errors are ones spire-server itself cannot start
// with; a misspelt key SPIRE ignores without a word is an error here; an
// ro_connection_string that is the primary, and servers × max_open_conns
// above max_connections, are caught by --connect. No password is printed.
func TestSpireCheckConfigAgainstSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	kv := db.Cluster.KVDSN(db.Name)
	password := db.Cluster.Password
	require.NotEmpty(t, password)

	check := func(conf string, extra ...string) (*doctor.SPIREConfigReport, string, int) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "server.conf")
		require.NoError(t, os.WriteFile(f, []byte(conf), 0o600))
		out, errOut, code := runCLI(t, nil, append([]string{"spire", "check-config", f, "-o", "json"}, extra...)...)
		require.NotContains(t, out+errOut, password, "a password from the file was printed")
		var r doctor.SPIREConfigReport
		if code <= 1 || code == 4 {
			require.NoError(t, json.Unmarshal([]byte(out), &r), out+errOut)
		}
		return &r, errOut, code
	}
	checks := func(r *doctor.SPIREConfigReport, sev doctor.Severity) []string {
		var out []string
		for _, f := range r.Findings {
			if f.Severity == sev {
				out = append(out, f.Check)
			}
		}
		return out
	}

	// the harness's own configuration, with which a server starts healthy
	srv := startSpire(t, db, spiretest.Options{DataStoreLines: []string{"max_open_con = 5"}})
	conf, err := os.ReadFile(filepath.Join(srv.Dir, "server.conf"))
	require.NoError(t, err)
	srv.Stop()
	good := strings.Replace(string(conf), "max_open_con = 5", "max_open_conns = 20", 1)
	r, errOut, code := check(good, "--connect")
	require.Equal(t, 0, code, "%s %+v", errOut, r.Findings)
	require.True(t, r.Connected)
	require.Equal(t, 200, r.MaxConnections)
	require.Equal(t, 20, r.MaxOpenConns)

	// the misspelt key spire-server started with (and ignored)
	r, _, code = check(string(conf))
	require.Equal(t, 1, code)
	require.Equal(t, []string{"sql.unknown_key"}, checks(r, doctor.Error))
	require.Contains(t, r.Findings[0].Message, "did you mean max_open_conns")

	// connection strings check-config calls errors: spire-server cannot
	// start with them either
	for _, bad := range []struct{ dsn, check string }{
		{kv + " pool_max_conns=10", "sql.connection_string.parameter"},
		{strings.Replace(kv, "sslmode=disable", "sslmode=prefer", 1), "sql.connection_string.sslmode"},
	} {
		r, _, code := check(strings.Replace(good, kv, bad.dsn, 1))
		require.Equal(t, 1, code, "%+v", r.Findings)
		require.Equal(t, []string{bad.check}, checks(r, doctor.Error))
		_, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: bad.dsn})
		require.Error(t, err, "spire-server started with %s", bad.check)
	}

	// an ro_connection_string that reaches the primary itself
	ro := strings.Replace(good, "sslmode=disable\"", "sslmode=disable\"\n      ro_connection_string = \""+kv+"\"", 1)
	require.Contains(t, ro, "ro_connection_string")
	r, _, code = check(ro, "--connect")
	require.Equal(t, 1, code)
	require.Equal(t, []string{"sql.ro_connection_string.standby"}, checks(r, doctor.Error))

	// 20 servers × 20 connections on a 200-connection server
	r, _, code = check(good, "--connect", "--servers", "20")
	require.Equal(t, 1, code)
	require.Equal(t, []string{"sql.max_open_conns"}, checks(r, doctor.Error))

	// not a spire-server configuration: a usage error
	_, errOut, code = check("server { trust_domain = \"x\" }")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "no plugins block")
}
