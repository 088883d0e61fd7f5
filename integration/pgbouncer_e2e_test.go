package integration_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgbouncertest"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// Through a real PgBouncer (Debian's 1.18): read-only commands work in
// session and transaction pooling; doctor says it talks through a pooler;
// commands that need a session refuse a transaction pooler in one line
// naming the fix (exit 2), and work through session pooling.
func TestThroughPgBouncer(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 30})
	for _, mode := range []string{"session", "transaction"} {
		b := pgbouncertest.Start(t, db.Cluster, mode)
		dsn := b.DSN(db.Name)

		out, stderr, code := runCLI(t, nil, "doctor", "--dsn", dsn, "-o", "json")
		require.Contains(t, []int{0, 4}, code, "%s: %s", mode, stderr)
		var r doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r))
		require.NotNil(t, r.Pooling, mode)
		require.Equal(t, mode == "transaction", r.Pooling.Transaction, mode)
		require.EqualValues(t, 30, r.SPIRE.Entries, "%s: doctor reads SPIRE through the pooler", mode)

		_, stderr, code = runCLI(t, nil, "replica", "status", "--dsn", dsn)
		require.Equal(t, 0, code, "%s: replica status: %s", mode, stderr)

		store := "file://" + t.TempDir()
		_, stderr, code = runCLI(t, nil, "backup", "run", "--dsn", dsn, "--store", store)
		if mode == "transaction" {
			require.Equal(t, 2, code, stderr)
			require.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
			require.Contains(t, stderr, "transaction pooler")
			require.Contains(t, stderr, "direct DSN")
			require.NotContains(t, stderr, db.Cluster.Password)
			// every command that needs a session of its own refuses
			// before it does anything
			for _, args := range [][]string{
				{"migrate", "up", "--dsn", dsn},
				{"migrate", "backfill", "--dsn", dsn, "--table", "registered_entries", "--set", "ttl = ttl", "--name", "pooled"},
				{"indexes", "apply", "--dsn", dsn},
				{"views", "create", "--dsn", dsn},
				{"views", "refresh", "--dsn", dsn},
				{"replica", "fence", "--dsn", dsn, "--yes"},
				{"replica", "switchover", "--primary-dsn", dsn, "--standby-dsn", dsn, "--yes"},
			} {
				_, stderr, code = runCLI(t, nil, args...)
				require.Equal(t, 2, code, "%v: %s", args[:2], stderr)
				require.Contains(t, stderr, "transaction pooler", args[:2])
			}
			var allowed bool
			require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT datallowconn FROM pg_database WHERE datname = current_database()").Scan(&allowed))
			require.True(t, allowed, "the refused fence did not fence")
			_, stderr, code = runCLI(t, nil, "views", "status", "--dsn", dsn)
			require.NotEqual(t, 2, code, "views status reads only: %s", stderr)
		} else {
			require.Equal(t, 0, code, "backup run through session pooling: %s", stderr)
		}
	}
}
