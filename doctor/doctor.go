// Package doctor inspects a SPIRE datastore and its PostgreSQL server and
// reports what it finds, each problem as a Finding that names the fix.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// Severity of a finding.
type Severity string

// Severities, in increasing order.
const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

func (s Severity) rank() int {
	switch s {
	case Warning:
		return 1
	case Error:
		return 2
	}
	return 0
}

// Finding is something the operator should know, with the command or
// setting that fixes it.
type Finding struct {
	Severity Severity `json:"severity"`
	Check    string   `json:"check"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"`
}

// Report is what Run found.
type Report struct {
	Server     Server     `json:"server"`
	Statements Statements `json:"pg_stat_statements"`
	SPIRE      SPIRE      `json:"spire"`
	// Replication, Indexes and Backups are filled by Check.
	Replication *Replication `json:"replication,omitempty"`
	Indexes     *Indexes     `json:"indexes,omitempty"`
	Backups     *Backups     `json:"backups,omitempty"`
	// Events is the state of SPIRE's events tables (with SPIRE's schema).
	Events *Events `json:"events,omitempty"`
	// Archiving is the primary's WAL archiving (point-in-time recovery).
	Archiving *backup.ArchiverStatus `json:"archiving,omitempty"`
	// PITR is what the store can restore to a point in time (with a store).
	PITR *PITR `json:"pitr,omitempty"`
	// Pooling says whether doctor talks through a pooler.
	Pooling *pg.Pooling `json:"pooling,omitempty"`
	// Privileges lists, per module, what the connecting role lacks.
	Privileges *Privileges `json:"privileges,omitempty"`
	// SettingsChecked is set when the live settings were compared with a
	// recommendation (doctor --ram --cpus).
	SettingsChecked bool `json:"settings_checked"`
	FindingList
}

// FindingList is a report's findings and the worst severity among them.
type FindingList struct {
	Findings []Finding `json:"findings"`
	Worst    Severity  `json:"worst"`
}

func (l *FindingList) add(sev Severity, check, msg, fix string) {
	l.Findings = append(l.Findings, Finding{Severity: sev, Check: check, Message: msg, Fix: fix})
}

// finish sets Worst (Info when there is no finding).
func (l *FindingList) finish() {
	if l.Findings == nil {
		l.Findings = []Finding{}
	}
	l.Worst = Info
	for _, f := range l.Findings {
		if f.Severity.rank() > l.Worst.rank() {
			l.Worst = f.Severity
		}
	}
}

// Server describes the PostgreSQL server and database.
type Server struct {
	Version       string `json:"version"`
	VersionNum    int    `json:"version_num"`
	Role          string `json:"role"` // primary or standby
	Database      string `json:"database"`
	DatabaseBytes int64  `json:"database_bytes"`
}

// Statements tells whether pg_stat_statements can be used.
type Statements struct {
	Preloaded bool   `json:"preloaded"`
	Created   bool   `json:"created"`
	Version   string `json:"version,omitempty"`
}

// SPIRE describes SPIRE's schema and data in the database.
type SPIRE struct {
	spire.Schema
	Compatible spire.Compatibility `json:"compatible_servers"`
	Entries    int64               `json:"registration_entries"`
	Agents     int64               `json:"agents"`
	Bundles    int64               `json:"bundles"`
	// Unreadable: the connecting role may not read SPIRE's tables, so
	// whether a SPIRE schema is here is unknown (finding spire.read).
	Unreadable bool `json:"unreadable,omitempty"`
}

// Inspect builds the report over an open session. Counts are read in one
// REPEATABLE READ, READ ONLY transaction so that they agree.
func Inspect(ctx context.Context, conn *pgx.Conn) (*Report, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("starting read-only transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	r := &Report{}
	var inRecovery bool
	var preload string
	var extVersion *string
	err = tx.QueryRow(ctx, pg.Marker+serverFactsSQL).
		Scan(&r.Server.Version, &r.Server.VersionNum, &inRecovery, &r.Server.Database, &r.Server.DatabaseBytes, &preload, &extVersion)
	if err != nil {
		return nil, fmt.Errorf("reading server facts: %w", err)
	}
	r.Server.Role = "primary"
	if inRecovery {
		r.Server.Role = "standby"
	}
	for _, lib := range strings.Split(preload, ",") {
		if strings.TrimSpace(strings.Trim(strings.TrimSpace(lib), `"`)) == "pg_stat_statements" {
			r.Statements.Preloaded = true
		}
	}
	if extVersion != nil {
		r.Statements.Created, r.Statements.Version = true, *extVersion
	}

	// a role that may not read SPIRE's tables (a managed service's monitoring
	// role) still gets the rest of the report, and the GRANT it needs
	var denied error
	err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
		s, err := spire.ReadSchema(ctx, sp)
		if err != nil {
			return err
		}
		r.SPIRE.Schema = s
		r.SPIRE.Compatible = spire.Compatible(s)
		if s.Present {
			counts, err := spire.CountRows(ctx, sp, s.Schema)
			if err != nil {
				return err
			}
			r.SPIRE.Entries = counts["registered_entries"]
			r.SPIRE.Agents = counts["attested_node_entries"]
			r.SPIRE.Bundles = counts["bundles"]
		}
		return nil
	})
	if pg.SQLState(err) == "42501" {
		denied, err = err, nil
		r.SPIRE.Unreadable = true
	}
	var foreign *spire.ForeignCodeError
	var ambiguous *spire.AmbiguousSchemaError
	if errors.As(err, &foreign) || errors.As(err, &ambiguous) {
		err = nil
		r.SPIRE.Unreadable = true
	}
	if err != nil {
		return nil, err
	}
	r.Findings = findings(r)
	if ambiguous != nil {
		r.Findings = append(r.Findings, Finding{Severity: Error, Check: "spire.schema",
			Message: ambiguous.Error(),
			Fix:     "ALTER ROLE " + pgx.Identifier{conn.Config().User}.Sanitize() + " SET search_path = <SPIRE's schema>; or drop the copy that is not SPIRE's"})
	}
	if foreign != nil {
		r.Findings = append(r.Findings, Finding{Severity: Error, Check: "security.spire_tables",
			Message: strings.Join(foreign.Relations, ", ") + ": in place of SPIRE's plain tables, and reading them runs their owner's code with the reader's privileges; doctor did not read SPIRE's schema, and spiredb's commands that read it refuse",
			Fix:     "find out who made them (SPIRE creates plain tables without policies, in one schema); drop them, or move them off the search_path"})
	}
	if denied != nil {
		r.Findings = append(r.Findings, Finding{Severity: Warning, Check: "spire.read",
			Message: "this role cannot read SPIRE's tables, so doctor cannot see the SPIRE schema: " + denied.Error(),
			Fix:     "GRANT SELECT ON ALL TABLES IN SCHEMA public TO current_user's role (or connect as SPIRE's role)"})
	}
	r.finish()
	return r, nil
}

func findings(r *Report) []Finding {
	var out []Finding
	if r.Server.VersionNum < 130000 {
		out = append(out, Finding{Severity: Warning, Check: "server.version",
			Message: fmt.Sprintf("PostgreSQL %s is out of community support; spiredb is tested on 13 and later", r.Server.Version),
			Fix:     "upgrade PostgreSQL (pg_upgrade or a logical replica)"})
	}
	switch {
	case !r.Statements.Preloaded:
		out = append(out, Finding{Severity: Warning, Check: "pg_stat_statements.preload",
			Message: "pg_stat_statements is not in shared_preload_libraries: no per-statement statistics",
			Fix:     "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'; then restart PostgreSQL and CREATE EXTENSION pg_stat_statements"})
	case !r.Statements.Created:
		out = append(out, Finding{Severity: Warning, Check: "pg_stat_statements.extension",
			Message: "pg_stat_statements is preloaded but the extension is not created in this database",
			Fix:     "CREATE EXTENSION pg_stat_statements"})
	}
	if !r.SPIRE.Present && !r.SPIRE.Unreadable {
		out = append(out, Finding{Severity: Info, Check: "spire.schema",
			Message: "no SPIRE schema here (no migrations table on the search_path)",
			Fix:     "point --dsn at the database named in spire-server's DataStore \"sql\" connection_string"})
	} else if r.SPIRE.Version > 0 && r.SPIRE.Compatible.Servers == "unknown" {
		out = append(out, Finding{Severity: Warning, Check: "spire.schema",
			Message: r.SPIRE.Compatible.Note, Fix: "upgrade spiredb"})
	}
	return out
}
