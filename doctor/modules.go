package doctor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/dustin/go-humanize/english"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/tuning"
)

// Options select what doctor looks at beyond the server and SPIRE's schema.
type Options struct {
	Conn pg.Options
	// Store, when set, is where backups go: the newest backup's age and
	// verification are checked.
	Store backup.Store
	// StoreURL names the store in the fix commands.
	StoreURL string
	// Replicas are standbys (SPIRE's ro_connection_string): each is
	// checked, and their index scans count for the unused-index check.
	Replicas []pg.Options
	// MaxBackupAge (default 26h) and MaxUnverifiedAge (default 36h).
	MaxBackupAge     time.Duration
	MaxUnverifiedAge time.Duration
	// MaxLag is a standby's allowed replay lag (default 16MB).
	MaxLag replication.Limit
	// EventsPruneAfter is the servers' experimental.prune_events_older_than
	// (default SPIRE's, 12h): events older than twice that mean no server
	// prunes them.
	EventsPruneAfter time.Duration
	// Settings, when set, is the recommendation for this server (from its
	// RAM, CPUs and SPIRE's connections): live settings are checked
	// against it.
	Settings *tuning.Recommendation
}

// Replication is doctor's view of streaming replication.
type Replication struct {
	Standbys int `json:"standbys"`
	Ready    int `json:"ready"`
	Slots    int `json:"slots"`
	Lost     int `json:"lost_slots"`
}

// Backups is doctor's view of the backup store.
type Backups struct {
	Store          string     `json:"store"`
	Count          int        `json:"count"`
	Newest         *time.Time `json:"newest,omitempty"`
	NewestBytes    int64      `json:"newest_bytes"`
	NewestVerified *time.Time `json:"newest_verified,omitempty"`
}

// Indexes is doctor's view of index health.
type Indexes struct {
	Invalid    int `json:"invalid"`
	Duplicate  int `json:"duplicate"`
	SetMissing int `json:"set_missing"`
}

// Check runs the whole report: the server, SPIRE's schema, replication and
// slots, the standbys, index health and, with a store, the backups.
func Check(ctx context.Context, o Options) (*Report, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.MaxBackupAge == 0 {
		o.MaxBackupAge = 26 * time.Hour
	}
	if o.MaxUnverifiedAge == 0 {
		o.MaxUnverifiedAge = 36 * time.Hour
	}
	if o.MaxLag.IsZero() {
		o.MaxLag = replication.Limit{Bytes: 16 << 20}
	}
	// doctor reports what other commands refuse (security.shadowing)
	o.Conn.TrustSearchPath = true
	conn, err := pg.Connect(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r, err := Inspect(ctx, conn)
	if err != nil {
		return nil, err
	}
	pooling, err := pg.DetectPooling(ctx, conn, o.Conn)
	if err != nil {
		return nil, err
	}
	if pooling.Behind {
		r.Pooling = &pooling
		msg := "doctor talks to PostgreSQL through a pooler or proxy (" + pooling.Detail + ")"
		fix := "read-only commands work through it; give spiredb a direct DSN for backup run, migrate, indexes apply and backfill"
		if pooling.Transaction {
			msg += ": transaction pooling, so commands that need a session (backup run, migrate, indexes apply, migrate backfill, replica fence) refuse it"
			fix = "give those commands a direct DSN to PostgreSQL; SPIRE's lib/pq uses named prepared statements: transaction pooling needs PgBouncer 1.21+ with max_prepared_statements"
		}
		r.add(Info, "connection.pooler", msg, fix)
	}
	schema := "public"
	if r.SPIRE.Present {
		schema = r.SPIRE.Schema.Schema
	}
	if r.Privileges, err = checkPrivileges(ctx, conn, schema, r.Server.VersionNum); err != nil {
		return nil, err
	}
	if err := r.checkSchemaSafety(ctx, conn, schema); err != nil {
		return nil, err
	}
	var replicas []*pgx.Conn
	for i, ro := range o.Replicas {
		ro.TrustSearchPath = true
		rc, err := pg.Connect(ctx, ro)
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i+1, err)
		}
		defer rc.Close(context.WithoutCancel(ctx))
		replicas = append(replicas, rc)
	}
	if err := r.checkReplication(ctx, conn, replicas, o.MaxLag); err != nil {
		return nil, err
	}
	if r.SPIRE.Present && r.Server.Role == "primary" {
		if err := r.checkIndexes(ctx, conn, replicas); err != nil {
			return nil, err
		}
	}
	if r.SPIRE.Present {
		if err := r.checkEvents(ctx, conn, o.EventsPruneAfter); err != nil {
			return nil, err
		}
	}
	if r.Server.Role == "primary" {
		if err := r.checkArchiving(ctx, conn); err != nil {
			return nil, err
		}
	}
	if o.Store != nil {
		mine, others, err := r.checkBackups(ctx, conn, o)
		if err != nil {
			return nil, err
		}
		if err := r.checkTimeline(ctx, conn, o, mine, others); err != nil {
			return nil, err
		}
		if err := r.checkPITR(ctx, o, mine); err != nil {
			return nil, err
		}
	}
	if o.Settings != nil {
		diffs, err := tuning.CheckSettings(ctx, conn, o.Settings)
		if err != nil {
			return nil, err
		}
		for _, d := range diffs {
			fix := fmt.Sprintf("ALTER SYSTEM SET %s = '%s'; SELECT pg_reload_conf();", d.Name, d.Recommended)
			if d.Restart {
				fix = fmt.Sprintf("ALTER SYSTEM SET %s = '%s'; then restart PostgreSQL", d.Name, d.Recommended)
			}
			r.add(Warning, "settings."+d.Name, fmt.Sprintf("%s is %s, recommended %s: %s", d.Name, d.Current, d.Recommended, d.Reason), fix)
		}
		r.SettingsChecked = true
	}
	r.finish()
	return r, nil
}

func (r *Report) checkReplication(ctx context.Context, conn *pgx.Conn, replicas []*pgx.Conn, maxLag replication.Limit) error {
	st, err := replication.ReadStatus(ctx, conn, maxLag)
	if err != nil {
		return err
	}
	rep := &Replication{Standbys: len(st.Standbys), Slots: len(st.Slots)}
	for _, s := range st.Standbys {
		if s.Ready {
			rep.Ready++
			continue
		}
		r.add(Warning, "replication.standby", fmt.Sprintf("standby %s is not ready for SPIRE's reads: %s", s.ApplicationName, s.Reason), "spiredb replica status")
	}
	for _, s := range st.Slots {
		switch {
		case s.WALStatus == "lost":
			rep.Lost++
			r.add(Error, "replication.slot", fmt.Sprintf("slot %s lost the WAL its standby needs: that standby cannot catch up", s.Name),
				fmt.Sprintf("spiredb replica slots drop %s, then spiredb replica bootstrap the standby again", s.Name))
		case !s.Active && s.RetainedBytes > 1<<30:
			r.add(Warning, "replication.slot", fmt.Sprintf("inactive slot %s retains %s of WAL on the primary's disk", s.Name, humanize.IBytes(uint64(s.RetainedBytes))),
				fmt.Sprintf("bring its standby back, or spiredb replica slots drop %s", s.Name))
		}
	}
	if err := r.checkReplicationSettings(ctx, conn, st, replicas); err != nil {
		return err
	}
	if st.Role == "standby" && len(st.Problems) > 0 {
		for _, p := range st.Problems {
			r.add(Error, "replication.receiver", p, "spiredb replica status")
		}
	}
	for i, rc := range replicas {
		rs, err := replication.ReadStatus(ctx, rc, maxLag)
		if err != nil {
			return fmt.Errorf("replica %d: %w", i+1, err)
		}
		if rs.Role != "standby" {
			r.add(Error, "replication.replica", fmt.Sprintf("--replica-dsn %d is a primary, not a standby (promoted? split brain?)", i+1), "spiredb replica fence --dsn OLD_PRIMARY")
			continue
		}
		for _, p := range rs.Problems {
			r.add(Warning, "replication.replica", fmt.Sprintf("replica %d: %s", i+1, p), "spiredb replica status --dsn REPLICA")
		}
	}
	r.Replication = rep
	return nil
}

// checkReplicationSettings flags what makes switchovers, rejoins and
// slots unsafe where replication is in use: no wal_log_hints nor checksums
// (rejoin cannot rewind), slots without max_slot_wal_keep_size (a dead
// standby fills the disk, its slot never becomes lost), and standbys
// without hot_standby_feedback.
func (r *Report) checkReplicationSettings(ctx context.Context, conn *pgx.Conn, st *replication.Status, replicas []*pgx.Conn) error {
	if st.Role == "primary" && len(st.Standbys) == 0 && len(st.Slots) == 0 && len(replicas) == 0 {
		return nil
	}
	var hints, checksums, slotCap, feedback string
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_setting('wal_log_hints'), pg_catalog.current_setting('data_checksums'),
		coalesce(pg_catalog.current_setting('max_slot_wal_keep_size', true), ''), pg_catalog.current_setting('hot_standby_feedback')`).Scan(&hints, &checksums, &slotCap, &feedback); err != nil {
		return fmt.Errorf("reading replication settings: %w", err)
	}
	if hints != "on" && checksums != "on" {
		r.add(Warning, "replication.rewind", "wal_log_hints and data checksums are both off: after a switchover the old primary cannot be rewound (replica rejoin) and must be copied afresh",
			"ALTER SYSTEM SET wal_log_hints = on; then restart PostgreSQL")
	}
	if st.Role == "primary" && len(st.Slots) > 0 && slotCap == "-1" {
		r.add(Warning, "replication.slot_cap", "max_slot_wal_keep_size is -1: a slot whose standby is gone keeps WAL until the disk is full, and never becomes 'lost' for the alert to fire",
			"ALTER SYSTEM SET max_slot_wal_keep_size = '16GB'; SELECT pg_reload_conf();  (well under pg_wal's free space)")
	}
	if st.Role == "standby" && feedback != "on" {
		r.add(Warning, "replication.feedback", "hot_standby_feedback is off on this standby: the primary's vacuum can cancel SPIRE's long reads through ro_connection_string",
			"ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();")
	}
	for i, rc := range replicas {
		var fb string
		if err := rc.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.current_setting('hot_standby_feedback')").Scan(&fb); err != nil {
			return fmt.Errorf("replica %d: %w", i+1, err)
		}
		if fb != "on" {
			r.add(Warning, "replication.feedback", fmt.Sprintf("hot_standby_feedback is off on replica %d: the primary's vacuum can cancel SPIRE's long reads through ro_connection_string", i+1),
				"on the replica: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();")
		}
	}
	return nil
}

func (r *Report) checkIndexes(ctx context.Context, conn *pgx.Conn, replicas []*pgx.Conn) error {
	rep, err := indexes.Check(ctx, conn, indexes.CheckOptions{Replicas: replicas})
	if err != nil {
		return err
	}
	ix := &Indexes{}
	for _, f := range rep.Findings {
		switch f.Kind {
		case "invalid":
			ix.Invalid++
			r.add(Error, "indexes.invalid", fmt.Sprintf("%s on %s is INVALID: %s", f.Index, f.Table, f.Detail), f.Fix)
		case "duplicate":
			ix.Duplicate++
			r.add(Warning, "indexes.duplicate", fmt.Sprintf("%s on %s: %s", f.Index, f.Table, f.Detail), f.Fix)
		}
	}
	plan, err := indexes.MakePlan(ctx, conn)
	if err != nil {
		return err
	}
	if todo := plan.ToDo(); len(todo) > 0 {
		ix.SetMissing = len(todo)
		r.add(Info, "indexes.set", fmt.Sprintf("%d of spiredb's benchmark-proven SPIRE indexes are missing (the prunes run up to 1,758x faster with them)", len(todo)),
			"spiredb indexes apply")
	}
	r.Indexes = ix
	return nil
}

// checkBackups looks at the store's backups of this database (logical
// ones of it, base backups of its cluster): another database's backups in
// the same store say nothing about this one's. It returns them and the
// others, for checkTimeline and checkPITR.
func (r *Report) checkBackups(ctx context.Context, conn *pgx.Conn, o Options) (mine, others []backup.Manifest, err error) {
	inv, err := backup.Inspect(ctx, o.Store)
	if err != nil {
		return nil, nil, err
	}
	src, err := backup.SourceOf(ctx, conn)
	if err != nil {
		return nil, nil, err
	}
	list, others := src.Split(inv.Backups)
	b := &Backups{Store: o.StoreURL, Count: len(list)}
	r.Backups = b
	for _, p := range inv.Problems {
		r.add(Warning, "backup.store", fmt.Sprintf("%s is not a usable backup (%s); spiredb leaves it alone", p.Key, p.Reason),
			"inspect it, then move it out of the store or delete it by hand")
	}
	if len(others) > 0 {
		groups := backup.GroupBySource(others)
		names := make([]string, len(groups))
		for i, g := range groups {
			names[i] = fmt.Sprintf("%s: %d", g.Source, len(g.Backups))
		}
		r.add(Info, "backup.shared", fmt.Sprintf("the store also holds %s of other sources (%s), not counted here: retention applies to each source apart, and restore --latest refuses to choose",
			english.Plural(len(others), "backup", ""), strings.Join(names, "; ")),
			"give each database a store prefix of its own; remove a retired server's backups by hand once they are no longer needed")
	}
	run := "spiredb backup run --store " + o.StoreURL
	if len(list) == 0 {
		r.add(Error, "backup.none", "no backup of this database in the store", run)
		return list, others, nil
	}
	newest := list[len(list)-1]
	for _, m := range list {
		if m.FinishedAt.After(newest.FinishedAt) {
			newest = m
		}
	}
	b.Newest, b.NewestBytes = &newest.FinishedAt, newest.Size
	if age := time.Since(newest.FinishedAt); age > o.MaxBackupAge {
		r.add(Error, "backup.age", fmt.Sprintf("the newest backup is %s old (limit %s)", age.Round(time.Minute), o.MaxBackupAge), run)
	}
	var verified *backup.Manifest
	for i := range list {
		if list[i].Verified() && (verified == nil || list[i].FinishedAt.After(verified.FinishedAt)) {
			verified = &list[i]
		}
	}
	verify := "spiredb backup verify --store " + o.StoreURL + " --latest --level restore"
	if verified == nil {
		r.add(Warning, "backup.verified", "no backup has been verified by a restore", verify)
		return list, others, nil
	}
	b.NewestVerified = &verified.FinishedAt
	if age := time.Since(verified.FinishedAt); age > o.MaxUnverifiedAge {
		r.add(Warning, "backup.verified", fmt.Sprintf("the newest verified backup is %s old (limit %s)", age.Round(time.Minute), o.MaxUnverifiedAge), verify)
	}
	return list, others, nil
}

// checkTimeline compares the server's timeline with the newest whose
// history the store's WAL archive holds. A newer one means another server
// of the cluster was promoted: on a primary, two primaries (SPIRE's
// writes may go to either); on a standby, a primary it will never follow.
// Only when the store holds base backups of this cluster and of no other:
// history files do not say which cluster wrote them.
func (r *Report) checkTimeline(ctx context.Context, conn *pgx.Conn, o Options, mine, others []backup.Manifest) error {
	if !backup.ArchiveIsOf(mine, others) {
		return nil
	}
	tls, err := backup.ArchivedTimelines(ctx, o.Store)
	if err != nil || len(tls) == 0 {
		return err
	}
	tli, err := replication.Timeline(ctx, conn)
	if err != nil {
		return err
	}
	newest := tls[len(tls)-1]
	if newest <= tli {
		return nil
	}
	if r.Server.Role == "primary" {
		r.add(Error, "replication.timeline", fmt.Sprintf("this primary is on timeline %d, but the WAL archive holds timeline %d's history: another server of this cluster was promoted in its place, and SPIRE's writes may go to either (split brain)", tli, newest),
			"fence this one (spiredb replica fence --dsn THIS_DSN), point every spire-server at the promoted one, then make this one its standby (spiredb replica rejoin)")
		return nil
	}
	r.add(Warning, "replication.timeline", fmt.Sprintf("this standby is on timeline %d, but the WAL archive holds timeline %d's history: another server was promoted, and this standby follows a primary that it replaced", tli, newest),
		"make it a standby of the promoted server: spiredb replica bootstrap --primary-dsn NEW_PRIMARY_DSN (a new data directory)")
	return nil
}

// PITR is doctor's view of point-in-time recovery from the store.
type PITR struct {
	Bases int `json:"bases"`
	// NewestRestorable is the newest moment a restore can reach (the end
	// of the newest base's window); RPOSeconds is its age.
	NewestRestorable *time.Time `json:"newest_restorable,omitempty"`
	RPOSeconds       float64    `json:"rpo_seconds,omitempty"`
}

func (r *Report) checkArchiving(ctx context.Context, conn *pgx.Conn) error {
	a, err := backup.ReadArchiver(ctx, conn)
	if err != nil {
		return err
	}
	r.Archiving = a
	recommend := "spiredb tune recommend gives archive_mode, archive_command (spiredb wal push) and archive_timeout"
	switch {
	case !a.Enabled():
		r.add(Info, "archive.off", "WAL is not archived: the newest recovery point is the newest backup, and a mass delete a standby replays is lost with everything after that backup", recommend)
		return nil
	case !a.CommandSet:
		r.add(Error, "archive.command", "archive_mode is on but archive_command is empty: WAL piles up in pg_wal until the disk is full", recommend)
		return nil
	}
	if a.Failing {
		r.add(Error, "archive.failing", fmt.Sprintf("archiving has failed since %s, on %s (%d failures so far): WAL piles up in pg_wal until it succeeds",
			a.LastFailedTime.UTC().Format(time.RFC3339), a.LastFailedWAL, a.FailedCount),
			"the server log's 'archive command failed' lines carry spiredb wal push's one-line error")
	}
	if a.Pending > 10 {
		r.add(Warning, "archive.lag", fmt.Sprintf("%d segments wait to be archived: the archive is %s behind", a.Pending, humanize.IBytes(uint64(a.Pending)*16<<20)),
			"check the store's throughput and the archiver's errors")
	}
	if a.TimeoutSeconds == 0 {
		r.add(Warning, "archive.timeout", "archive_timeout is 0: a quiet hour's changes stay in the current segment, unarchived, and a restore cannot reach them", "ALTER SYSTEM SET archive_timeout = '60s'; SELECT pg_reload_conf();")
	}
	return nil
}

// checkPITR looks at the windows of this cluster's base backups (among
// mine, checkBackups's).
func (r *Report) checkPITR(ctx context.Context, o Options, mine []backup.Manifest) error {
	windows, err := backup.WindowsOf(ctx, o.Store, mine)
	if err != nil {
		return err
	}
	p := &PITR{Bases: len(windows)}
	r.PITR = p
	if len(windows) == 0 {
		return nil
	}
	if r.Archiving != nil && !r.Archiving.Enabled() {
		r.add(Error, "archive.off", "the store has physical base backups but this server does not archive WAL: they cannot be restored past their end", "ALTER SYSTEM SET archive_mode = on (restart) and archive_command = 'spiredb wal push %p --store "+o.StoreURL+"'")
	}
	newest := windows[len(windows)-1]
	if !newest.Restorable {
		r.add(Error, "pitr.base", "the newest base backup cannot be restored: "+newest.String(), "spiredb backup run --physical --store "+o.StoreURL)
		return nil
	}
	p.NewestRestorable = &newest.ToTime
	p.RPOSeconds = time.Since(newest.ToTime).Seconds()
	limit := 10 * time.Minute
	if r.Archiving != nil && r.Archiving.TimeoutSeconds > 0 {
		limit = max(limit, 3*time.Duration(r.Archiving.TimeoutSeconds)*time.Second)
	}
	if age := time.Since(newest.ToTime); age > limit {
		r.add(Warning, "pitr.rpo", fmt.Sprintf("the newest restorable moment is %s old (%s): changes since then are not in the archive", age.Round(time.Second), newest.ToTime.UTC().Format(time.RFC3339)),
			"check archiving (archive.* findings) and archive_timeout")
	}
	if newest.Missing != "" {
		r.add(Error, "pitr.gap", fmt.Sprintf("the archive lacks %s after %s: no restore can pass it", newest.Missing, newest.LastWAL), "take a new base: spiredb backup run --physical --store "+o.StoreURL)
	}
	return nil
}
