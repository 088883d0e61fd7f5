package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

// BenchmarkIndexes runs SPIRE's own statements — the executions the
// catalog captured from a real spire-server, with realistic parameters —
// with and without spiredb's index set, on 200,000 entries
// (SPIREDB_BENCH_INDEX_ENTRIES) and 500,000 entry-events rows (plus 100,000
// agent-events rows), for the set's indexes and the rejected candidates.
// Rounds interleave: "without" drops the index serving the statement
// inside a transaction that is rolled back, so both sides run on the same
// tables, caches and statistics. Statement times are EXPLAIN ANALYZE
// execution times (database time, as pg_stat_statements counts it);
// writes are SPIRE's own single-row INSERTs, 2,000 per round, timed at the
// client as SPIRE's driver sends them one at a time.
func BenchmarkIndexes(b *testing.B) {
	entries := envInts(b, "SPIREDB_BENCH_INDEX_ENTRIES", "200000")[0]
	rounds := envInts(b, "SPIREDB_BENCH_ROUNDS", "7")[0]
	ctx := context.Background()
	sharedBuffers := os.Getenv("SPIREDB_BENCH_SHARED_BUFFERS")
	if sharedBuffers == "" {
		sharedBuffers = "512MB" // the whole fixture fits: a warm primary
	}
	c := pgtest.NewCluster(b, pgcluster.Options{Settings: map[string]string{"shared_buffers": sharedBuffers}})
	dsn, err := c.CreateDatabase(ctx, "spire")
	require.NoError(b, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(b, err)
	defer conn.Close(ctx)
	start := time.Now()
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: entries, Agents: 50})
	require.NoError(b, err)
	// events: SPIRE writes one per entry or agent change and keeps them for
	// prune_events_older_than (12 h): spread over the last 6 hours
	for _, q := range []string{
		`INSERT INTO registered_entries_events (created_at, updated_at, entry_id)
		 SELECT now() - random() * interval '6 hours', now(), md5(g::text) FROM generate_series(1, 500000 - (SELECT count(*) FROM registered_entries_events)) g`,
		`INSERT INTO attested_node_entries_events (created_at, updated_at, spiffe_id)
		 SELECT now() - random() * interval '6 hours', now(), 'spiffe://example.org/spire/agent/x/' || g FROM generate_series(1, 100000) g`,
		"VACUUM ANALYZE",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(b, err)
	}
	var events int64
	require.NoError(b, conn.QueryRow(ctx, "SELECT count(*) FROM registered_entries_events").Scan(&events))
	benchLog(b, "index fixture: %d entries, %d entry events, 100000 agent events, loaded in %s; shared_buffers %s", entries, events, time.Since(start).Round(time.Second), sharedBuffers)

	actions, err := indexes.Apply(ctx, conn, indexes.ApplyOptions{})
	require.NoError(b, err)
	for _, a := range actions {
		benchLog(b, "built %s in %s", a.Name, a.Duration.Round(time.Millisecond))
	}
	// the rejected candidates are measured too, so their verdict can be
	// reproduced
	for _, ix := range indexes.Rejected() {
		t0 := time.Now()
		_, err := conn.Exec(ctx, ix.CreateSQL("public"))
		require.NoError(b, err)
		benchLog(b, "built %s (rejected candidate) in %s", ix.Name, time.Since(t0).Round(time.Millisecond))
	}
	_, err = conn.Exec(ctx, "ANALYZE")
	require.NoError(b, err)

	now := time.Now()
	old := now.Add(-12 * time.Hour).UTC().Format("2006-01-02 15:04:05.999999-07")
	type stmt struct {
		name    string
		example *spire.Example
		args    []any
		without []string // set indexes the "without" side drops
	}
	ex := func(label, contains string) *spire.Example {
		ss, err := spire.StatementsFor(label)
		require.NoError(b, err)
		for _, s := range ss {
			if s.Example != nil && strings.Contains(s.Example.SQL, contains) {
				return s.Example
			}
		}
		b.Fatalf("no %s example containing %q", label, contains)
		return nil
	}
	const (
		expirySet   = "spiredb_registered_entries_expiry_set"
		entryEvents = "spiredb_registered_entries_events_created_at"
		agentEvents = "spiredb_attested_node_entries_events_created_at"
		covering    = "spiredb_selectors_entry_covering"
	)
	stmts := []stmt{
		{"expiry prune", ex("expiry prune", "expiry"), []any{fmt.Sprint(now.Unix())}, []string{expirySet}},
		{"events prune (entries, nothing to delete)", ex("events prune", `"registered_entries_events"`), []any{old}, []string{entryEvents}},
		{"events prune (agents, nothing to delete)", ex("events prune", `"attested_node_entries_events"`), []any{old}, []string{agentEvents}},
		{"cache reload, first 10k page [rejected]", ex("cache reload page", "FROM registered_entries ORDER BY id ASC LIMIT"), nil, []string{covering}},
		{"cache reload, later 10k page [rejected]", ex("cache reload page", "WHERE id > $1"), []any{fmt.Sprint(entries / 2)}, []string{covering}},
	}
	require.NotNil(b, stmts[3].example)

	explain := func(tx pgx.Tx, s stmt) time.Duration {
		var out []byte
		args := append([]any{pgx.QueryExecModeSimpleProtocol}, s.args...)
		require.NoError(b, tx.QueryRow(ctx, "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) "+s.example.SQL, args...).Scan(&out))
		var plan []struct {
			Execution float64 `json:"Execution Time"`
		}
		require.NoError(b, json.Unmarshal(out, &plan))
		return time.Duration(plan[0].Execution * float64(time.Millisecond))
	}
	// run measures fn in a transaction that is rolled back (DELETEs delete
	// nothing for good), with the named indexes dropped first when given
	run := func(drop []string, fn func(tx pgx.Tx) time.Duration) time.Duration {
		tx, err := conn.Begin(ctx)
		require.NoError(b, err)
		defer func() { _ = tx.Rollback(ctx) }()
		for _, n := range drop {
			_, err := tx.Exec(ctx, "DROP INDEX "+pgx.Identifier{n}.Sanitize())
			require.NoError(b, err)
		}
		return fn(tx)
	}

	selectorInsert := ex("selector insert", "selectors")
	eventInsert := ex("entry event insert", "registered_entries_events")
	entryInsert := ex("entry insert", "registered_entries")
	nodeEventInsert := ex("node event insert", "attested_node_entries_events")
	writes := []struct {
		name    string
		example *spire.Example
		args    func(i int) []any
		drop    []string
	}{
		{"entry insert (1 in 10 with an expiry)", entryInsert, func(i int) []any {
			args := entryInsert.Args()
			args[2] = fmt.Sprintf("bench-%d", i)
			args[3] = fmt.Sprintf("spiffe://example.org/bench/%d", i)
			if i%10 == 0 {
				args[8] = fmt.Sprint(now.Add(24 * time.Hour).Unix())
			}
			return args
		}, []string{expirySet}},
		{"entry event insert", eventInsert, func(i int) []any {
			return []any{now, now, fmt.Sprintf("bench-%d", i)}
		}, []string{entryEvents}},
		{"node event insert", nodeEventInsert, func(i int) []any {
			return []any{now, now, fmt.Sprintf("spiffe://example.org/spire/agent/bench/%d", i)}
		}, []string{agentEvents}},
		{"selector insert [rejected]", selectorInsert, func(i int) []any {
			return []any{now, now, fmt.Sprint(1 + i%entries), "k8s", fmt.Sprintf("bench:%d", i)}
		}, []string{covering}},
	}
	const perRound = 2000

	for range b.N {
		with := make(map[string][]time.Duration)
		without := make(map[string][]time.Duration)
		for r := range rounds {
			for _, s := range stmts {
				measureWith := func() {
					with[s.name] = append(with[s.name], run(nil, func(tx pgx.Tx) time.Duration { return explain(tx, s) }))
				}
				measureWithout := func() {
					without[s.name] = append(without[s.name], run(s.without, func(tx pgx.Tx) time.Duration { return explain(tx, s) }))
				}
				if r%2 == 0 {
					measureWith()
					measureWithout()
				} else {
					measureWithout()
					measureWith()
				}
			}
			for _, w := range writes {
				insert := func(tx pgx.Tx) time.Duration {
					t0 := time.Now()
					for i := range perRound {
						args := append([]any{pgx.QueryExecModeSimpleProtocol}, w.args(r*perRound+i)...)
						_, err := tx.Exec(ctx, w.example.SQL, args...)
						require.NoError(b, err)
					}
					return time.Since(t0)
				}
				if r%2 == 0 {
					with[w.name] = append(with[w.name], run(nil, insert))
					without[w.name] = append(without[w.name], run(w.drop, insert))
				} else {
					without[w.name] = append(without[w.name], run(w.drop, insert))
					with[w.name] = append(with[w.name], run(nil, insert))
				}
			}
		}
		for _, s := range stmts {
			wo, wi := median(without[s.name]), median(with[s.name])
			benchLog(b, "%-44s without %9.3f ms  with %9.3f ms  ×%.2f  (medians of %d)", s.name, ms64(wo), ms64(wi), float64(wo)/float64(wi), rounds)
		}
		for _, w := range writes {
			wo, wi := median(without[w.name]), median(with[w.name])
			benchLog(b, "%-44s without %9.1f ms  with %9.1f ms  overhead %+.1f%%  (%d single-row INSERTs, medians of %d)",
				w.name, ms64(wo), ms64(wi), 100*(float64(wi)/float64(wo)-1), perRound, rounds)
		}
	}
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
