package spire

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// EventsTables are SPIRE's change logs, one row per entry or agent change
// (in both cache modes). The events-based cache (experimental
// events_based_cache) polls them; every server prunes rows older than
// prune_events_older_than (default DefaultEventsPruneAfter) every half
// that period.
var EventsTables = []string{"registered_entries_events", "attested_node_entries_events"}

// DefaultEventsPruneAfter is spire-server's default
// experimental.prune_events_older_than
// (pkg/server/endpoints/endpoints.go).
const DefaultEventsPruneAfter = 12 * time.Hour

// EventsTable is the state of one events table.
type EventsTable struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
	MinID int64  `json:"min_id"`
	MaxID int64  `json:"max_id"`
	// Gaps are the ids missing between MinID and MaxID (rolled-back or
	// pruned-out-of-order inserts). An events-based cache that starts
	// tracks each one and fetches it on every poll until SPIRE's event
	// timeout passes.
	Gaps int64 `json:"gaps"`
	// Oldest is the oldest event's created_at (nil: empty table), and
	// OldestAge its age by the server's clock.
	Oldest    *time.Time    `json:"oldest,omitempty"`
	OldestAge time.Duration `json:"oldest_age_ns"`
}

// Events is the events tables' state and what an events-based cache reads
// when a server starts: every entry and agent, then every retained event.
type Events struct {
	Tables []EventsTable `json:"tables"`
	// Entries and Agents are what a start-up's full load reads.
	Entries int64 `json:"entries"`
	Agents  int64 `json:"agents"`
	// StartupRows is Entries + Agents + every events row.
	StartupRows int64 `json:"startup_rows"`
}

// ReadEvents reads the events tables of the SPIRE schema nsp (tables it
// lacks, in SPIRE releases before 1.9, are left out). One scan per table:
// count, id range and oldest row.
func ReadEvents(ctx context.Context, q Querier, nsp string) (*Events, error) {
	ev := &Events{Tables: []EventsTable{}}
	for _, t := range EventsTables {
		if cols, err := tableColumns(ctx, q, nsp, t); err != nil || cols == nil {
			if err != nil {
				return nil, fmt.Errorf("looking for %s: %w", t, err)
			}
			continue
		}
		et := EventsTable{Table: t}
		var minID, maxID *int64
		var ageSecs *float64
		err := q.QueryRow(ctx, pg.Marker+`SELECT count(*), min(id), max(id), min(created_at),
			extract(epoch FROM pg_catalog.now() - min(created_at))::float8 FROM `+pgx.Identifier{nsp, t}.Sanitize()).
			Scan(&et.Rows, &minID, &maxID, &et.Oldest, &ageSecs)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", t, err)
		}
		if minID != nil && maxID != nil {
			et.MinID, et.MaxID = *minID, *maxID
			et.Gaps = et.MaxID - et.MinID + 1 - et.Rows
		}
		if ageSecs != nil && *ageSecs > 0 {
			et.OldestAge = time.Duration(*ageSecs * float64(time.Second))
		}
		ev.Tables = append(ev.Tables, et)
		ev.StartupRows += et.Rows
	}
	for _, c := range []struct {
		table string
		n     *int64
	}{{"registered_entries", &ev.Entries}, {"attested_node_entries", &ev.Agents}} {
		if cols, err := tableColumns(ctx, q, nsp, c.table); err != nil || cols == nil {
			if err != nil {
				return nil, fmt.Errorf("looking for %s: %w", c.table, err)
			}
			continue
		}
		if err := q.QueryRow(ctx, pg.Marker+"SELECT count(*) FROM "+pgx.Identifier{nsp, c.table}.Sanitize()).Scan(c.n); err != nil {
			return nil, fmt.Errorf("counting %s: %w", c.table, err)
		}
		ev.StartupRows += *c.n
	}
	return ev, nil
}
