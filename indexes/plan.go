package indexes

import (
	"context"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/spire"
)

// State is where a set index stands on a live database.
type State string

// States of a set index.
const (
	Missing   State = "missing"
	Present   State = "present"
	Different State = "different" // an index of that name with another definition
	Invalid   State = "invalid"   // left INVALID by a failed or cancelled concurrent build
	Building  State = "building"  // a CREATE INDEX CONCURRENTLY is running now
)

// Planned is one set index against the live database.
type Planned struct {
	Index
	State State `json:"state"`
	// Live is the definition found, for Different.
	Live string `json:"live,omitempty"`
	// Applicable is false when the SPIRE schema version is outside the
	// versions the index was verified on: apply then leaves it.
	Applicable bool `json:"applicable"`
}

// Plan is the desired index set against a live database, and SPIRE's own
// indexes the set works beside.
type Plan struct {
	Schema        string    `json:"schema"`
	SchemaVersion int       `json:"spire_schema_version"`
	Indexes       []Planned `json:"indexes"`
	// SpireIndexes lists SPIRE's own indexes: present, or missing (SPIRE
	// creates them; a missing one was dropped by hand).
	SpireIndexes []SpireIndex `json:"spire_indexes"`
}

// SpireIndex is one of SPIRE's own indexes on the live database.
type SpireIndex struct {
	Name    string `json:"name"`
	Table   string `json:"table"`
	Present bool   `json:"present"`
	Valid   bool   `json:"valid"`
}

// ToDo returns the set indexes apply would build, in set order.
func (p *Plan) ToDo() []Planned {
	var out []Planned
	for _, ix := range p.Indexes {
		if ix.Applicable && ix.State != Present && ix.State != Building {
			out = append(out, ix)
		}
	}
	return out
}

// MakePlan compares the set with the live database of conn.
func MakePlan(ctx context.Context, conn *pgx.Conn) (*Plan, error) {
	s, err := spireSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	live, err := ReadLive(ctx, conn, s.Schema)
	if err != nil {
		return nil, err
	}
	return planAgainst(s, live), nil
}

func planAgainst(s spire.Schema, live []Live) *Plan {
	byName := make(map[string]Live, len(live))
	for _, l := range live {
		byName[l.Name] = l
	}
	p := &Plan{Schema: s.Schema, SchemaVersion: s.Version}
	for _, ix := range spireSet {
		pl := Planned{Index: ix, State: Missing, Applicable: ix.Applies(s.Version)}
		if l, ok := byName[ix.Name]; ok {
			switch {
			case l.Building:
				pl.State = Building
			case !l.Valid:
				pl.State = Invalid
			case l.Table != ix.Table || l.access() != ix.access():
				pl.State, pl.Live = Different, l.Definition
			default:
				pl.State = Present
			}
		}
		p.Indexes = append(p.Indexes, pl)
	}
	for name, table := range spire.Indexes {
		l, ok := byName[name]
		p.SpireIndexes = append(p.SpireIndexes, SpireIndex{Name: name, Table: table, Present: ok, Valid: ok && l.Valid})
	}
	slices.SortFunc(p.SpireIndexes, func(a, b SpireIndex) int {
		if a.Table != b.Table {
			if a.Table < b.Table {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return p
}
