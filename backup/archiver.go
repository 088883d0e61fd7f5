package backup

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// ArchiverStatus is the server's side of continuous archiving: its
// settings and pg_stat_archiver.
type ArchiverStatus struct {
	Mode string `json:"archive_mode"`
	// UsesSpiredb: archive_command runs spiredb wal push (the command
	// itself is not reported: it may carry secrets).
	UsesSpiredb      bool       `json:"uses_spiredb"`
	CommandSet       bool       `json:"command_set"`
	TimeoutSeconds   int        `json:"archive_timeout_seconds"`
	ArchivedCount    int64      `json:"archived_count"`
	LastArchivedWAL  string     `json:"last_archived_wal,omitempty"`
	LastArchivedTime *time.Time `json:"last_archived_time,omitempty"`
	FailedCount      int64      `json:"failed_count"`
	LastFailedWAL    string     `json:"last_failed_wal,omitempty"`
	LastFailedTime   *time.Time `json:"last_failed_time,omitempty"`
	// Failing: the last attempt failed (the archiver retries the same
	// segment until it succeeds, so WAL piles up in pg_wal meanwhile).
	Failing bool `json:"failing"`
	// Pending counts segments waiting to be archived (.ready files); -1
	// when this role may not list them (pg_monitor can).
	Pending int `json:"pending"`
}

// Enabled reports whether the server archives WAL.
func (a *ArchiverStatus) Enabled() bool { return a.Mode == "on" || a.Mode == "always" }

// ReadArchiver reads the archiver's settings and state on a primary.
func ReadArchiver(ctx context.Context, conn *pgx.Conn) (*ArchiverStatus, error) {
	a := &ArchiverStatus{Pending: -1}
	var command, timeout string
	var lastArchived, lastFailed *string
	err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_setting('archive_mode'), pg_catalog.current_setting('archive_command'),
		(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'archive_timeout'),
		archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time
		FROM pg_catalog.pg_stat_archiver`).Scan(&a.Mode, &command, &timeout, &a.ArchivedCount, &lastArchived, &a.LastArchivedTime,
		&a.FailedCount, &lastFailed, &a.LastFailedTime)
	if err != nil {
		return nil, fmt.Errorf("reading pg_stat_archiver: %w", err)
	}
	if lastArchived != nil {
		a.LastArchivedWAL = *lastArchived
	}
	if lastFailed != nil {
		a.LastFailedWAL = *lastFailed
	}
	a.CommandSet = command != "" && command != "(disabled)"
	a.UsesSpiredb = strings.Contains(command, "wal push")
	_, _ = fmt.Sscan(timeout, &a.TimeoutSeconds)
	a.Failing = a.LastFailedTime != nil && (a.LastArchivedTime == nil || a.LastFailedTime.After(*a.LastArchivedTime))
	// pg_ls_archive_statusdir needs pg_monitor; without it the count is unknown
	_ = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, pg.Marker+`SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'`).Scan(&n); err == nil {
			a.Pending = n
		}
		return nil
	})
	return a, nil
}
