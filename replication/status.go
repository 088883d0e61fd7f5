package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// Status is what a server says about replication.
type Status struct {
	Role     string    `json:"role"` // primary or standby
	Server   string    `json:"server_version"`
	Standbys []Standby `json:"standbys,omitempty"` // on a primary
	Slots    []Slot    `json:"slots,omitempty"`    // on a primary
	Receiver *Receiver `json:"receiver,omitempty"` // on a standby
	MaxLag   Limit     `json:"max_lag"`
	Problems []string  `json:"problems,omitempty"`
	At       time.Time `json:"at"`
}

// Standby is one walsender's view of a connected standby, with a verdict.
type Standby struct {
	PID             int32   `json:"pid"`
	ApplicationName string  `json:"application_name"`
	ClientAddr      string  `json:"client_addr,omitempty"`
	State           string  `json:"state"`
	SyncState       string  `json:"sync_state"`
	Slot            string  `json:"slot,omitempty"`
	SentLSN         string  `json:"sent_lsn"`
	WriteLSN        string  `json:"write_lsn"`
	FlushLSN        string  `json:"flush_lsn"`
	ReplayLSN       string  `json:"replay_lsn"`
	LagBytes        int64   `json:"lag_bytes"`
	ReplayLagSecs   float64 `json:"replay_lag_seconds"`
	// Ready: fit for SPIRE's ro_connection_string; Reason says why not.
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// Slot is a replication slot on the primary.
type Slot struct {
	Name          string `json:"name"`
	Type          string `json:"type"`
	Active        bool   `json:"active"`
	ActivePID     *int32 `json:"active_pid,omitempty"`
	WALStatus     string `json:"wal_status"` // reserved, extended, unreserved, lost
	RestartLSN    string `json:"restart_lsn,omitempty"`
	RetainedBytes int64  `json:"retained_bytes"`
	SafeWALBytes  *int64 `json:"safe_wal_bytes,omitempty"`
}

// Receiver is a standby's own view.
type Receiver struct {
	Status          string     `json:"status"`
	SenderHost      string     `json:"sender_host,omitempty"`
	Slot            string     `json:"slot,omitempty"`
	ReceiveLSN      string     `json:"receive_lsn"`
	ReplayLSN       string     `json:"replay_lsn"`
	ReplayGapBytes  int64      `json:"replay_gap_bytes"`
	ReplayDelaySecs float64    `json:"replay_delay_seconds"`
	LastMessage     *time.Time `json:"last_message,omitempty"`
	ReplayPaused    bool       `json:"replay_paused"`
	Timeline        int32      `json:"timeline"`
}

// GetStatus connects with opts and reads the replication status, judging
// each standby against maxLag.
func GetStatus(ctx context.Context, opts pg.Options, maxLag Limit) (*Status, error) {
	var st *Status
	read := func(conn *pgx.Conn) (err error) {
		st, err = ReadStatus(ctx, conn, maxLag)
		return err
	}
	err := pg.WithConn(ctx, opts, read)
	if pg.SQLState(err) == "55000" && opts.Pool == nil {
		// a fenced database (or a standby that replayed the fence): the
		// status is the server's, read from its postgres database
		m := opts
		m.Database = "postgres"
		err = pg.WithConn(ctx, m, read)
	}
	return st, err
}

// ReadStatus reads the replication status over an open session.
func ReadStatus(ctx context.Context, conn *pgx.Conn, maxLag Limit) (*Status, error) {
	st := &Status{MaxLag: maxLag, At: time.Now().UTC()}
	var inRecovery bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('server_version')").Scan(&inRecovery, &st.Server); err != nil {
		return nil, fmt.Errorf("reading server role: %w", err)
	}
	if inRecovery {
		st.Role = "standby"
		r, err := readReceiver(ctx, conn)
		if err != nil {
			return nil, err
		}
		st.Receiver = r
		if r.Status != "streaming" {
			st.Problems = append(st.Problems, fmt.Sprintf("WAL receiver is %q, not streaming from the primary", r.Status))
		}
		if r.ReplayPaused {
			st.Problems = append(st.Problems, "WAL replay is paused (pg_wal_replay_resume() resumes it)")
		}
		if over, why := maxLag.Exceeded(r.ReplayGapBytes, time.Duration(r.ReplayDelaySecs*float64(time.Second))); over {
			st.Problems = append(st.Problems, "replay lag: "+why)
		}
		return st, nil
	}
	st.Role = "primary"
	slots, err := readSlots(ctx, conn)
	if err != nil {
		return nil, err
	}
	st.Slots = slots
	rows, err := conn.Query(ctx, pg.Marker+standbysSQL)
	if err != nil {
		return nil, fmt.Errorf("reading pg_stat_replication: %w", err)
	}
	for rows.Next() {
		var s Standby
		if err := rows.Scan(&s.PID, &s.ApplicationName, &s.ClientAddr, &s.State, &s.SyncState, &s.SentLSN, &s.WriteLSN,
			&s.FlushLSN, &s.ReplayLSN, &s.LagBytes, &s.ReplayLagSecs, &s.Slot); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading pg_stat_replication: %w", err)
		}
		st.Standbys = append(st.Standbys, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading pg_stat_replication: %w", err)
	}
	bySlot := map[string]Slot{}
	for _, s := range slots {
		bySlot[s.Name] = s
	}
	for i := range st.Standbys {
		judge(&st.Standbys[i], bySlot, maxLag)
	}
	for _, s := range slots {
		switch {
		case s.WALStatus == "lost":
			st.Problems = append(st.Problems, fmt.Sprintf("slot %s is lost: the WAL its standby needs was removed; rebuild the standby (replica bootstrap) and drop the slot", s.Name))
		case !s.Active:
			st.Problems = append(st.Problems, fmt.Sprintf("slot %s is inactive and retains %s of WAL; drop it if its standby is gone (replica slots --drop %s)", s.Name, formatBytes(s.RetainedBytes), s.Name))
		}
	}
	return st, nil
}

// judge decides whether a standby can serve SPIRE's ro_connection_string.
func judge(s *Standby, slots map[string]Slot, maxLag Limit) {
	lag := time.Duration(s.ReplayLagSecs * float64(time.Second))
	switch slot, hasSlot := slots[s.Slot]; {
	case s.State != "streaming":
		s.Reason = fmt.Sprintf("not streaming (state %q)", s.State)
	case hasSlot && (slot.WALStatus == "lost" || slot.WALStatus == "unreserved"):
		s.Reason = fmt.Sprintf("its slot %s is %s: WAL it needs is gone or about to be", slot.Name, slot.WALStatus)
	default:
		if over, why := maxLag.Exceeded(s.LagBytes, lag); over {
			s.Reason = "lagging: " + why
			return
		}
		s.Ready = true
	}
}

func readSlots(ctx context.Context, conn *pgx.Conn) ([]Slot, error) {
	rows, err := conn.Query(ctx, pg.Marker+slotsSQL)
	if err != nil {
		return nil, fmt.Errorf("reading pg_replication_slots: %w", err)
	}
	var out []Slot
	for rows.Next() {
		var s Slot
		if err := rows.Scan(&s.Name, &s.Type, &s.Active, &s.ActivePID, &s.WALStatus, &s.RestartLSN, &s.RetainedBytes, &s.SafeWALBytes); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading pg_replication_slots: %w", err)
		}
		out = append(out, s)
	}
	rows.Close()
	return out, rows.Err()
}

func readReceiver(ctx context.Context, conn *pgx.Conn) (*Receiver, error) {
	r := &Receiver{}
	var status, sender, slot *string
	err := conn.QueryRow(ctx, pg.Marker+receiverSQL).
		Scan(&status, &sender, &slot, &r.LastMessage, &r.ReceiveLSN, &r.ReplayLSN, &r.ReplayGapBytes, &r.ReplayDelaySecs, &r.ReplayPaused, &r.Timeline)
	if err != nil {
		return nil, fmt.Errorf("reading the standby's WAL receiver: %w", err)
	}
	r.Status = "stopped"
	if status != nil {
		r.Status = *status
	}
	if sender != nil {
		r.SenderHost = *sender
	}
	if slot != nil {
		r.Slot = *slot
	}
	return r, nil
}
