package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// Server A writes to the primary and reads through ro_connection_string from
// a standby that spiredb bootstrapped; 2,000 entries go through A's API; the
// standby is reported ready, promoted, and server B on it serves the same
// entries and accepts a new one.
func TestReplicaServesSpireAndPromotes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	primary := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{"synchronous_commit": "on"}})
	_, err := primary.CreateDatabase(ctx, "spire")
	require.NoError(t, err)

	port, err := pgcluster.FreePort(0, 0)
	require.NoError(t, err)
	dir := filepath.Join(primary.Dir, "standby")
	out, errOut, code := runCLI(t, nil, "replica", "bootstrap", "--primary-dsn", primary.DSN("postgres"), "--data-dir", dir,
		"--standby-passfile", dir+".pgpass", "--start", "--port", fmt.Sprint(port), "-o", "json")
	require.Equal(t, 0, code, errOut)
	t.Cleanup(func() { _ = replication.StopStandby(context.Background(), "", dir) })
	var br replication.BootstrapResult
	require.NoError(t, json.Unmarshal([]byte(out), &br))
	require.True(t, br.Streaming)
	require.NotContains(t, out+errOut, primary.Password)
	standby := *primary
	standby.Port = port

	// SPIRE creates its schema on the primary at first start; reads through
	// ro_connection_string must not reach the standby before it has
	// replayed that schema (a brand-new datastore whose first start points
	// at a standby can crash with `relation "registered_entries" does not
	// exist`). So: create the datastore, wait for the standby, then add
	// ro_connection_string, as an operator adding a standby would.
	first, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: primary.KVDSN("spire")})
	require.NoError(t, err)
	first.Stop()
	waitTrue(t, standby.DSN("spire"), "SELECT to_regclass('public.migrations') IS NOT NULL")

	a, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: primary.KVDSN("spire"), ROConnectionString: standby.KVDSN("spire")})
	require.NoError(t, err)
	t.Cleanup(a.Stop)
	require.NoError(t, a.CreateEntries(ctx, spirefixture.GenerateEntries(2000, 11, nil)))
	// A's entry listing reads from the standby: let it catch up first
	waitTrue(t, standby.DSN("spire"), "SELECT count(*) = 2000 FROM registered_entries")
	want, err := a.Show(ctx)
	require.NoError(t, err)

	// the standby is ready for SPIRE's reads once caught up
	require.Eventually(t, func() bool {
		_, _, code := runCLI(t, nil, "replica", "status", "--dsn", primary.DSN("spire"), "--max-lag", "1MB")
		return code == 0
	}, time.Minute, 200*time.Millisecond)
	out, _, _ = runCLI(t, nil, "replica", "status", "--dsn", primary.DSN("spire"), "-o", "json")
	var st replication.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Len(t, st.Standbys, 1)
	require.True(t, st.Standbys[0].Ready)

	// while the primary is alive and streaming, promote refuses: two
	// primaries would split SPIRE's writes
	_, errOut, code = runCLI(t, nil, "replica", "promote", "--dsn", standby.DSN("spire"), "--yes", "--force")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "replica switchover")

	// the primary is lost (SPIRE A with it): promote; when the old
	// primary comes back, fence it
	a.Halt()
	require.NoError(t, primary.Halt())
	require.Eventually(t, func() bool {
		out, _, _ := runCLI(t, nil, "replica", "status", "--dsn", standby.DSN("spire"), "-o", "json")
		var st replication.Status
		return json.Unmarshal([]byte(out), &st) == nil && st.Receiver.Status != "streaming"
	}, time.Minute, 100*time.Millisecond)
	out, errOut, code = runCLI(t, nil, "replica", "promote", "--dsn", standby.DSN("spire"), "--yes", "-o", "json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, primary.Restart(ctx))
	var pr replication.PromoteResult
	require.NoError(t, json.Unmarshal([]byte(out), &pr))
	require.EqualValues(t, 2, pr.Timeline)
	_, errOut, code = runCLI(t, nil, "replica", "fence", "--dsn", primary.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)

	b, err := spiretest.Start(ctx, spiretest.Options{ConnectionString: standby.KVDSN("spire")})
	require.NoError(t, err)
	t.Cleanup(b.Stop)
	got, err := b.Show(ctx)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got), "the promoted standby serves different entries")
	require.NoError(t, b.CreateEntries(ctx, spirefixture.GenerateEntries(2001, 11, nil)[2000:]))
	n, err := b.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, 2001, n)

	// the fenced old primary refuses SPIRE's connections
	_, err = pg.Connect(ctx, pg.Options{DSN: primary.DSN("spire")})
	require.Equal(t, "55000", pg.SQLState(err), "the fenced old primary accepts connections: %v", err)
}

// waitTrue polls a boolean query on dsn until it returns true (a minute at
// most).
func waitTrue(t *testing.T, dsn, query string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ctx := context.Background()
		c, err := pg.Connect(ctx, pg.Options{DSN: dsn})
		if err != nil {
			return false
		}
		defer c.Close(ctx)
		var ok bool
		return c.QueryRow(ctx, query).Scan(&ok) == nil && ok
	}, time.Minute, 50*time.Millisecond, "waiting for: %s", query)
}

// TestPromoteRefusedAfterASiblingWasPromoted: the primary is lost and one
// of its two standbys is promoted. The other's receiver has stopped too,
// so nothing on it tells a promoted sibling from a dead primary; the WAL
// archive does (the new primary archived its timeline's history), and
// promote --store refuses a second primary. When the old primary comes
// back and is fenced, fence --undo --store refuses to reopen it (--force
// overrides both), and a standby of it (bootstrap) and a switchover from
// it to a standby of its own are refused.
func TestPromoteRefusedAfterASiblingWasPromoted(t *testing.T) {
	t.Parallel()
	b := s3test.NewBucket(t)
	env, flags := s3CLI(b, "wal")
	primary := archivingCluster(t, b, "wal")
	s1, s2 := startStandbyIn(t, primary, "s1"), startStandbyIn(t, primary, "s2")
	waitTrue(t, primary.DSN("spire"), "SELECT count(*) = 2 FROM pg_stat_replication WHERE state = 'streaming'")
	// a base backup of this cluster in the store: doctor may read the
	// archive's timelines as this cluster's
	_, errOut, code := runCLI(t, env, append([]string{"backup", "run", "--physical", "--dsn", primary.DSN("spire")}, flags...)...)
	require.Equal(t, 0, code, errOut)
	timelineFinding := func(c *pgcluster.Cluster) doctor.Finding {
		t.Helper()
		out, errOut, code := runCLI(t, env, append([]string{"doctor", "--dsn", c.DSN("spire"), "-o", "json"}, flags...)...)
		require.Contains(t, []int{0, 1, 4}, code, errOut)
		var r doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		for _, f := range r.Findings {
			if f.Check == "replication.timeline" {
				return f
			}
		}
		return doctor.Finding{}
	}
	require.NoError(t, primary.Halt())
	for _, s := range []*pgcluster.Cluster{s1, s2} {
		waitTrue(t, s.DSN("spire"), "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")
	}

	promote := func(s *pgcluster.Cluster, extra ...string) (string, int) {
		t.Helper()
		_, errOut, code := runCLI(t, env, append(append([]string{"replica", "promote", "--dsn", s.DSN("spire"), "--yes"}, flags...), extra...)...)
		return errOut, code
	}
	errOut, code = promote(s1)
	require.Equal(t, 0, code, errOut)
	store := s3StoreOf(t, b, "wal")
	require.Eventually(t, func() bool {
		tls, err := backup.ArchivedTimelines(context.Background(), store)
		return err == nil && slices.Contains(tls, 2)
	}, time.Minute, 100*time.Millisecond, "the new primary archives its timeline's history")

	require.Empty(t, timelineFinding(s1).Check, "the promoted server is on the newest timeline")
	f := timelineFinding(s2)
	require.Equal(t, doctor.Warning, f.Severity, "a standby of the replaced primary: %+v", f)
	require.Contains(t, f.Message, "timeline 2")

	errOut, code = promote(s2)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "another server of this cluster was promoted already")
	require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, errOut)
	waitTrue(t, s2.DSN("spire"), "SELECT pg_is_in_recovery()")

	// --force: the operator decides (that server is gone for good, say)
	errOut, code = promote(s2, "--force")
	require.Equal(t, 0, code, errOut)
	waitTrue(t, s2.DSN("spire"), "SELECT NOT pg_is_in_recovery()")

	// the old primary comes back and is fenced; no switchover marked it,
	// but the archive says it was replaced: --undo refuses to reopen it
	require.NoError(t, primary.Restart(context.Background()))
	f = timelineFinding(primary)
	require.Equal(t, doctor.Error, f.Severity, "two primaries: %+v", f)
	require.Contains(t, f.Message, "split brain")
	// the scheduler's gauges say the same (SpireDBPromotedElsewhere), read
	// from a path-style S3 server through the environment alone
	addr := startSchedule(t, append(env, "SPIREDB_DSN="+primary.DSN("spire"), "AWS_ENDPOINT_URL_S3="+b.Endpoint, "SPIREDB_S3_PATH_STYLE=true"),
		"store: s3://"+b.Name+"/wal\n")
	require.Eventually(t, func() bool { return scrape(t, addr, "spiredb_archive_newest_timeline") == 2 }, 30*time.Second, 200*time.Millisecond)
	require.Equal(t, float64(1), scrape(t, addr, "spiredb_server_timeline"))
	require.Equal(t, float64(1), scrape(t, addr, "spiredb_pitr_bases"))
	fence := func(extra ...string) (string, int) {
		t.Helper()
		_, errOut, code := runCLI(t, env, append([]string{"replica", "fence", "--dsn", primary.DSN("spire"), "--yes"}, extra...)...)
		return errOut, code
	}
	errOut, code = fence()
	require.Equal(t, 0, code, errOut)
	errOut, code = fence(append([]string{"--undo"}, flags...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "refusing to lift the fence")
	require.Contains(t, errOut, "another server of this cluster was promoted already")
	waitTrue(t, primary.DSN("postgres"), "SELECT NOT datallowconn FROM pg_database WHERE datname = 'spire'")
	errOut, code = fence(append([]string{"--undo", "--force"}, flags...)...)
	require.Equal(t, 0, code, errOut)

	// a standby of the replaced primary: refused with the store; made
	// without it, a switchover between the two would make yet another
	// primary, and nothing is fenced
	dir := filepath.Join(primary.Dir, "s4")
	_, errOut, code = runCLI(t, env, append([]string{"replica", "bootstrap", "--primary-dsn", primary.DSN("postgres"), "--data-dir", dir}, flags...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "refusing to make a standby of this server")
	require.NoDirExists(t, dir)
	waitTrue(t, primary.DSN("postgres"), "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'spiredb_s4')")
	s3 := startStandbyIn(t, primary, "s3")
	_, errOut, code = runCLI(t, env, append([]string{"replica", "switchover", "--primary-dsn", primary.DSN("spire"), "--standby-dsn", s3.DSN("spire"), "--yes"}, flags...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "refusing to switch over")
	waitTrue(t, primary.DSN("postgres"), "SELECT datallowconn FROM pg_database WHERE datname = 'spire'")
	waitTrue(t, s3.DSN("spire"), "SELECT pg_is_in_recovery()")

	// nor does a server rejoin it as its new primary: s2, fenced, stays
	// as it is
	_, errOut, code = runCLI(t, env, "replica", "fence", "--dsn", s2.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)
	_, errOut, code = runCLI(t, env, append([]string{"replica", "rejoin", "--dsn", s2.DSN("spire"), "--primary-dsn", primary.DSN("postgres"),
		"--data-dir", filepath.Join(primary.Dir, "s2"), "--yes"}, flags...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "refusing to make a standby of this server")
	waitTrue(t, s2.DSN("postgres"), "SELECT NOT pg_is_in_recovery()")
}

// TestPromoteAfterAFence: the primary was fenced (an incident) and then
// lost. Its standby replayed the fence, so SPIRE's database there refuses
// connections, the DSN the operator promotes with included. promote
// works from a maintenance database, and reopens the database it was
// pointed at once the server is the primary: otherwise SPIRE stays down
// after the failover, and replica fence --undo cannot help (the server is
// a standby until promoted). replica status reads such a standby too.
func TestPromoteAfterAFence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.NewCluster(t, pgcluster.Options{})
	_, err := primary.CreateDatabase(ctx, "spire")
	require.NoError(t, err)
	standby := startStandby(t, primary)
	waitTrue(t, primary.DSN("postgres"), "SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'")
	_, errOut, code := runCLI(t, nil, "replica", "fence", "--dsn", primary.DSN("spire"), "--yes")
	require.Equal(t, 0, code, errOut)
	waitTrue(t, standby.DSN("postgres"), "SELECT NOT datallowconn FROM pg_database WHERE datname = 'spire'")
	require.NoError(t, primary.Halt())
	waitTrue(t, standby.DSN("postgres"), "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")
	// what an operator looks at first, with the DSN at hand
	out, errOut, code := runCLI(t, nil, "replica", "status", "--dsn", standby.DSN("spire"), "-o", "json")
	require.Equal(t, 1, code, "its receiver is down: a problem, reported: %s", errOut)
	var st replication.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, "standby", st.Role)

	out, errOut, code = runCLI(t, nil, "replica", "promote", "--dsn", standby.DSN("spire"), "--yes", "-o", "json")
	require.Equal(t, 0, code, errOut)
	var res replication.PromoteResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, []string{"spire"}, res.Reopened)
	conn, err := pgx.Connect(ctx, standby.DSN("spire"))
	require.NoError(t, err, "SPIRE's database on the promoted server")
	defer conn.Close(ctx)
	var readOnly string
	require.NoError(t, conn.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&readOnly))
	require.Equal(t, "off", readOnly)
}
