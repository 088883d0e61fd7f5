package integration_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// doctorReport runs doctor -o json with extra flags.
func doctorReport(t *testing.T, dsn string, extra ...string) *doctor.Report {
	t.Helper()
	stdout, stderr, code := runCLI(t, nil, append([]string{"doctor", "--dsn", dsn, "-o", "json"}, extra...)...)
	require.Contains(t, []int{0, 4}, code, "doctor exit %d: %s", code, stderr)
	var r doctor.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &r), stdout)
	return &r
}

func findingOf(r *doctor.Report, check string) *doctor.Finding {
	for i := range r.Findings {
		if r.Findings[i].Check == check {
			return &r.Findings[i]
		}
	}
	return nil
}

// Events health against a real spire-server: the events SPIRE writes are
// counted; a default-mode server's full reload dominating database time
// makes doctor recommend events_based_cache; missing ids and unpruned
// events are reported; and a server pruning with a short
// prune_events_older_than clears the warning by SPIRE's own DELETE.
func TestDoctorEventsHealthWithSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	srv := startSpire(t, db, spiretest.Options{})
	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(1500, 11, nil)))

	r := doctorReport(t, db.DSN)
	require.NotNil(t, r.Events)
	byTable := func(r *doctor.Report) map[string]int64 {
		out := map[string]int64{}
		for _, e := range r.Events.Tables {
			out[e.Table] = e.Rows
			out[e.Table+".gaps"] = e.Gaps
		}
		return out
	}
	got := byTable(r)
	require.EqualValues(t, 1500, got["registered_entries_events"], "one event per entry SPIRE created")
	require.Zero(t, got["registered_entries_events.gaps"])
	require.EqualValues(t, 1500+1500, r.Events.StartupRows, "a start-up reads the entries and the events (no agents)")
	require.Nil(t, findingOf(r, "spire.events.prune"))
	require.Nil(t, findingOf(r, "spire.events.gaps"))

	// the server's 5-second full reload, alone after a statistics reset
	_, err := db.Pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, "SELECT pg_stat_statements_reset()")
	require.NoError(t, err)
	time.Sleep(12 * time.Second)
	r = doctorReport(t, db.DSN)
	require.Greater(t, r.Events.ReloadShare, 0.5, "%+v", r.Events)
	f := findingOf(r, "spire.events_based_cache")
	require.NotNil(t, f, "%+v", r.Findings)
	require.Contains(t, f.Fix, "events_based_cache = true")

	// ids missing in the middle (as rolled-back transactions leave them)
	// and events a week old (as when no server prunes)
	_, err = db.Pool.Exec(ctx, `DELETE FROM registered_entries_events WHERE id IN
		(SELECT id FROM registered_entries_events ORDER BY id OFFSET 100 LIMIT 1200)`)
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, "UPDATE registered_entries_events SET created_at = now() - interval '7 days'")
	require.NoError(t, err)
	r = doctorReport(t, db.DSN)
	got = byTable(r)
	require.EqualValues(t, 300, got["registered_entries_events"])
	require.EqualValues(t, 1200, got["registered_entries_events.gaps"])
	require.NotNil(t, findingOf(r, "spire.events.gaps"), "%+v", r.Findings)
	require.NotNil(t, findingOf(r, "spire.events.prune"), "%+v", r.Findings)

	// a server that prunes events older than 10 s (every 5 s) deletes them
	// by itself: the warning goes away with them
	srv.Halt()
	startSpire(t, db, spiretest.Options{Experimental: []string{`prune_events_older_than = "10s"`}})
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM registered_entries_events").Scan(&n))
		return n == 0
	}, 60*time.Second, time.Second, "spire-server pruned the old events")
	r = doctorReport(t, db.DSN, "--events-prune-older-than", "10s")
	require.Nil(t, findingOf(r, "spire.events.prune"), "%+v", r.Findings)
	require.Nil(t, findingOf(r, "spire.events.gaps"), "%+v", r.Findings)
}
