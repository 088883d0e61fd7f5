package schedule

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/indexes/views"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/spire"
	"github.com/spiredb/spiredb/tuning"
)

// stateMetrics are gauges of the datastore's state, refreshed by a
// periodic collection (not at scrape time: a scrape must stay cheap).
type stateMetrics struct {
	backups             prometheus.Gauge
	backupNewest        prometheus.Gauge
	backupNewestBytes   prometheus.Gauge
	backupVerified      prometheus.Gauge
	standbys            prometheus.Gauge
	standbysReady       prometheus.Gauge
	maxLagBytes         prometheus.Gauge
	maxLagSeconds       prometheus.Gauge
	slotsLost           prometheus.Gauge
	standbyLag          *prometheus.GaugeVec
	indexesInvalid      prometheus.Gauge
	indexesDuplicate    prometheus.Gauge
	viewAge             *prometheus.GaugeVec
	viewChanges         *prometheus.GaugeVec
	operationShare      *prometheus.GaugeVec
	eventsRows          *prometheus.GaugeVec
	eventsOldestAge     *prometheus.GaugeVec
	eventsGaps          *prometheus.GaugeVec
	archiveEnabled      prometheus.Gauge
	archiveFailing      prometheus.Gauge
	archiveFailed       prometheus.Gauge
	archiveLast         prometheus.Gauge
	archivePending      prometheus.Gauge
	pitrBases           prometheus.Gauge
	pitrNewest          prometheus.Gauge
	serverTimeline      prometheus.Gauge
	archiveTimeline     prometheus.Gauge
	collectLastSuccess  prometheus.Gauge
	collectErrors       *prometheus.CounterVec
	collectDurationSecs prometheus.Gauge
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func newStateMetrics(reg *prometheus.Registry) *stateMetrics {
	m := &stateMetrics{
		backups:           gauge("spiredb_backups", "Complete backups of this database in the store (logical ones of it, base backups of its cluster)."),
		backupNewest:      gauge("spiredb_backup_newest_timestamp_seconds", "Unix time the newest complete backup of this database finished."),
		backupNewestBytes: gauge("spiredb_backup_newest_bytes", "Size of the newest complete backup of this database."),
		backupVerified:    gauge("spiredb_backup_newest_verified_timestamp_seconds", "Unix time the newest backup of this database whose verification passed finished (0: none)."),
		standbys:          gauge("spiredb_replication_standbys", "Standbys streaming from the primary."),
		standbysReady:     gauge("spiredb_replication_standbys_ready", "Standbys fit for SPIRE's ro_connection_string (streaming, lag under the limit)."),
		maxLagBytes:       gauge("spiredb_replication_max_lag_bytes", "The largest replay lag of any standby, in bytes (0 without standbys)."),
		maxLagSeconds:     gauge("spiredb_replication_max_lag_seconds", "The largest replay lag of any standby, in seconds."),
		slotsLost:         gauge("spiredb_replication_slots_lost", "Replication slots whose WAL is lost (wal_status = lost)."),
		standbyLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_replication_standby_lag_bytes",
			Help: "Replay lag per standby, in bytes."}, []string{"standby"}),
		indexesInvalid:   gauge("spiredb_indexes_invalid", "INVALID indexes on SPIRE's tables."),
		indexesDuplicate: gauge("spiredb_indexes_duplicate", "Duplicate indexes on SPIRE's tables."),
		viewAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_view_refresh_age_seconds",
			Help: "Seconds since the view's last refresh."}, []string{"view"}),
		viewChanges: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_view_changes_since_refresh",
			Help: "SPIRE entry events since the view's last refresh."}, []string{"view"}),
		operationShare: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_statements_operation_share",
			Help: "Share of database time per SPIRE operation (pg_stat_statements; the top 10)."}, []string{"operation"}),
		eventsRows: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_spire_events_rows",
			Help: "Rows in SPIRE's events table (an events-based cache start-up reads them all)."}, []string{"table"}),
		eventsOldestAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_spire_events_oldest_age_seconds",
			Help: "Age of the oldest row in SPIRE's events table (SPIRE prunes past prune_events_older_than, default 12h; 0: empty)."}, []string{"table"}),
		eventsGaps: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spiredb_spire_events_id_gaps",
			Help: "Ids missing between the oldest and newest event (each is fetched on every poll by a starting events-based cache)."}, []string{"table"}),
		archiveEnabled:      gauge("spiredb_archive_enabled", "1 when the server archives WAL (archive_mode on or always)."),
		archiveFailing:      gauge("spiredb_archive_failing", "1 when the archiver's last attempt failed (pg_stat_archiver)."),
		archiveFailed:       gauge("spiredb_archive_failed_count", "Failed archive attempts since the statistics reset (pg_stat_archiver.failed_count)."),
		archiveLast:         gauge("spiredb_archive_last_archived_timestamp_seconds", "Unix time the last WAL file was archived."),
		archivePending:      gauge("spiredb_archive_pending_segments", "WAL files waiting to be archived (-1: the role may not list them)."),
		pitrBases:           gauge("spiredb_pitr_bases", "Physical base backups of this cluster in the store."),
		pitrNewest:          gauge("spiredb_pitr_newest_restorable_timestamp_seconds", "Unix time of the newest moment a point-in-time restore can reach (the RPO is its age)."),
		serverTimeline:      gauge("spiredb_server_timeline", "The server's newest known timeline (0: the store's WAL archive cannot be read as this cluster's)."),
		archiveTimeline:     gauge("spiredb_archive_newest_timeline", "The newest timeline whose history the store's WAL archive holds; above spiredb_server_timeline, another server was promoted in this one's place (0: unknown)."),
		collectLastSuccess:  gauge("spiredb_collect_last_success_timestamp_seconds", "Unix time of the last complete state collection."),
		collectDurationSecs: gauge("spiredb_collect_duration_seconds", "Duration of the last state collection."),
		collectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spiredb_collect_errors_total",
			Help: "State collections that failed, per part."}, []string{"part"}),
	}
	reg.MustRegister(m.backups, m.backupNewest, m.backupNewestBytes, m.backupVerified, m.standbys, m.standbysReady, m.maxLagBytes,
		m.maxLagSeconds, m.slotsLost, m.standbyLag, m.indexesInvalid, m.indexesDuplicate, m.viewAge, m.viewChanges, m.operationShare,
		m.eventsRows, m.eventsOldestAge, m.eventsGaps,
		m.archiveEnabled, m.archiveFailing, m.archiveFailed, m.archiveLast, m.archivePending, m.pitrBases, m.pitrNewest, m.serverTimeline, m.archiveTimeline,
		m.collectLastSuccess, m.collectErrors, m.collectDurationSecs)
	for _, part := range []string{"connect", "backups", "replication", "archiving", "indexes", "views", "events", "statements"} {
		m.collectErrors.WithLabelValues(part)
	}
	return m
}

// collect reads the datastore's state once and sets the gauges. A part
// that fails is counted and leaves its gauges as they were.
func (s *Scheduler) collect(ctx context.Context) {
	m := s.state
	start := time.Now()
	ok := true
	fail := func(part string, err error) {
		ok = false
		m.collectErrors.WithLabelValues(part).Inc()
		s.log.Warn("state collection failed", "part", part, "err", err)
	}
	co := s.conn
	co.ApplicationName = "spiredb-schedule"
	conn, err := pg.Connect(ctx, co)
	if err != nil {
		fail("connect", err)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if s.cfg.Store != "" {
		if err := s.collectBackups(ctx, conn); err != nil {
			fail("backups", err)
		}
	}
	if err := s.collectReplication(ctx, conn); err != nil {
		fail("replication", err)
	}
	if err := s.collectArchiving(ctx, conn); err != nil {
		fail("archiving", err)
	}
	schema, err := spire.ReadSchema(ctx, conn)
	if err == nil && schema.Present {
		if err := s.collectIndexes(ctx, conn); err != nil {
			fail("indexes", err)
		}
		if err := s.collectViews(ctx, conn); err != nil {
			fail("views", err)
		}
		if err := s.collectEvents(ctx, conn, schema.Schema); err != nil {
			fail("events", err)
		}
	}
	if err := s.collectStatements(ctx, conn); err != nil {
		var ne *tuning.NotEnabledError
		if !errors.As(err, &ne) {
			fail("statements", err)
		}
	}
	m.collectDurationSecs.Set(time.Since(start).Seconds())
	if ok {
		m.collectLastSuccess.SetToCurrentTime()
	}
}

// collectBackups sets the backup gauges from this database's backups
// (logical ones of it, base backups of its cluster): in a store shared
// with another deployment, that one's fresh backups must not hide that
// this one's stopped.
func (s *Scheduler) collectBackups(ctx context.Context, conn *pgx.Conn) error {
	if s.store == nil {
		// opened once: an S3 store loads credentials and builds its client
		store, err := backup.OpenStore(ctx, s.cfg.Store, s.storeOpts)
		if err != nil {
			return err
		}
		s.store = store
	}
	all, err := backup.List(ctx, s.store)
	if err != nil {
		return err
	}
	src, err := backup.SourceOf(ctx, conn)
	if err != nil {
		return err
	}
	list, others := src.Split(all)
	m := s.state
	m.backups.Set(float64(len(list)))
	var newest, verified time.Time
	var newestBytes int64
	for _, b := range list {
		if b.FinishedAt.After(newest) {
			newest, newestBytes = b.FinishedAt, b.Size
		}
		if b.Verified() && b.FinishedAt.After(verified) {
			verified = b.FinishedAt
		}
	}
	if !newest.IsZero() {
		m.backupNewest.Set(float64(newest.Unix()))
		m.backupNewestBytes.Set(float64(newestBytes))
	}
	if !verified.IsZero() {
		m.backupVerified.Set(float64(verified.Unix()))
	}
	// the archive listed once, for the windows and the timelines
	files, _, err := backup.ListWAL(ctx, s.store)
	if err != nil {
		return err
	}
	windows, err := backup.WindowsWith(ctx, s.store, list, files)
	if err != nil {
		return err
	}
	m.pitrBases.Set(float64(len(windows)))
	if n := len(windows); n > 0 && windows[n-1].Restorable {
		m.pitrNewest.Set(float64(windows[n-1].ToTime.Unix()))
	}
	// the timelines (doctor's replication.timeline): 0 and 0 when the
	// archive cannot be read as this cluster's
	var server, archived uint32
	if backup.ArchiveIsOf(list, others) {
		tls := backup.TimelinesOf(files)
		if server, err = replication.Timeline(ctx, conn); err != nil {
			return err
		}
		if len(tls) > 0 {
			archived = tls[len(tls)-1]
		}
	}
	m.serverTimeline.Set(float64(server))
	m.archiveTimeline.Set(float64(archived))
	return nil
}

func (s *Scheduler) collectArchiving(ctx context.Context, conn *pgx.Conn) error {
	a, err := backup.ReadArchiver(ctx, conn)
	if err != nil {
		return err
	}
	m := s.state
	m.archiveEnabled.Set(boolGauge(a.Enabled()))
	m.archiveFailing.Set(boolGauge(a.Failing))
	m.archiveFailed.Set(float64(a.FailedCount))
	if a.LastArchivedTime != nil {
		m.archiveLast.Set(float64(a.LastArchivedTime.Unix()))
	}
	m.archivePending.Set(float64(a.Pending))
	return nil
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (s *Scheduler) collectReplication(ctx context.Context, conn *pgx.Conn) error {
	st, err := replication.ReadStatus(ctx, conn, replication.Limit{Bytes: 16 << 20})
	if err != nil {
		return err
	}
	m := s.state
	m.standbys.Set(float64(len(st.Standbys)))
	ready, maxBytes, maxSecs := 0, int64(0), 0.0
	m.standbyLag.Reset()
	for _, sb := range st.Standbys {
		if sb.Ready {
			ready++
		}
		maxBytes, maxSecs = max(maxBytes, sb.LagBytes), max(maxSecs, sb.ReplayLagSecs)
		m.standbyLag.WithLabelValues(sb.ApplicationName).Set(float64(sb.LagBytes))
	}
	m.standbysReady.Set(float64(ready))
	m.maxLagBytes.Set(float64(maxBytes))
	m.maxLagSeconds.Set(maxSecs)
	lost := 0
	for _, sl := range st.Slots {
		if sl.WALStatus == "lost" {
			lost++
		}
	}
	m.slotsLost.Set(float64(lost))
	return nil
}

func (s *Scheduler) collectIndexes(ctx context.Context, conn *pgx.Conn) error {
	r, err := indexes.Check(ctx, conn, indexes.CheckOptions{})
	if err != nil {
		return err
	}
	invalid, dup := 0, 0
	for _, f := range r.Findings {
		switch f.Kind {
		case "invalid":
			invalid++
		case "duplicate":
			dup++
		}
	}
	s.state.indexesInvalid.Set(float64(invalid))
	s.state.indexesDuplicate.Set(float64(dup))
	return nil
}

func (s *Scheduler) collectViews(ctx context.Context, conn *pgx.Conn) error {
	st, err := views.GetStatus(ctx, conn, views.All())
	if err != nil {
		return err
	}
	for _, v := range st {
		if v.RefreshedAt == nil {
			continue
		}
		s.state.viewAge.WithLabelValues(v.View).Set(v.Age.Seconds())
		s.state.viewChanges.WithLabelValues(v.View).Set(float64(v.ChangesSince))
	}
	return nil
}

func (s *Scheduler) collectEvents(ctx context.Context, conn *pgx.Conn, nsp string) error {
	ev, err := spire.ReadEvents(ctx, conn, nsp)
	if err != nil {
		return err
	}
	for _, t := range ev.Tables {
		s.state.eventsRows.WithLabelValues(t.Table).Set(float64(t.Rows))
		s.state.eventsOldestAge.WithLabelValues(t.Table).Set(t.OldestAge.Seconds())
		s.state.eventsGaps.WithLabelValues(t.Table).Set(float64(t.Gaps))
	}
	return nil
}

func (s *Scheduler) collectStatements(ctx context.Context, conn *pgx.Conn) error {
	r, err := tuning.TopStatements(ctx, conn, tuning.TopOptions{Limit: 1})
	if err != nil {
		return err
	}
	s.state.operationShare.Reset()
	for i, op := range r.Operations {
		if i == 10 {
			break
		}
		label := op.Label
		if label == "" {
			label = "(not SPIRE)"
		}
		s.state.operationShare.WithLabelValues(label).Set(op.Share)
	}
	return nil
}
