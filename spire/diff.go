package spire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

// DatastoreDiff is what separates two SPIRE datastores, in SPIRE's terms:
// Then (a backup, restored into a scratch database) and Now (the live
// datastore). Every change is named for what a restore of Then over Now
// would do to it.
type DatastoreDiff struct {
	// Findings is the number of differing objects; 0 means a restore of
	// Then over Now loses nothing.
	Findings int64 `json:"findings"`
	// SchemaThen and SchemaNow are SPIRE's migrations.version on each side.
	SchemaThen int          `json:"schema_then"`
	SchemaNow  int          `json:"schema_now"`
	Tables     []TableDiff  `json:"tables"`
	Notes      []string     `json:"notes,omitempty"`
	Duration   jsonDuration `json:"duration_ms"`
}

// TableDiff is one kind of SPIRE object.
type TableDiff struct {
	Table   string   `json:"table"`
	What    string   `json:"what"`
	Then    int64    `json:"rows_then"`
	Now     int64    `json:"rows_now"`
	Changes []Change `json:"changes"`
}

// Change counts the objects of one kind of difference, with the first few
// keys (entry IDs, agent SPIFFE IDs, trust domains, ...) in key order.
type Change struct {
	Kind   string   `json:"kind"`
	Count  int64    `json:"count"`
	Effect string   `json:"effect"`
	Sample []string `json:"sample,omitempty"`
}

type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return fmt.Appendf(nil, "%d", time.Duration(d).Milliseconds()), nil
}

// DiffOptions tune Diff.
type DiffOptions struct {
	// Sample is how many keys each change keeps (default 10; negative:
	// none).
	Sample int
	// Now is the time join-token expiry is judged against (default: the
	// clock).
	Now time.Time
}

// diffRow is one object: its key, a digest of what SPIRE reads of it, and
// the few columns a change is classified by.
type diffRow struct {
	key, digest string
	extra       []string
}

// diffSpec is how one SPIRE table is compared. The digest covers the
// table's columns present on both sides except id and the gorm timestamps
// (a row SPIRE only touched is not a change; a SPIRE upgrade that added a
// column does not make every row differ), plus the child rows SPIRE reads
// with it.
type diffSpec struct {
	table, what, key string
	extra            []string // columns read for classify, as text
	// children is a FROM-clause tail joining aggregates of child tables
	// (%[1]s is the schema) and childDigest the expression over them
	children, childDigest string
	// change kinds: only on Now, only on Then, on both but different
	added, removed, changed kind
	// classify picks the kind of a row on both sides (nil: changed)
	classify func(then, now diffRow, d *diffSpec) kind
	// split picks the kind of a row only on Then (nil: removed)
	split func(then diffRow, now time.Time, d *diffSpec) kind
	more  []kind // further kinds classify or split return
	// secret keys (join tokens are credentials) are listed by a digest
	secret bool
}

type kind struct{ name, effect string }

var (
	agentBanned   = kind{"banned", "un-banned by a restore: these agents can fetch SVIDs again"}
	agentUnbanned = kind{"unbanned", "banned again by a restore"}
	agentRenewed  = kind{"renewed", "their current SVID serial is unknown to the backup: after a restore they are refused and must re-attest"}
	tokenLive     = kind{"used", "come back and can be used again: used or deleted since, not expired"}
	tokenExpired  = kind{"expired", "come back already expired (harmless; SPIRE prunes them)"}
)

var diffSpecs = []diffSpec{
	{
		table: "registered_entries", what: "registration entries", key: "entry_id",
		children: ` LEFT JOIN (SELECT registered_entry_id, pg_catalog.string_agg(type || '=' || value, ',' ORDER BY type, value) AS a
			FROM %[1]s.selectors GROUP BY 1) s ON s.registered_entry_id = t.id
		LEFT JOIN (SELECT registered_entry_id, pg_catalog.string_agg(value, ',' ORDER BY value) AS a
			FROM %[1]s.dns_names GROUP BY 1) d ON d.registered_entry_id = t.id
		LEFT JOIN (SELECT f.registered_entry_id, pg_catalog.string_agg(b.trust_domain, ',' ORDER BY b.trust_domain) AS a
			FROM %[1]s.federated_registration_entries f JOIN %[1]s.bundles b ON b.id = f.bundle_id GROUP BY 1) f ON f.registered_entry_id = t.id`,
		childDigest: `'|s:' || coalesce(s.a, '') || '|d:' || coalesce(d.a, '') || '|f:' || coalesce(f.a, '')`,
		added:       kind{"created", "lost: a restore deletes them"},
		changed:     kind{"changed", "reverted to the backup's version (selectors, DNS names, TTLs, federation, expiry)"},
		removed:     kind{"deleted", "come back: workloads matching them get SVIDs again"},
	},
	{
		table: "attested_node_entries", what: "agents", key: "spiffe_id",
		extra: []string{"serial_number", "new_serial_number"},
		children: ` LEFT JOIN (SELECT spiffe_id, pg_catalog.string_agg(type || '=' || value, ',' ORDER BY type, value) AS a
			FROM %[1]s.node_resolver_map_entries GROUP BY 1) r ON r.spiffe_id = t.spiffe_id`,
		childDigest: `'|r:' || coalesce(r.a, '')`,
		added:       kind{"attested", "unknown after a restore: they must re-attest"},
		changed:     kind{"changed", "reverted to the backup's version (selectors, expiry)"},
		removed:     kind{"evicted", "come back as attested agents"},
		more:        []kind{agentBanned, agentUnbanned, agentRenewed},
		classify: func(then, now diffRow, d *diffSpec) kind {
			// SPIRE bans an agent by clearing its serial number
			// (pkg/common/nodeutil.IsAgentBanned)
			bannedThen, bannedNow := then.extra[0] == "", now.extra[0] == ""
			switch {
			case bannedNow && !bannedThen:
				return agentBanned
			case bannedThen && !bannedNow:
				return agentUnbanned
			case then.extra[0] != now.extra[0] || then.extra[1] != now.extra[1]:
				return agentRenewed
			}
			return d.changed
		},
	},
	{
		table: "bundles", what: "bundles", key: "trust_domain",
		added:   kind{"added", "lost: a restore deletes them"},
		changed: kind{"changed", "reverted: authorities added since are lost, authorities removed since come back"},
		removed: kind{"removed", "come back"},
	},
	{
		table: "ca_journals", what: "CA journals", key: "id",
		added:   kind{"added", "lost: a restore deletes them"},
		changed: kind{"changed", "reverted: a server may load an older, possibly expired CA (see spire#5796)"},
		removed: kind{"removed", "come back"},
	},
	{
		table: "join_tokens", what: "join tokens", key: "token", secret: true,
		extra:   []string{"expiry"},
		added:   kind{"issued", "lost: agents can no longer attest with them"},
		changed: kind{"changed", "reverted to the backup's expiry"},
		more:    []kind{tokenLive, tokenExpired},
		split: func(then diffRow, now time.Time, _ *diffSpec) kind {
			var exp int64
			if _, err := fmt.Sscan(then.extra[0], &exp); err == nil && exp > 0 && exp <= now.Unix() {
				return tokenExpired
			}
			return tokenLive
		},
	},
	{
		table: "federated_trust_domains", what: "federation relationships", key: "trust_domain",
		added:   kind{"added", "lost: a restore deletes them"},
		changed: kind{"changed", "reverted to the backup's bundle endpoint"},
		removed: kind{"removed", "come back"},
	},
}

// Diff compares the SPIRE datastore on then (a backup restored into a
// scratch database) with the one on now (the live datastore), table by
// table, streaming both sides in key order: memory stays small whatever the
// number of entries. Each side is read in one REPEATABLE READ snapshot.
func Diff(ctx context.Context, then, now *pgx.Conn, o DiffOptions) (*DatastoreDiff, error) {
	start := time.Now()
	if o.Sample == 0 {
		o.Sample = 10
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	txs := make([]pgx.Tx, 2)
	schemas := make([]Schema, 2)
	for i, c := range []*pgx.Conn{then, now} {
		tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return nil, fmt.Errorf("starting a snapshot: %w", err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		txs[i] = tx
		if schemas[i], err = ReadSchema(ctx, tx); err != nil {
			return nil, err
		}
	}
	for i, side := range []string{"the backup", "the live database"} {
		if !schemas[i].Present {
			return nil, fmt.Errorf("%s has no SPIRE schema (no migrations table)", side)
		}
	}
	res := &DatastoreDiff{SchemaThen: schemas[0].Version, SchemaNow: schemas[1].Version, Tables: []TableDiff{}}
	if res.SchemaThen != res.SchemaNow {
		res.Notes = append(res.Notes, fmt.Sprintf("SPIRE schema version %d in the backup, %d now: a restore goes back to the older schema's server releases",
			res.SchemaThen, res.SchemaNow))
	}
	for i := range diffSpecs {
		d := &diffSpecs[i]
		td, note, err := diffTable(ctx, txs[0], txs[1], schemas[0].Schema, schemas[1].Schema, d, o)
		if err != nil {
			return nil, fmt.Errorf("comparing %s: %w", d.table, err)
		}
		if note != "" {
			res.Notes = append(res.Notes, note)
			continue
		}
		for _, c := range td.Changes {
			res.Findings += c.Count
		}
		res.Tables = append(res.Tables, *td)
	}
	res.Duration = jsonDuration(time.Since(start))
	return res, nil
}

// diffTable merges the two sides of one table in key order.
func diffTable(ctx context.Context, then, now pgx.Tx, nspThen, nspNow string, d *diffSpec, o DiffOptions) (*TableDiff, string, error) {
	colsThen, err := tableColumns(ctx, then, nspThen, d.table)
	if err != nil {
		return nil, "", err
	}
	colsNow, err := tableColumns(ctx, now, nspNow, d.table)
	if err != nil {
		return nil, "", err
	}
	switch {
	case colsThen == nil && colsNow == nil:
		return nil, fmt.Sprintf("%s: no %s table on either side", d.what, d.table), nil
	case colsThen == nil:
		return nil, fmt.Sprintf("%s: the backup has no %s table (an older SPIRE schema); not compared", d.what, d.table), nil
	case colsNow == nil:
		return nil, fmt.Sprintf("%s: the live database has no %s table; not compared", d.what, d.table), nil
	}
	var common []string
	for _, c := range colsThen {
		if slices.Contains(colsNow, c) && c != "id" && c != "created_at" && c != "updated_at" {
			common = append(common, c)
		}
	}
	td := &TableDiff{Table: d.table, What: d.what}
	kinds := append([]kind{d.added, d.changed, d.removed}, d.more...)
	changes := make(map[string]*Change, len(kinds))
	for _, k := range kinds {
		if k.name == "" {
			continue
		}
		td.Changes = append(td.Changes, Change{Kind: k.name, Effect: k.effect})
	}
	for i := range td.Changes {
		changes[td.Changes[i].Kind] = &td.Changes[i]
	}
	note := func(k kind, key string) {
		c := changes[k.name]
		c.Count++
		if len(c.Sample) < o.Sample {
			if d.secret {
				sum := sha256.Sum256([]byte(key))
				key = "sha256:" + hex.EncodeToString(sum[:6])
			}
			c.Sample = append(c.Sample, key)
		}
	}

	a, err := openSide(ctx, then, nspThen, d, common)
	if err != nil {
		return nil, "", err
	}
	defer a.rows.Close()
	b, err := openSide(ctx, now, nspNow, d, common)
	if err != nil {
		return nil, "", err
	}
	defer b.rows.Close()
	ra, oka := a.next()
	rb, okb := b.next()
	for oka || okb {
		switch {
		case oka && (!okb || ra.key < rb.key):
			td.Then++
			k := d.removed
			if d.split != nil {
				k = d.split(ra, o.Now, d)
			}
			note(k, ra.key)
			ra, oka = a.next()
		case okb && (!oka || rb.key < ra.key):
			td.Now++
			note(d.added, rb.key)
			rb, okb = b.next()
		default:
			td.Then++
			td.Now++
			if ra.digest != rb.digest {
				k := d.changed
				if d.classify != nil {
					k = d.classify(ra, rb, d)
				}
				note(k, ra.key)
			}
			ra, oka = a.next()
			rb, okb = b.next()
		}
	}
	if err := a.err(); err != nil {
		return nil, "", fmt.Errorf("reading the backup: %w", err)
	}
	if err := b.err(); err != nil {
		return nil, "", fmt.Errorf("reading the live database: %w", err)
	}
	return td, "", nil
}

// tableColumns lists a table's columns in order, nil when it is absent.
func tableColumns(ctx context.Context, q Querier, nsp, table string) ([]string, error) {
	rows, err := q.Query(ctx, pg.Marker+`SELECT a.attname FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
		pgx.Identifier{nsp, table}.Sanitize())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

type side struct {
	rows  pgx.Rows
	nx    int
	last  string
	order error
}

// openSide streams a table's rows ordered by key in byte order (COLLATE
// "C"), which is Go's string order.
func openSide(ctx context.Context, tx pgx.Tx, nsp string, d *diffSpec, common []string) (*side, error) {
	q := pgx.Identifier{nsp}.Sanitize()
	cols := make([]string, len(common))
	for i, c := range common {
		cols[i] = "t." + pgx.Identifier{c}.Sanitize()
	}
	digest := "ROW(" + strings.Join(cols, ", ") + ")::text"
	if len(cols) == 0 {
		digest = "''"
	}
	if d.childDigest != "" {
		digest += " || " + d.childDigest
	}
	sel := []string{"t." + pgx.Identifier{d.key}.Sanitize() + "::text AS k", "pg_catalog.md5(" + digest + ")"}
	for _, e := range d.extra {
		sel = append(sel, "coalesce(t."+pgx.Identifier{e}.Sanitize()+"::text, '')")
	}
	from := q + "." + pgx.Identifier{d.table}.Sanitize() + " t"
	if d.children != "" {
		from += fmt.Sprintf(d.children, q)
	}
	sql := pg.Marker + "SELECT " + strings.Join(sel, ", ") + " FROM " + from +
		" WHERE t." + pgx.Identifier{d.key}.Sanitize() + " IS NOT NULL ORDER BY t." + pgx.Identifier{d.key}.Sanitize() + "::text COLLATE \"C\""
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return &side{rows: rows, nx: len(d.extra)}, nil
}

func (s *side) next() (diffRow, bool) {
	if s.order != nil || !s.rows.Next() {
		return diffRow{}, false
	}
	r := diffRow{extra: make([]string, s.nx)}
	dest := []any{&r.key, &r.digest}
	for i := range r.extra {
		dest = append(dest, &r.extra[i])
	}
	if err := s.rows.Scan(dest...); err != nil {
		s.order = err
		return diffRow{}, false
	}
	// the merge is only right on a strictly increasing key
	if r.key <= s.last && s.last != "" {
		s.order = fmt.Errorf("keys out of order or repeated (%q after %q)", r.key, s.last)
		return diffRow{}, false
	}
	s.last = r.key
	return r, true
}

func (s *side) err() error {
	if s.order != nil {
		return s.order
	}
	return s.rows.Err()
}
