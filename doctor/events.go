package doctor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// Thresholds of the events checks.
const (
	// maxEventGaps: an events-based cache that starts tracks every
	// missing id and fetches each one on every poll until SPIRE's event
	// timeout passes
	maxEventGaps = 1000
	// reloadShareWarn: the default cache's full reload taking this share
	// of SPIRE's database time makes events_based_cache worth it
	reloadShareWarn = 0.5
)

// reloadLabels are the statements of the default cache's full reload
// (spire/statements.json).
var reloadLabels = []string{"cache reload page", "cache reload node selectors"}

// Events is doctor's view of SPIRE's events tables.
type Events struct {
	*spire.Events
	PruneAfter time.Duration `json:"prune_after_ns"`
	// ReloadShare is the default cache's full reload as a share of the
	// database time pg_stat_statements recorded (-1: not readable).
	ReloadShare float64 `json:"reload_share"`
}

func (r *Report) checkEvents(ctx context.Context, conn *pgx.Conn, pruneAfter time.Duration) error {
	if pruneAfter <= 0 {
		pruneAfter = spire.DefaultEventsPruneAfter
	}
	ev, err := spire.ReadEvents(ctx, conn, r.SPIRE.Schema.Schema)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "42501" {
		r.add(Info, "spire.events", "this role may not read SPIRE's events tables: their health is not checked", "GRANT SELECT on them (see spire.read)")
		return nil
	}
	if err != nil {
		return err
	}
	e := &Events{Events: ev, PruneAfter: pruneAfter, ReloadShare: -1}
	r.Events = e
	var events int64
	for _, t := range ev.Tables {
		events += t.Rows
		if t.Oldest != nil && t.OldestAge > 2*pruneAfter {
			r.add(Warning, "spire.events.prune", fmt.Sprintf("%s holds events %s old, more than twice prune_events_older_than (%s): no server is pruning them, and an events-based cache start-up reads them all (%d rows)",
				t.Table, t.OldestAge.Round(time.Minute), pruneAfter, t.Rows),
				"keep a spire-server running (each prunes every prune_events_older_than/2), or tell doctor the servers' setting with --events-prune-older-than")
		}
		if t.Gaps > maxEventGaps {
			r.add(Warning, "spire.events.gaps", fmt.Sprintf("%s has %d missing ids between %d and %d: an events-based cache that starts tracks each one and fetches it on every poll until the event timeout passes",
				t.Table, t.Gaps, t.MinID, t.MaxID),
				"gaps come from rolled-back SPIRE transactions and age out with pruning; a shorter prune_events_older_than shrinks the window")
		}
	}
	if objects := ev.Entries + ev.Agents; events > objects && events > 10000 {
		r.add(Info, "spire.events.startup", fmt.Sprintf("an events-based cache start-up reads %d entries, %d agents and %d events: more events than objects", ev.Entries, ev.Agents, events),
			fmt.Sprintf("a shorter experimental.prune_events_older_than (now %s) keeps fewer", pruneAfter))
	}
	if !r.Statements.Created {
		return nil
	}
	stmts, _, err := tuning.ReadStatements(ctx, conn)
	var ne *tuning.NotEnabledError
	if errors.As(err, &ne) {
		return nil
	}
	if err != nil {
		return err
	}
	var share float64
	for _, op := range tuning.Operations(tuning.GroupStatements(stmts)) {
		for _, l := range reloadLabels {
			if op.Label == l {
				share += op.Share
			}
		}
	}
	e.ReloadShare = share
	if share >= reloadShareWarn {
		r.add(Warning, "spire.events_based_cache", fmt.Sprintf("the default entry cache's full reload is %.0f%% of the database time pg_stat_statements recorded (every server re-reads every entry every 5 s)", 100*share),
			"set experimental { events_based_cache = true } in each spire-server's server.conf: it polls the events tables instead, and reloads fully once a day")
	}
	return nil
}
