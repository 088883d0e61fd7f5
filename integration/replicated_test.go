package integration_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
)

// primaryWithFixture starts a cluster of the test's own that standbys can
// follow (synchronous_commit on: the harness's off would hide commits from
// them), with a "spire" database holding the fixture. The connection is
// closed when the test ends.
func primaryWithFixture(t *testing.T, entries int) (*pgcluster.Cluster, string, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{"synchronous_commit": "on"}})
	dsn, err := primary.CreateDatabase(ctx, "spire")
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: entries})
	require.NoError(t, err)
	return primary, dsn, conn
}

// startStandby bootstraps a streaming standby of primary with the real
// CLI, stopped when the test ends.
func startStandby(t *testing.T, primary *pgcluster.Cluster) *pgcluster.Cluster {
	t.Helper()
	return startStandbyIn(t, primary, "standby")
}

// startStandbyIn is startStandby into primary.Dir/name (its slot:
// spiredb_name).
func startStandbyIn(t *testing.T, primary *pgcluster.Cluster, name string) *pgcluster.Cluster {
	t.Helper()
	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	dir := filepath.Join(primary.Dir, name)
	_, stderr, code := runCLI(t, nil, "replica", "bootstrap", "--primary-dsn", primary.DSN("postgres"), "--data-dir", dir, "--standby-passfile", dir+".pgpass", "--start", "--port", fmt.Sprint(port))
	require.Equal(t, 0, code, stderr)
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", dir) })
	standby := *primary
	standby.Port = port
	return &standby
}
