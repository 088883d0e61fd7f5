package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
)

// SwitchoverOptions configure Switchover.
type SwitchoverOptions struct {
	Primary pg.Options
	Standby pg.Options
	// MaxLag refuses to start when the standby's replay is further behind
	// the primary (default 16 MiB).
	MaxLag Limit
	// Wait bounds the wait for the standby to replay the primary's last
	// write, and the promotion (default 30s).
	Wait time.Duration
	// Databases are fenced on the primary and reopened on the new primary
	// (default: the Primary DSN's database).
	Databases []string
	// ArchivedTimelines, when set, lists the timelines whose history the
	// cluster's WAL archive holds: a primary on an older timeline was
	// replaced already, and a switchover from it is refused before
	// anything is fenced (*PromotedElsewhereError). See PromoteOptions.
	ArchivedTimelines func(context.Context) ([]uint32, error)
	Logger            *slog.Logger
}

// SwitchoverResult says what Switchover did and how long each step took.
type SwitchoverResult struct {
	OldTimeline int32        `json:"old_timeline"`
	NewTimeline int32        `json:"new_timeline"`
	LagAtStart  int64        `json:"lag_at_start_bytes"`
	FenceLSN    string       `json:"fence_lsn"`
	ReplayedTo  string       `json:"replayed_to"`
	Fence       *FenceResult `json:"fence"`
	// Fencing, CatchUp, Promotion and Reopen are the steps of the window in
	// which neither server takes SPIRE's writes; Unavailable is their sum
	// (spiredb's own part of the switchover).
	Fencing     time.Duration `json:"fencing_ns"`
	CatchUp     time.Duration `json:"catch_up_ns"`
	Promotion   time.Duration `json:"promotion_ns"`
	Reopen      time.Duration `json:"reopen_ns"`
	Unavailable time.Duration `json:"unavailable_ns"`
	NewPrimary  string        `json:"new_primary"`
	Routing     []string      `json:"routing"`
	NextSteps   []string      `json:"next_steps"`
}

// SwitchoverError is a switchover that stopped; RolledBack says the old
// primary was unfenced (nothing promoted: SPIRE can write there again).
type SwitchoverError struct {
	Step       string
	RolledBack bool
	Err        error
}

func (e *SwitchoverError) Error() string {
	s := "switchover stopped at " + e.Step + ": " + e.Err.Error()
	if e.RolledBack {
		s += "; the old primary was unfenced and nothing was promoted"
	}
	return s
}

func (e *SwitchoverError) Unwrap() error { return e.Err }

// ErrNotFollowing is returned when the standby cannot be shown to stream
// from the primary.
var ErrNotFollowing = errors.New("the standby does not stream from this primary")

// Switchover moves the primary role from Primary to Standby with no
// acknowledged write lost: it refuses unless Standby streams from Primary
// within MaxLag; fences Primary (Fence: SPIRE's sessions end, its database
// refuses connections); waits until Standby has replayed Primary's last
// WAL position; promotes Standby and reopens the fenced databases there
// (the fence was replicated to it); verifies the new timeline. Until the
// promotion it rolls back on failure (unfences Primary); after it, Primary
// stays fenced.
func Switchover(ctx context.Context, o SwitchoverOptions) (*SwitchoverResult, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Wait <= 0 {
		o.Wait = 30 * time.Second
	}
	if o.MaxLag.IsZero() {
		o.MaxLag = Limit{Bytes: 16 << 20}
	}
	pconn, target, err := connectMaintenance(ctx, o.Primary)
	if err != nil {
		return nil, fmt.Errorf("primary: %w", err)
	}
	defer pconn.Close(context.WithoutCancel(ctx))
	sconn, _, err := connectMaintenance(ctx, o.Standby)
	if err != nil {
		return nil, fmt.Errorf("standby: %w", err)
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	if len(o.Databases) == 0 {
		o.Databases = []string{target}
	}
	res := &SwitchoverResult{}
	lag, err := checkFollows(ctx, pconn, sconn, o.MaxLag, res)
	if err != nil {
		return nil, err
	}
	res.LagAtStart = lag
	logger.Info("standby follows the primary", "timeline", res.OldTimeline, "lag_bytes", lag)
	if o.ArchivedTimelines != nil {
		if err := promotedElsewhere(ctx, pconn, o.ArchivedTimelines, false, switchoverOp, logger); err != nil {
			return nil, err
		}
	}

	if err := pinRewindWAL(ctx, pconn); err != nil {
		logger.Warn("could not keep the WAL replica rejoin needs on the old primary; rejoin may need --reclone-on-failure", "err", err)
	}

	// From here until the promotion, a failure unfences the primary.
	start := time.Now()
	fo := FenceOptions{Databases: o.Databases}
	res.Fence, err = fence(ctx, pconn, fo, logger)
	rollback := func(step string, cause error) error {
		fo.Undo = true
		_, uerr := fence(context.WithoutCancel(ctx), pconn, fo, logger)
		if uerr != nil {
			return &SwitchoverError{Step: step, Err: fmt.Errorf("%w; unfencing the old primary failed too (%w): run replica fence --undo", cause, uerr)}
		}
		return &SwitchoverError{Step: step, RolledBack: true, Err: cause}
	}
	if err != nil {
		return nil, rollback("fence", err)
	}
	// Every commit acknowledged on the primary happened before its session
	// was ended, so its commit record precedes a transaction of our own
	// committed now; committing it with a local flush (fence set
	// synchronous_commit = local) flushes everything up to it. The flush
	// position after it is then the target: not the insert position, which
	// can run ahead with records nobody flushes (hint-bit images under
	// wal_log_hints, standby snapshots) until the WAL writer wakes.
	if _, err := pconn.Exec(ctx, pg.Marker+"SELECT pg_catalog.txid_current()"); err != nil {
		return nil, rollback("flushing the primary's WAL", err)
	}
	if err := pconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_current_wal_flush_lsn()::text").Scan(&res.FenceLSN); err != nil {
		return nil, rollback("reading the primary's last WAL position", err)
	}
	res.Fencing = time.Since(start)
	logger.Info("primary fenced", "lsn", res.FenceLSN, "sessions_ended", len(res.Fence.Terminated))

	caught := time.Now()
	if err := waitReplay(ctx, sconn, res.FenceLSN, o.Wait); err != nil {
		return nil, rollback("catch-up", err)
	}
	_ = sconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_last_wal_replay_lsn()::text").Scan(&res.ReplayedTo)
	res.CatchUp = time.Since(caught)

	promoting := time.Now()
	if err := promoteAndWait(ctx, sconn, o.Wait); err != nil {
		// the standby may still become a primary: never unfence now
		return nil, &SwitchoverError{Step: "promotion", Err: fmt.Errorf("%w; the old primary stays fenced: check the standby's log, then either finish (replica promote) or go back (replica fence --undo on the old primary)", err)}
	}
	res.Promotion = time.Since(promoting)

	reopening := time.Now()
	if _, err := sconn.Exec(ctx, pg.Marker+"SET default_transaction_read_only = off"); err != nil {
		return nil, &SwitchoverError{Step: "reopen", Err: err}
	}
	for _, db := range o.Databases {
		var allow *bool
		if err := sconn.QueryRow(ctx, pg.Marker+"SELECT (SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1)", db).Scan(&allow); err != nil {
			return nil, &SwitchoverError{Step: "reopen", Err: err}
		}
		if allow != nil && !*allow {
			if err := setAllowConnections(ctx, sconn, db, true); err != nil {
				return nil, &SwitchoverError{Step: "reopen", Err: fmt.Errorf("%w: the new primary is up but SPIRE cannot connect: run replica fence --undo on it", err)}
			}
		}
	}
	res.Reopen = time.Since(reopening)
	res.Unavailable = time.Since(start)
	logger.Info("standby promoted and open", "unavailable", res.Unavailable.Round(time.Millisecond))

	// pg_rewind (replica rejoin) reads the new timeline from the control
	// file: a checkpoint writes it there
	if _, err := sconn.Exec(ctx, pg.Marker+"CHECKPOINT"); err != nil {
		logger.Warn("checkpoint on the new primary failed; run CHECKPOINT there before replica rejoin", "err", err)
	}
	var inRecovery bool
	if err := sconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, &SwitchoverError{Step: "verify", Err: err}
	}
	if res.NewTimeline, err = currentTimeline(ctx, sconn); err != nil {
		return nil, &SwitchoverError{Step: "verify", Err: err}
	}
	if inRecovery {
		return nil, &SwitchoverError{Step: "verify", Err: errors.New("the standby still reports recovery after pg_promote")}
	}
	if res.NewTimeline <= res.OldTimeline {
		return nil, &SwitchoverError{Step: "verify", Err: fmt.Errorf("new timeline %d is not after %d", res.NewTimeline, res.OldTimeline)}
	}
	res.NewPrimary, res.Routing, res.NextSteps = routing(o)
	// the old primary is fenced for good: mark it, so that fence --undo
	// refuses to make it a second primary; the new one may carry a mark
	// from an earlier life as an old primary
	by := fmt.Sprintf("%s (timeline %d, %s)", res.NewPrimary, res.NewTimeline, time.Now().UTC().Format(time.RFC3339))
	if err := setSuperseded(ctx, pconn, by); err != nil {
		logger.Warn("could not mark the old primary as superseded (ALTER SYSTEM needs a superuser): replica fence --undo on it would not refuse", "err", err)
	}
	if by, err := readSuperseded(ctx, sconn); err == nil && by != "" {
		if err := setSuperseded(ctx, sconn, ""); err != nil {
			logger.Warn("could not remove an old switchover's mark from the new primary", "err", err)
		}
	}
	return res, nil
}

// RewindSlot is the physical slot Switchover creates on the old primary
// just before fencing it: a physical slot reserves WAL from the last
// checkpoint's redo position, which is where pg_rewind starts reading the
// old primary's WAL; without it the old primary's shutdown checkpoint may
// recycle that WAL and the rewind fails. Rejoin removes it.
const RewindSlot = "spiredb_rewind"

func pinRewindWAL(ctx context.Context, conn *pgx.Conn) error {
	var exists bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active)", RewindSlot).Scan(&exists); err != nil {
		return err
	}
	if exists {
		if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_drop_replication_slot($1)", RewindSlot); err != nil {
			return err
		}
	}
	_, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", RewindSlot)
	return err
}

// promoteAndWait asks for the promotion and polls for its end every few
// milliseconds (pg_promote(true) looks only every 100 ms).
func promoteAndWait(ctx context.Context, conn *pgx.Conn, wait time.Duration) error {
	var signalled bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_promote(false)").Scan(&signalled); err != nil {
		return fmt.Errorf("pg_promote: %w", err)
	}
	if !signalled {
		return errors.New("pg_promote could not signal the postmaster")
	}
	deadline := time.Now().Add(wait)
	for {
		var inRecovery bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return fmt.Errorf("waiting for the promotion: %w", err)
		}
		if !inRecovery {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the promotion did not finish within %s", wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// checkFollows proves that the standby is a streaming copy of the primary
// on its timeline, and within maxLag; it returns the replay lag in bytes.
func checkFollows(ctx context.Context, pconn, sconn *pgx.Conn, maxLag Limit, res *SwitchoverResult) (int64, error) {
	var pRecovery, sRecovery bool
	var pSys, sSys int64
	if err := pconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery(), (SELECT system_identifier FROM pg_catalog.pg_control_system())").Scan(&pRecovery, &pSys); err != nil {
		return 0, fmt.Errorf("checking the primary: %w", err)
	}
	if pRecovery {
		return 0, errors.New("--primary-dsn is a standby (in recovery): give the current primary")
	}
	if err := sconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery(), (SELECT system_identifier FROM pg_catalog.pg_control_system())").Scan(&sRecovery, &sSys); err != nil {
		return 0, fmt.Errorf("checking the standby: %w", err)
	}
	if !sRecovery {
		return 0, errors.New("--standby-dsn is not a standby (not in recovery): nothing to switch over to")
	}
	var delay string
	if err := sconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.current_setting('recovery_min_apply_delay')").Scan(&delay); err != nil {
		return 0, fmt.Errorf("checking the standby: %w", err)
	}
	if delay != "0" {
		return 0, fmt.Errorf("the standby applies WAL %s late (recovery_min_apply_delay): it cannot catch up within the switchover; pick another standby or reset the delay", delay)
	}
	if pSys != sSys {
		return 0, fmt.Errorf("%w: it is a copy of another cluster (system identifier %d, the primary's is %d)", ErrNotFollowing, sSys, pSys)
	}
	tli, err := currentTimeline(ctx, pconn)
	if err != nil {
		return 0, err
	}
	res.OldTimeline = tli
	var status, slot, appName, replayLSN string
	var receivedTLI int32
	err = sconn.QueryRow(ctx, pg.Marker+`SELECT coalesce(status, ''), coalesce(received_tli, 0), coalesce(slot_name, ''), coalesce(conninfo, ''),
		coalesce(pg_catalog.pg_last_wal_replay_lsn()::text, '0/0') FROM pg_catalog.pg_stat_wal_receiver`).Scan(&status, &receivedTLI, &slot, &appName, &replayLSN)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: it has no WAL receiver (restoring from an archive, or disconnected)", ErrNotFollowing)
	}
	if err != nil {
		return 0, fmt.Errorf("checking the standby's WAL receiver: %w", err)
	}
	if status != "streaming" {
		return 0, fmt.Errorf("%w: its WAL receiver is %q, not streaming", ErrNotFollowing, status)
	}
	if receivedTLI != tli {
		return 0, fmt.Errorf("%w: it receives timeline %d, the primary is on %d", ErrNotFollowing, receivedTLI, tli)
	}
	if p, err := dsn.Parse(appName); err == nil {
		appName = p["application_name"]
	} else {
		appName = ""
	}
	// the primary must see this standby's walsender: by its slot, else by
	// the application_name its primary_conninfo gives
	var walsenders int
	var lagSecs float64
	err = pconn.QueryRow(ctx, pg.Marker+`SELECT count(*), coalesce(max(extract(epoch FROM r.replay_lag)), 0)::float8
		FROM pg_catalog.pg_stat_replication r LEFT JOIN pg_catalog.pg_replication_slots s ON s.active_pid = r.pid
		WHERE r.state = 'streaming' AND (($1 <> '' AND s.slot_name = $1) OR ($1 = '' AND r.application_name = $2))`, slot, appName).Scan(&walsenders, &lagSecs)
	if err != nil {
		return 0, fmt.Errorf("checking the primary's standbys: %w", err)
	}
	if walsenders != 1 {
		how := fmt.Sprintf("slot %q", slot)
		if slot == "" {
			how = fmt.Sprintf("application_name %q", appName)
		}
		return 0, fmt.Errorf("%w: the primary has %d streaming standby(s) with %s (want exactly 1)", ErrNotFollowing, walsenders, how)
	}
	var lag int64
	if err := pconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), $1::pg_lsn)::bigint", replayLSN).Scan(&lag); err != nil {
		return 0, fmt.Errorf("measuring the lag: %w", err)
	}
	if over, why := maxLag.Exceeded(lag, time.Duration(lagSecs*float64(time.Second))); over {
		return lag, &LagError{Why: why, Switchover: true}
	}
	return lag, nil
}

// currentTimeline is the primary's timeline, from its current WAL file
// name (the control file's checkpoint timeline lags behind a promotion
// until the next checkpoint).
func currentTimeline(ctx context.Context, conn *pgx.Conn) (int32, error) {
	var tli int32
	err := conn.QueryRow(ctx, pg.Marker+"SELECT ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int").Scan(&tli)
	if err != nil {
		return 0, fmt.Errorf("reading the timeline: %w", err)
	}
	return tli, nil
}

// waitReplay waits until the standby has replayed lsn.
func waitReplay(ctx context.Context, conn *pgx.Conn, lsn string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var done bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT coalesce(pg_catalog.pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&done); err != nil {
			return fmt.Errorf("reading the standby's replay position: %w", err)
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the standby did not replay the primary's last WAL position %s within %s", lsn, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func routing(o SwitchoverOptions) (newPrimary string, routing, next []string) {
	newPrimary, oldPrimary := "the standby", "the old primary"
	if cfg, err := pg.ParseConfig(o.Standby); err == nil {
		newPrimary = fmt.Sprintf("host=%s port=%d", cfg.Host, cfg.Port)
	}
	if cfg, err := pg.ParseConfig(o.Primary); err == nil {
		oldPrimary = fmt.Sprintf("host=%s port=%d", cfg.Host, cfg.Port)
	}
	routing = []string{
		"SPIRE: point the DataStore \"sql\" connection_string at " + newPrimary + " (same dbname, user and password) and roll the spire-servers, or re-point the DNS name it uses",
		"Kubernetes: point the Service SPIRE connects through at the new primary (its selector or Endpoints); SPIRE reconnects by itself",
		"ro_connection_string: standbys of " + oldPrimary + " cannot follow the new timeline by themselves; point SPIRE's reads at the new primary until they are rejoined or rebuilt",
	}
	next = []string{
		"turn the old primary into a standby of the new one: spiredb replica rejoin --dsn OLD_PRIMARY_DSN --primary-dsn NEW_PRIMARY_DSN --data-dir OLD_DATA_DIR --start --port PORT",
		"drop the old primary's replication slot for this standby once nothing needs it (replica slots --drop on the old primary before rejoin, or it goes with the rewind)",
	}
	return newPrimary, routing, next
}
