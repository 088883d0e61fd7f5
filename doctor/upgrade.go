package doctor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// UpgradeOptions configure CheckUpgrade.
type UpgradeOptions struct {
	Conn pg.Options
	// To is the spire-server release the servers move to.
	To spire.Version
	// Store, when set, must hold a verified backup newer than
	// MaxBackupAge (default 24h).
	Store        backup.Store
	MaxBackupAge time.Duration
	// Rehearse, when its SpireServer is set, starts that binary on a
	// scratch restore of the newest verified backup (Store and Scratch are
	// filled in from here).
	Rehearse backup.RehearseOptions
}

// UpgradeReport is what CheckUpgrade found.
type UpgradeReport struct {
	Schema spire.Schema      `json:"schema"`
	Step   spire.UpgradeStep `json:"step"`
	// Dependents are spiredb's (or anyone's) views on SPIRE's tables: a
	// migration that alters a column they read fails.
	Dependents []string          `json:"dependent_views"`
	Backup     *UpgradeBackup    `json:"backup,omitempty"`
	Rehearsal  *backup.Rehearsal `json:"rehearsal,omitempty"`
	FindingList
}

// UpgradeBackup is the newest verified backup the upgrade can fall back to.
type UpgradeBackup struct {
	ID       string    `json:"id"`
	Finished time.Time `json:"finished"`
}

// CheckUpgrade checks that the datastore at o.Conn can move to spire-server
// o.To: SPIRE's one-minor-version rule against the stored code_version,
// views that depend on SPIRE's tables, a fresh verified backup, and, with
// a spire-server binary, a rehearsal of its start-up migration on a
// scratch restore.
func CheckUpgrade(ctx context.Context, o UpgradeOptions) (*UpgradeReport, error) {
	if o.MaxBackupAge <= 0 {
		o.MaxBackupAge = 24 * time.Hour
	}
	conn, err := pg.Connect(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r := &UpgradeReport{Dependents: []string{}}
	if r.Schema, err = spire.ReadSchema(ctx, conn); err != nil {
		return nil, err
	}
	if !r.Schema.Present {
		return nil, fmt.Errorf("no SPIRE schema in this database (no migrations table): nothing to upgrade")
	}
	from, err := spire.ParseVersion(r.Schema.CodeVersion)
	if err != nil {
		return nil, fmt.Errorf("the datastore's code_version %q: %w", r.Schema.CodeVersion, err)
	}
	r.Step = spire.CheckUpgradeStep(from, o.To)
	switch {
	case !r.Step.OK && len(r.Step.Path) > 0:
		r.add(Error, "upgrade.version", r.Step.Reason, "upgrade through "+strings.Join(r.Step.Path, ", then ")+", letting every server run each release (and migrate) before the next")
	case !r.Step.OK:
		r.add(Error, "upgrade.version", r.Step.Reason, "restore a backup taken under the older release instead (spiredb backup restore --plan shows what it would lose)")
	case r.Step.Downgrade:
		r.add(Warning, "upgrade.version", r.Step.Reason, "")
	}
	if o.To.Minor > spire.KnownLatestMinor {
		r.add(Info, "upgrade.verified", fmt.Sprintf("spiredb has been measured against SPIRE up to 1.%d; read %s's release notes for schema changes", spire.KnownLatestMinor, o.To),
			"rehearse it: --spire-server PATH")
	}

	if r.Dependents, err = dependentViews(ctx, conn, r.Schema.Schema); err != nil {
		return nil, err
	}
	if len(r.Dependents) > 0 {
		r.add(Warning, "upgrade.views", fmt.Sprintf("%d view(s) read SPIRE's tables (%s): a SPIRE migration that alters or drops a column they read fails, and the server with it",
			len(r.Dependents), strings.Join(r.Dependents, ", ")),
			"drop them before the upgrade and create them again after (spiredb views create), or rehearse with --spire-server to see that this migration does not touch them")
	}

	if o.Store == nil {
		r.add(Warning, "upgrade.backup", "no backup store given: an upgrade migrates the schema in place, and SPIRE does not migrate back",
			fmt.Sprintf("spiredb backup run, then spiredb backup verify --latest; check again with --store (a verified backup newer than %s)", o.MaxBackupAge))
	}
	var src backup.Source
	if o.Store != nil || o.Rehearse.Store != nil {
		// the backups of this database: another's say nothing about it
		if src, err = backup.SourceOf(ctx, conn); err != nil {
			return nil, err
		}
	}
	if o.Store != nil {
		if err := r.checkUpgradeBackup(ctx, o, src); err != nil {
			return nil, err
		}
	}

	if o.Rehearse.SpireServer != "" {
		ro := o.Rehearse
		if ro.Store == nil {
			ro.Store = o.Store
		}
		if ro.Store == nil {
			return nil, fmt.Errorf("a rehearsal restores a backup: give --store")
		}
		if ro.ID == "" {
			ro.Source = &src
		}
		reh, err := backup.Rehearse(ctx, ro)
		var failed *backup.RehearsalFailedError
		if errors.As(err, &failed) {
			r.add(Error, "upgrade.rehearsal", failed.Error(), "the upgrade would fail the same way: fix what the log says on the copy first")
			r.finish()
			return r, nil
		}
		if err != nil {
			return nil, err
		}
		r.Rehearsal = reh
		var strong []string
		for _, l := range reh.Locks {
			if l.Mode == "AccessExclusiveLock" {
				strong = append(strong, l.Relation)
			}
		}
		msg := fmt.Sprintf("spire-server %s started on a copy of backup %s in %s: schema %d → %d",
			reh.ServerVersion, reh.ID, reh.Duration.Round(time.Millisecond), reh.Before.Version, reh.After.Version)
		if len(strong) > 0 {
			msg += fmt.Sprintf("; it took ACCESS EXCLUSIVE locks on %s (every other server's queries on them wait while it migrates)", strings.Join(strong, ", "))
		}
		r.add(Info, "upgrade.rehearsal", msg, "")
	}
	r.finish()
	return r, nil
}

func (r *UpgradeReport) checkUpgradeBackup(ctx context.Context, o UpgradeOptions, src backup.Source) error {
	list, err := backup.List(ctx, o.Store)
	if err != nil {
		return err
	}
	var newest *backup.Manifest
	for i := range list {
		b := &list[i]
		if src.Restores(b) && b.Verified() && (newest == nil || b.FinishedAt.After(newest.FinishedAt)) {
			newest = b
		}
	}
	fix := "spiredb backup run, then spiredb backup verify --latest"
	switch {
	case newest == nil:
		r.add(Error, "upgrade.backup", fmt.Sprintf("no verified backup of this database in %s: an upgrade migrates the schema in place, and SPIRE does not migrate back", o.Store), fix)
	case time.Since(newest.FinishedAt) > o.MaxBackupAge:
		r.Backup = &UpgradeBackup{ID: newest.ID, Finished: newest.FinishedAt}
		r.add(Error, "upgrade.backup", fmt.Sprintf("the newest verified backup, %s, is %s old (more than %s)", newest.ID, time.Since(newest.FinishedAt).Round(time.Minute), o.MaxBackupAge), fix)
	default:
		r.Backup = &UpgradeBackup{ID: newest.ID, Finished: newest.FinishedAt}
	}
	return nil
}

// dependentViews lists views and materialized views whose rules read a
// table of SPIRE's schema.
func dependentViews(ctx context.Context, conn *pgx.Conn, nsp string) ([]string, error) {
	rows, err := conn.Query(ctx, pg.Marker+`SELECT DISTINCT vn.nspname::text || '.' || v.relname::text
		FROM pg_catalog.pg_depend d
		JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid
		JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
		JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
		JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
		JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
		WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
		  AND v.relkind IN ('v', 'm') AND v.oid <> t.oid AND tn.nspname = $1 AND t.relname = ANY($2)
		ORDER BY 1`, nsp, spire.Tables)
	if err != nil {
		return nil, fmt.Errorf("listing views on SPIRE's tables: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
