package backup

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/dustin/go-humanize/english"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// Source is what a backup is a copy of: one database of one cluster
// (logical), or one cluster (physical). Clusters are told apart by their
// system identifier (pg_control_system()), which a restored or promoted
// copy keeps and a new initdb, pg_upgrade or logical move does not.
//
// A store may hold backups of more than one source (two SPIRE deployments
// given one bucket prefix, or a database moved to a new server): retention
// applies to each source apart, and restore and diff refuse --latest when
// it could mean either.
type Source struct {
	Kind string `json:"kind"`
	// SystemIdentifier is empty when unknown: manifests written before
	// spiredb recorded it, or a role that may not call pg_control_system().
	SystemIdentifier string `json:"system_identifier,omitempty"`
	// Database is the dumped database (logical backups only).
	Database string `json:"database,omitempty"`
}

func (s Source) String() string {
	cluster := "cluster " + cmp.Or(s.SystemIdentifier, "(unknown)")
	if s.Kind == KindPhysical {
		return cluster
	}
	if s.SystemIdentifier == "" {
		return "database " + s.Database
	}
	return "database " + s.Database + " of " + cluster
}

// Source is the source this backup was taken from.
func (m *Manifest) Source() Source {
	if m.IsPhysical() {
		src := Source{Kind: KindPhysical}
		if m.Physical != nil { // a damaged manifest may lack it
			src.SystemIdentifier = m.Physical.SystemIdentifier
		}
		return src
	}
	return Source{Kind: KindLogical, SystemIdentifier: m.SystemIdentifier, Database: m.Database}
}

// systemIdentifierSQL reads the cluster's system identifier, or empty for a
// role that may not call pg_control_system() (some managed services
// revoke it).
const systemIdentifierSQL = `CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
		  THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) ELSE '' END`

// SourceOf is the source of a logical backup of conn's database.
func SourceOf(ctx context.Context, conn *pgx.Conn) (Source, error) {
	src := Source{Kind: KindLogical}
	err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_database(), `+systemIdentifierSQL).Scan(&src.Database, &src.SystemIdentifier)
	if err != nil {
		return Source{}, fmt.Errorf("reading the database's cluster: %w", err)
	}
	return src, nil
}

// Restores reports whether m can restore s's database: a logical backup
// of it, or a base backup of its cluster. An unknown cluster on either
// side matches on the database alone (logical backups; a physical one
// needs both known).
func (s Source) Restores(m *Manifest) bool {
	ms := m.Source()
	if ms.Kind == KindPhysical {
		return s.SystemIdentifier != "" && ms.SystemIdentifier == s.SystemIdentifier
	}
	return ms.Database == s.Database && (ms.SystemIdentifier == "" || s.SystemIdentifier == "" || ms.SystemIdentifier == s.SystemIdentifier)
}

// Split sorts backups into those that restore s's database (Restores)
// and the others, keeping their order.
func (s Source) Split(backups []Manifest) (mine, others []Manifest) {
	for _, m := range backups {
		if s.Restores(&m) {
			mine = append(mine, m)
		} else {
			others = append(others, m)
		}
	}
	return mine, others
}

// ArchiveIsOf reports whether the store's WAL archive can be read as the
// cluster's whose backups are mine: the store holds a base backup among
// mine and none among others (timeline history files do not say which
// cluster wrote them).
func ArchiveIsOf(mine, others []Manifest) bool {
	physical := func(m Manifest) bool { return m.IsPhysical() }
	return slices.ContainsFunc(mine, physical) && !slices.ContainsFunc(others, physical)
}

// SourceGroup is one source's backups, oldest first.
type SourceGroup struct {
	Source  Source
	Backups []Manifest
}

// GroupBySource splits backups (oldest first) by source, keeping their
// order; groups come in the order of their newest backups, oldest first.
// A backup whose system identifier is unknown joins the one group of the
// same kind and database that has one; when there is none, or more than
// one, it stays a group of its own (it cannot be told apart safely).
func GroupBySource(backups []Manifest) []SourceGroup {
	known := map[Source][]Source{} // kind+database → sources with an identifier
	for i := range backups {
		s := backups[i].Source()
		if s.SystemIdentifier == "" {
			continue
		}
		k := Source{Kind: s.Kind, Database: s.Database}
		if !slices.Contains(known[k], s) {
			known[k] = append(known[k], s)
		}
	}
	index := map[Source]int{}
	var groups []SourceGroup
	for _, m := range backups {
		s := m.Source()
		if s.SystemIdentifier == "" {
			if ks := known[Source{Kind: s.Kind, Database: s.Database}]; len(ks) == 1 {
				s = ks[0]
			}
		}
		i, ok := index[s]
		if !ok {
			i = len(groups)
			index[s] = i
			groups = append(groups, SourceGroup{Source: s})
		}
		groups[i].Backups = append(groups[i].Backups, m)
	}
	slices.SortStableFunc(groups, func(a, b SourceGroup) int {
		x, y := a.Backups[len(a.Backups)-1], b.Backups[len(b.Backups)-1]
		if c := x.StartedAt.Compare(y.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return groups
}

// AmbiguousLatestError is returned when a backup is to be chosen by time
// (--latest, a point-in-time target) and the store holds backups of more
// than one source: restoring the wrong one would put another deployment's
// SPIRE data in place.
type AmbiguousLatestError struct {
	// Choosing is what was to be chosen: "--latest", "a base backup".
	Choosing string
	Store    string
	Sources  []SourceGroup
}

func (e *AmbiguousLatestError) Error() string {
	parts := make([]string, len(e.Sources))
	for i, g := range e.Sources {
		newest := g.Backups[len(g.Backups)-1]
		parts[i] = fmt.Sprintf("%s (%s, newest %s)", g.Source, english.Plural(len(g.Backups), "backup", ""), newest.ID)
	}
	return fmt.Sprintf("%s is ambiguous: %s holds backups of %d sources: %s; name one with --id, and give each database a store prefix of its own",
		e.Choosing, e.Store, len(e.Sources), strings.Join(parts, "; "))
}
