package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// ErrNotStandby is returned when asked to promote a primary.
var ErrNotStandby = errors.New("this server is not a standby (pg_is_in_recovery() is false): nothing to promote")

// LagError is returned when a standby is too far behind to promote safely.
type LagError struct {
	Why string
	// Switchover: refused by Switchover (no --force there).
	Switchover bool
}

func (e *LagError) Error() string {
	if e.Switchover {
		return "refusing to switch over: the standby's replay is " + e.Why + "; nothing was fenced: wait for it to catch up or raise --max-lag"
	}
	return "refusing to promote: replay " + e.Why + "; wait for it to catch up, raise --max-lag, or pass --force to accept losing what it has not replayed"
}

// LivePrimaryError is returned when the standby's WAL receiver is still
// streaming from its upstream: that primary is alive, and promoting would
// make a second one (split brain: SPIRE's writes to the first are lost).
type LivePrimaryError struct {
	// Upstream is where the receiver streams from (host, from
	// pg_stat_wal_receiver; empty when hidden from this role).
	Upstream string
}

func (e *LivePrimaryError) Error() string {
	from := "its primary"
	if e.Upstream != "" {
		from = "its primary at " + e.Upstream
	}
	return "refusing to promote: the standby is still streaming from " + from + ", which is alive, and promoting would make two primaries; " +
		"for a planned change use replica switchover (it fences the primary first); for a failover stop the old primary (or cut it off) and promote once the receiver has noticed (seconds; at most wal_receiver_timeout)"
}

// PromotedElsewhereError is returned when the WAL archive holds the
// history of a timeline newer than the server's: another server of the
// cluster has been promoted (a sibling standby, or the standby of this
// primary in a failover), and promoting this one, reopening it (Fence
// Undo) or switching over from it would make two primaries.
type PromotedElsewhereError struct {
	// Timeline is the server's; Archived the newest in the archive.
	Timeline, Archived uint32
	// Refused is what was refused: promoteOp, reopenOp or switchoverOp.
	Refused string
}

// What PromotedElsewhereError refused.
const (
	promoteOp    = "promote"
	reopenOp     = "lift the fence"
	switchoverOp = "switch over"
	followOp     = "make a standby of this server"
)

func (e *PromotedElsewhereError) Error() string {
	var effect, fix string
	switch e.Refused {
	case reopenOp:
		effect, fix = "reopening this one would make two primaries", "make this server a standby of that one (replica rejoin), or, if that server is gone for good and its writes with it, pass --force"
	case switchoverOp:
		effect, fix = "a switchover from this one would make yet another primary", "fence this primary (replica fence) and point SPIRE at the promoted one; nothing was fenced or promoted"
	case followOp:
		effect, fix = "a standby of this one would follow a replaced primary", "give --primary-dsn the promoted server; nothing was copied, stopped or rewound"
	default:
		effect, fix = "promoting this one too would make two primaries", "make this server a standby of that one (replica bootstrap from it), or, if that server is gone for good and its writes with it, pass --force"
	}
	return fmt.Sprintf("refusing to %s: the WAL archive holds the history of timeline %d, newer than this server's timeline %d: "+
		"another server of this cluster was promoted already, and %s; %s",
		e.Refused, e.Archived, e.Timeline, effect, fix)
}

// PromoteOptions configure Promote.
type PromoteOptions struct {
	Conn pg.Options
	// MaxLag refuses promotion when replay is further behind what the
	// standby has received (default 16 MiB); Force overrides it.
	MaxLag Limit
	Force  bool
	// ArchivedTimelines, when set, lists the timelines whose history the
	// cluster's WAL archive holds (backup.ArchivedTimelines on the store
	// wal push archives to): one newer than the standby's refuses the
	// promotion (*PromotedElsewhereError) unless Force. Without it, or
	// when the other server's archiver has not pushed its history yet,
	// nothing tells a promoted sibling apart from a dead primary.
	ArchivedTimelines func(context.Context) ([]uint32, error)
	// Wait bounds waiting for replay to catch up and for the promotion
	// itself (default 60s).
	Wait   time.Duration
	Logger *slog.Logger
}

// PromoteResult says what happened.
type PromoteResult struct {
	Timeline     int32         `json:"timeline"`
	PromotionLSN string        `json:"promotion_lsn"`
	Duration     time.Duration `json:"duration_ns"`
	ReplayedTo   string        `json:"replayed_to"`
	Slots        []string      `json:"slots_to_recreate,omitempty"`
	// Reopened are databases a fence of the old primary had closed here
	// (replayed), reopened once this server was the primary.
	Reopened  []string `json:"reopened,omitempty"`
	NextSteps []string `json:"next_steps"`
}

// Promote turns a standby into a primary: refuse on a primary, while its
// WAL receiver still streams from a live primary (LivePrimaryError: never
// overridden, Force included), while a primary still answers at the
// address primary_conninfo names (PrimaryAnswersError, unless Force), or
// when replay lags past MaxLag (unless
// Force), wait until replay reaches what was
// received, pg_promote(true, wait), CHECKPOINT, confirm it left recovery and
// report the new timeline.
func Promote(ctx context.Context, o PromoteOptions) (*PromoteResult, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Wait <= 0 {
		o.Wait = 60 * time.Second
	}
	if o.MaxLag.IsZero() {
		o.MaxLag = Limit{Bytes: 16 << 20}
	}
	// from a maintenance database: a fence of the old primary, replayed
	// here, closes the one the DSN names
	conn, target, err := connectMaintenance(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	start := time.Now()
	st, err := ReadStatus(ctx, conn, o.MaxLag)
	if err != nil {
		return nil, err
	}
	if st.Role != "standby" {
		return nil, ErrNotStandby
	}
	r := st.Receiver
	if r.Status == "streaming" {
		return nil, &LivePrimaryError{Upstream: r.SenderHost}
	}
	if err := probeUpstream(ctx, conn, logger); err != nil {
		var answers *PrimaryAnswersError
		if !errors.As(err, &answers) || !o.Force {
			return nil, err
		}
		logger.Warn("promoting with --force although the old primary answers", "err", err)
	}
	if o.ArchivedTimelines != nil {
		if err := promotedElsewhere(ctx, conn, o.ArchivedTimelines, o.Force, promoteOp, logger); err != nil {
			return nil, err
		}
	}
	if over, why := o.MaxLag.Exceeded(r.ReplayGapBytes, time.Duration(r.ReplayDelaySecs*float64(time.Second))); over && !o.Force {
		return nil, &LagError{Why: why}
	}
	if r.ReplayPaused {
		if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_wal_replay_resume()"); err != nil {
			return nil, fmt.Errorf("resuming paused replay: %w", err)
		}
		logger.Info("replay was paused; resumed it before promoting")
	}
	// Replay everything received; the WAL receiver may still be adding more
	// when the primary is alive, so aim at what was received when we looked.
	deadline := time.Now().Add(o.Wait)
	for {
		var caughtUp bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_last_wal_replay_lsn() >= $1::pg_lsn", r.ReceiveLSN).Scan(&caughtUp); err != nil {
			return nil, fmt.Errorf("waiting for replay: %w", err)
		}
		if caughtUp || r.ReceiveLSN == "" {
			break
		}
		if time.Now().After(deadline) {
			if !o.Force {
				return nil, fmt.Errorf("replay did not reach %s within %s; nothing changed", r.ReceiveLSN, o.Wait)
			}
			logger.Warn("promoting before replay caught up (--force)", "received", r.ReceiveLSN)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	res := &PromoteResult{}
	_ = conn.QueryRow(ctx, pg.Marker+"SELECT coalesce(pg_catalog.pg_last_wal_replay_lsn()::text, '')").Scan(&res.ReplayedTo)

	var promoted bool
	waitSecs := max(int(o.Wait.Seconds()), 1)
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_promote(true, $1)", waitSecs).Scan(&promoted); err != nil {
		return nil, fmt.Errorf("pg_promote: %w", err)
	}
	if !promoted {
		return nil, fmt.Errorf("pg_promote did not finish within %ds; check the server log", waitSecs)
	}
	if _, err := conn.Exec(ctx, pg.Marker+"CHECKPOINT"); err != nil {
		return nil, fmt.Errorf("checkpoint after promotion: %w", err)
	}
	var inRecovery bool
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_current_wal_lsn()::text,
		(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())`).Scan(&inRecovery, &res.PromotionLSN, &res.Timeline); err != nil {
		return nil, fmt.Errorf("confirming promotion: %w", err)
	}
	if inRecovery {
		return nil, errors.New("the server still reports recovery after pg_promote")
	}
	if reopened, err := reopenFenced(ctx, conn, target); err != nil {
		return nil, fmt.Errorf("promoted, but %w: run replica fence --undo on this server", err)
	} else if reopened {
		res.Reopened = []string{target}
		logger.Info("reopened the database the old primary's fence had closed", "database", target)
	}
	res.Duration = time.Since(start)
	rows, err := conn.Query(ctx, pg.Marker+"SELECT slot_name::text FROM pg_catalog.pg_replication_slots ORDER BY 1")
	if err == nil {
		res.Slots, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	res.NextSteps = []string{
		"fence the old primary if it is still running: spiredb replica fence --dsn OLD_PRIMARY_DSN (or stop it)",
		"point SPIRE's connection_string at this server and restart or roll the spire-servers",
		"rebuild the other standbys from this server: spiredb replica bootstrap --primary-dsn NEW_PRIMARY_DSN ...",
		"drop the old primary's slots once its standbys are rebuilt: spiredb replica slots --dsn OLD_PRIMARY_DSN --drop NAME",
	}
	logger.Info("promoted", "timeline", res.Timeline, "lsn", res.PromotionLSN, "duration", res.Duration.Round(time.Millisecond))
	return res, nil
}

// ListSlots lists the replication slots; DropSlot drops one that no standby
// is using.
func ListSlots(ctx context.Context, opts pg.Options) ([]Slot, error) {
	var slots []Slot
	err := pg.WithConn(ctx, opts, func(conn *pgx.Conn) (err error) {
		slots, err = readSlots(ctx, conn)
		return err
	})
	return slots, err
}

// DropSlot drops a replication slot; it refuses an active one.
func DropSlot(ctx context.Context, opts pg.Options, name string) error {
	conn, err := pg.Connect(ctx, opts)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var active *bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)", name).Scan(&active); err != nil {
		return err
	}
	if active == nil {
		return fmt.Errorf("no replication slot %q", name)
	}
	if *active {
		return fmt.Errorf("slot %q is in use by a standby: stop that standby first", name)
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_drop_replication_slot($1)", name); err != nil {
		return fmt.Errorf("dropping slot %s: %w", name, err)
	}
	return nil
}

// Timeline is the newest timeline the server knows: on a primary, its
// current WAL file's; on a standby, its checkpoint's and its receiver's;
// on both, the history files in its own pg_wal (a standby that followed a
// promotion has the new timeline's history there before its next
// restartpoint).
func Timeline(ctx context.Context, conn *pgx.Conn) (uint32, error) {
	var tli int64
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT greatest(
		(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
		CASE WHEN pg_catalog.pg_is_in_recovery() THEN 0
		  ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
		coalesce((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver), 0),
		CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_ls_waldir()', 'EXECUTE') THEN
		  coalesce((SELECT pg_catalog.max(('x' || pg_catalog.substr(name, 1, 8))::bit(32)::bigint) FROM pg_catalog.pg_ls_waldir()
		            WHERE name ~ '^[0-9A-F]{8}\.history$'), 0)
		ELSE 0 END)::bigint`).Scan(&tli); err != nil {
		return 0, fmt.Errorf("reading the server's timeline: %w", err)
	}
	return uint32(tli), nil
}

// promotedElsewhere refuses when the archive holds a timeline newer than
// any the server knows (Timeline).
func promotedElsewhere(ctx context.Context, conn *pgx.Conn, archived func(context.Context) ([]uint32, error), force bool, op string, logger *slog.Logger) error {
	mine, err := Timeline(ctx, conn)
	if err != nil {
		return err
	}
	tls, err := archived(ctx)
	if err != nil {
		if !force {
			without := "pass --force"
			if op == switchoverOp || op == followOp {
				without = "name no store"
			}
			return fmt.Errorf("reading the WAL archive's timelines (to see whether another server was promoted already): %w; %s to go on without that check", err, without)
		}
		logger.Warn("could not read the WAL archive's timelines; going on (--force)", "err", err)
		return nil
	}
	if len(tls) == 0 || tls[len(tls)-1] <= mine {
		return nil
	}
	e := &PromotedElsewhereError{Timeline: mine, Archived: tls[len(tls)-1], Refused: op}
	if !force {
		return e
	}
	logger.Warn("going on although another server was promoted already (--force)", "timeline", e.Timeline, "archived", e.Archived)
	return nil
}

// reopenFenced reopens db on a server just promoted when a fence of the old
// primary, replayed, had closed it (what switchover does on its new
// primary): the failover's point is that SPIRE can write here.
func reopenFenced(ctx context.Context, conn *pgx.Conn, db string) (bool, error) {
	var allow *bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1)", db).Scan(&allow); err != nil {
		return false, err
	}
	if allow == nil || *allow {
		return false, nil
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SET default_transaction_read_only = off"); err != nil {
		return false, err
	}
	return true, setAllowConnections(ctx, conn, db, true)
}
