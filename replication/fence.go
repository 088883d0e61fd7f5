package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// FenceOptions configure Fence.
type FenceOptions struct {
	// Conn reaches the server to fence. spiredb works from a maintenance
	// database (postgres, else template1) so that it keeps its own access
	// while the fenced databases refuse every connection.
	Conn pg.Options
	// Databases to close; default: Conn's database (SPIRE's datastore).
	Databases []string
	// Undo lifts the fence instead.
	Undo bool
	// Force lifts it even on a server a switchover superseded (its new
	// primary must be gone): SupersededError otherwise.
	Force bool
	// ArchivedTimelines, when set, lists the timelines whose history the
	// cluster's WAL archive holds: Undo on a server whose timeline is
	// older (a failover promoted its standby) is refused with a
	// *PromotedElsewhereError unless Force. See PromoteOptions.
	ArchivedTimelines func(context.Context) ([]uint32, error)
	// Settle bounds the wait for the ended sessions to be gone (default 10s).
	Settle time.Duration
	Logger *slog.Logger
}

// FencedDatabase is one database's fence.
type FencedDatabase struct {
	Name string `json:"name"`
	// Already: it was fenced (or, with Undo, open) before this run.
	Already bool `json:"already"`
}

// Session is a server session Fence ended or could not end.
type Session struct {
	PID      int    `json:"pid"`
	Database string `json:"database"`
	Role     string `json:"role"`
}

// FenceResult says what Fence did.
type FenceResult struct {
	Databases []FencedDatabase `json:"databases"`
	// ReadOnly is the server-wide second layer,
	// default_transaction_read_only: "set", "already set", "reset",
	// or why it was skipped.
	ReadOnly   string    `json:"read_only"`
	Terminated []Session `json:"terminated"`
	Undone     bool      `json:"undone,omitempty"`
}

// AlreadyFenced reports whether every database was fenced before this run.
func (r *FenceResult) AlreadyFenced() bool {
	for _, d := range r.Databases {
		if !d.Already {
			return false
		}
	}
	return len(r.Databases) > 0
}

// FenceError is returned when sessions of a fenced database survive:
// the fence is in place for new connections but not complete.
type FenceError struct{ Survivors []Session }

func (e *FenceError) Error() string {
	var b strings.Builder
	for i, s := range e.Survivors {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "pid %d (%s on %s)", s.PID, s.Role, s.Database)
	}
	return "new connections are refused, but these sessions could not be ended: " + b.String() +
		"; the fencing role needs pg_signal_backend (or superuser), or stop the server"
}

// supersededGUC marks, in the old primary's postgresql.auto.conf (which
// is not replicated), that a switchover promoted its standby: the server
// is fenced for good, and reopening it makes two primaries.
const supersededGUC = "spiredb.superseded_by"

// SupersededError is returned when asked to lift the fence of a server a
// switchover superseded.
type SupersededError struct{ By string }

func (e *SupersededError) Error() string {
	return "refusing to lift the fence: a switchover made " + e.By + " the primary in this server's place, and reopening it makes two primaries; " +
		"make it a standby of the new one (replica rejoin), or, if the new primary is gone for good, pass --force"
}

// readSuperseded returns the switchover mark ("" when none).
func readSuperseded(ctx context.Context, conn *pgx.Conn) (string, error) {
	var by string
	err := conn.QueryRow(ctx, pg.Marker+"SELECT coalesce(pg_catalog.current_setting($1, true), '')", supersededGUC).Scan(&by)
	return by, err
}

// setSuperseded writes (by != "") or removes the switchover mark with
// ALTER SYSTEM and a reload; a superuser's only. ALTER SYSTEM accepts a
// custom parameter once the session knows its placeholder.
func setSuperseded(ctx context.Context, conn *pgx.Conn, by string) error {
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.set_config($1, $2, false)", supersededGUC, by); err != nil {
		return err
	}
	stmt := "ALTER SYSTEM RESET " + supersededGUC
	if by != "" {
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.format('ALTER SYSTEM SET %s = %L', $1::text, $2::text)", supersededGUC, by).Scan(&stmt); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, pg.Marker+stmt); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_reload_conf()")
	return err
}

// ErrIsStandby is returned when asked to fence a standby.
var ErrIsStandby = errors.New("this server is a standby (in recovery): it takes no writes; fence the primary")

// Fence makes a primary refuse SPIRE's writes, whatever its sessions ask
// for (lib/pq opens every transaction with BEGIN READ WRITE, which
// overrides default_transaction_read_only):
//
//  1. ALTER DATABASE ... ALLOW_CONNECTIONS false on each database: no new
//     session of any role, superusers included, can connect to it;
//  2. every other session of those databases is ended, and again until
//     none is left (a session that was connecting while 1 committed);
//  3. server-wide, default_transaction_read_only = on (ALTER SYSTEM and a
//     reload) with the sessions holding a write transaction elsewhere
//     ended: a second layer for other databases; skipped with a reason when
//     the role may not ALTER SYSTEM.
//
// The fence is in the catalog, so it survives a restart, and it is
// replicated: a standby that replays it refuses connections to those
// databases too until it is promoted and Switchover lifts it there.
// Fence is idempotent; Undo lifts both layers.
func Fence(ctx context.Context, o FenceOptions) (*FenceResult, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	conn, target, err := connectMaintenance(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if len(o.Databases) == 0 {
		o.Databases = []string{target}
	}
	return fence(ctx, conn, o, logger)
}

func fence(ctx context.Context, conn *pgx.Conn, o FenceOptions, logger *slog.Logger) (*FenceResult, error) {
	var inRecovery bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, fmt.Errorf("checking the server: %w", err)
	}
	if inRecovery {
		return nil, ErrIsStandby
	}
	// spiredb's own session must write (ALTER DATABASE) on a server whose
	// default a previous fence made read-only; and the fence must be
	// durable at once whatever synchronous_commit says, without waiting
	// for a synchronous standby that may be the one that is gone
	if _, err := conn.Exec(ctx, pg.Marker+"SET default_transaction_read_only = off; SET synchronous_commit = local"); err != nil {
		return nil, err
	}
	var superseded string
	if o.Undo {
		by, err := readSuperseded(ctx, conn)
		if err != nil {
			return nil, fmt.Errorf("checking for a switchover: %w", err)
		}
		if by != "" && !o.Force {
			return nil, &SupersededError{By: by}
		}
		superseded = by
		if o.ArchivedTimelines != nil {
			if err := promotedElsewhere(ctx, conn, o.ArchivedTimelines, o.Force, reopenOp, logger); err != nil {
				return nil, err
			}
		}
	}
	res := &FenceResult{Undone: o.Undo}
	for _, db := range o.Databases {
		var allow *bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1)", db).Scan(&allow); err != nil {
			return nil, fmt.Errorf("reading database %s: %w", db, err)
		}
		if allow == nil {
			return nil, fmt.Errorf("no database %q on this server", db)
		}
		// fenced means connections are not allowed
		already := *allow == o.Undo
		res.Databases = append(res.Databases, FencedDatabase{Name: db, Already: already})
		if already {
			continue
		}
		if err := setAllowConnections(ctx, conn, db, o.Undo); err != nil {
			return res, err
		}
		logger.Info("database "+map[bool]string{false: "fenced", true: "reopened"}[o.Undo], "database", db)
	}
	res.ReadOnly = setReadOnly(ctx, conn, !o.Undo)
	if o.Undo {
		if superseded != "" {
			if err := setSuperseded(ctx, conn, ""); err != nil {
				logger.Warn("the fence is lifted, but the switchover's mark could not be removed (ALTER SYSTEM RESET "+supersededGUC+" as a superuser)", "err", err)
			}
		}
		return res, nil
	}
	settle := o.Settle
	if settle <= 0 {
		settle = 10 * time.Second
	}
	terminated, err := endSessions(ctx, conn, o.Databases, settle)
	res.Terminated = terminated
	if len(terminated) > 0 {
		logger.Info("sessions ended", "count", len(terminated))
	}
	return res, err
}

func setAllowConnections(ctx context.Context, conn *pgx.Conn, db string, allow bool) error {
	_, err := conn.Exec(ctx, pg.Marker+fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", pgx.Identifier{db}.Sanitize(), allow))
	if pg.SQLState(err) == "42501" {
		return fmt.Errorf("changing ALLOW_CONNECTIONS of database %s needs its owner or a superuser: %w", db, err)
	}
	if err != nil {
		return fmt.Errorf("ALTER DATABASE %s ALLOW_CONNECTIONS %t: %w", db, allow, err)
	}
	return nil
}

// setReadOnly sets or resets default_transaction_read_only server-wide and
// says what it did.
func setReadOnly(ctx context.Context, conn *pgx.Conn, on bool) string {
	var current string
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT coalesce((SELECT setting FROM pg_catalog.pg_file_settings
		WHERE name = 'default_transaction_read_only' AND applied ORDER BY seqno DESC LIMIT 1), 'off')`).Scan(&current); err != nil {
		// pg_file_settings is for superusers and pg_read_all_settings
		current = "unknown"
	}
	if (current == "on") == on && current != "unknown" {
		return map[bool]string{true: "already set", false: "already off"}[on]
	}
	stmt := "ALTER SYSTEM RESET default_transaction_read_only"
	if on {
		stmt = "ALTER SYSTEM SET default_transaction_read_only = on"
	}
	if _, err := conn.Exec(ctx, pg.Marker+stmt); err != nil {
		if pg.SQLState(err) == "42501" {
			return "skipped: ALTER SYSTEM needs a superuser (or GRANT ALTER SYSTEM ON PARAMETER default_transaction_read_only)"
		}
		return "skipped: " + err.Error()
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_reload_conf()"); err != nil {
		return "written but not reloaded: " + err.Error()
	}
	return map[bool]string{true: "set", false: "reset"}[on]
}

// endSessions ends every client session of dbs and every session holding
// a write transaction elsewhere, then looks again until quietLooks looks in
// a row, pollEvery apart, find none of dbs (a session that was connecting
// while the fence committed shows up late) or settle passes.
func endSessions(ctx context.Context, conn *pgx.Conn, dbs []string, settle time.Duration) ([]Session, error) {
	var ended []Session
	deadline := time.Now().Add(settle)
	quiet := 0
	for {
		rows, err := conn.Query(ctx, pg.Marker+fenceSessionsSQL, dbs)
		if err != nil {
			return ended, fmt.Errorf("listing sessions: %w", err)
		}
		sessions, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Session])
		if err != nil {
			return ended, fmt.Errorf("listing sessions: %w", err)
		}
		var survivors []Session
		found := 0
		for _, s := range sessions {
			fenced := slices.Contains(dbs, s.Database)
			if fenced {
				found++
			}
			var ok bool
			err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_terminate_backend($1)", s.PID).Scan(&ok)
			switch {
			case pg.SQLState(err) == "42501":
				if fenced {
					survivors = append(survivors, s)
				}
			case err != nil:
				return ended, fmt.Errorf("ending session %d: %w", s.PID, err)
			case ok && !slices.ContainsFunc(ended, func(e Session) bool { return e.PID == s.PID }):
				ended = append(ended, s)
			}
		}
		if found == 0 {
			if quiet++; quiet >= quietLooks {
				return ended, nil
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			if len(survivors) > 0 {
				return ended, &FenceError{Survivors: survivors}
			}
			return ended, fmt.Errorf("sessions of %s were still there after %s", strings.Join(dbs, ", "), settle)
		}
		select {
		case <-ctx.Done():
			return ended, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

const (
	quietLooks = 3
	pollEvery  = 10 * time.Millisecond
)

// connectMaintenance connects to the server o reaches, in its postgres
// database (else template1, else o's own), and returns o's database name:
// the one SPIRE uses, which a fence closes.
func connectMaintenance(ctx context.Context, o pg.Options) (*pgx.Conn, string, error) {
	cfg, err := pg.ParseConfig(o)
	if err != nil {
		return nil, "", err
	}
	target := cfg.Database
	var lastErr error
	for _, db := range []string{"postgres", "template1", target} {
		m := o
		m.Database = db
		conn, err := pg.Connect(ctx, m)
		if err == nil {
			// fence terminates every other backend until none is left: it
			// must stay on one backend of its own
			if err := pg.RequireSession(ctx, conn, m); err != nil {
				_ = conn.Close(context.WithoutCancel(ctx))
				return nil, "", err
			}
			return conn, target, nil
		}
		lastErr = err
		switch pg.SQLState(err) {
		case "3D000", "55000", "42501": // no such database, not accepting connections, no CONNECT
			continue
		}
		return nil, "", err
	}
	return nil, "", lastErr
}
