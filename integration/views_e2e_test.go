package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/indexes/views"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// The entry view: created and populated in one go, then refreshed
// concurrently; two refreshes at once: one runs, the other skips with exit
// 0; status tells the age and the SPIRE changes since.
func TestViewsCreateRefreshStatus(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 2000})
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)

	out, stderr, code := runCLI(t, nil, "views", "status", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "entry_selectors: not created")

	out, stderr, code = runCLI(t, nil, "views", "create", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	var rs []views.Result
	require.NoError(t, json.Unmarshal([]byte(out), &rs), out)
	require.Len(t, rs, 1)
	assert.False(t, rs[0].Concurrently, "the first population is not concurrent")
	assert.EqualValues(t, 2000, rs[0].Rows)

	// the view agrees with SPIRE's tables
	var viewSelectors, tableSelectors int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT sum(cardinality(selectors)) FROM spiredb.entry_selectors").Scan(&viewSelectors))
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM selectors").Scan(&tableSelectors))
	assert.Equal(t, tableSelectors, viewSelectors)
	var sample []string
	require.NoError(t, conn.QueryRow(ctx, "SELECT selectors FROM spiredb.entry_selectors ORDER BY id LIMIT 1").Scan(&sample))
	assert.Contains(t, sample, "k8s:ns:ns-0")

	// a SPIRE change, then a concurrent refresh that sees it
	_, err = conn.Exec(ctx, `INSERT INTO registered_entries_events (created_at, updated_at, entry_id) VALUES (now(), now(), 'x')`)
	require.NoError(t, err)
	out, _, _ = runCLI(t, nil, "views", "status", "--dsn", db.DSN, "-o", "json")
	var st []views.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Len(t, st, 1)
	assert.EqualValues(t, 1, st[0].ChangesSince)
	assert.NotNil(t, st[0].RefreshedAt)

	_, err = conn.Exec(ctx, "DELETE FROM selectors WHERE registered_entry_id = 1")
	require.NoError(t, err)
	out, stderr, code = runCLI(t, nil, "views", "refresh", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(out), &rs), out)
	assert.True(t, rs[0].Concurrently)
	require.NoError(t, conn.QueryRow(ctx, "SELECT selectors FROM spiredb.entry_selectors WHERE id = 1").Scan(&sample))
	assert.Empty(t, sample)

	// two refreshes at once: the test holds a lock on SPIRE's selectors
	// table that the first one's REFRESH ... CONCURRENTLY waits for (as it
	// would behind SPIRE's migration), so it is still running when the
	// second starts
	holder, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE selectors IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	first := exec.CommandContext(ctx, spiredbCLI(t), "views", "refresh", "--dsn", db.DSN, "--lock-timeout", "60s")
	var firstOut bytes.Buffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	require.NoError(t, first.Start())
	require.Eventually(t, func() bool {
		var waiting bool
		err := conn.QueryRow(ctx, `SELECT count(*) > 0 FROM pg_stat_activity
			WHERE application_name = 'spiredb' AND wait_event_type = 'Lock' AND query LIKE '%REFRESH MATERIALIZED VIEW%'`).Scan(&waiting)
		return err == nil && waiting
	}, 30*time.Second, 50*time.Millisecond, "the first refresh runs and waits")
	out, stderr, code = runCLI(t, nil, "views", "refresh", "--dsn", db.DSN)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "refresh already running")
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, first.Wait(), firstOut.String())
	assert.Contains(t, firstOut.String(), "refreshed concurrently")

	out, stderr, code = runCLI(t, nil, "views", "status", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "2000 rows, refreshed")
	assert.Contains(t, out, "0 entry changes since")
}
