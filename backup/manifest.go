package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Object names inside a backup's directory.
const (
	dumpName     = "dump"
	baseName     = "base.tar.zst"
	manifestName = "manifest.json"
	verifyName   = "verify.json"
)

// Manifest describes one complete backup.
type Manifest struct {
	ID string `json:"id"`
	// Kind is KindLogical (pg_dump; manifests before PITR have none) or
	// KindPhysical (a base backup for point-in-time recovery).
	Kind     string `json:"kind,omitempty"`
	Label    string `json:"label,omitempty"`
	Database string `json:"database"`
	// SystemIdentifier is the dumped cluster's (logical backups; a
	// physical one has it in Physical): with Database, the backup's
	// Source. Empty in manifests written before it was recorded, or when
	// the role may not call pg_control_system().
	SystemIdentifier string    `json:"system_identifier,omitempty"`
	StartedAt        time.Time `json:"started_at"`
	FinishedAt       time.Time `json:"finished_at"`
	ServerVersion    string    `json:"server_version"`
	ServerVersionNum int       `json:"server_version_num"`
	PgDumpVersion    string    `json:"pg_dump_version"`
	Format           string    `json:"format"`
	Compression      int       `json:"compression"` // pg_dump's -Z; -1: its default
	// Codec is how the stored object is compressed: CodecZstd, or
	// CodecPgDump (empty in manifests written before codecs).
	Codec          string           `json:"codec,omitempty"`
	SPIRE          *SPIREInfo       `json:"spire,omitempty"`
	RowCounts      map[string]int64 `json:"row_counts"`
	Size           int64            `json:"size"`
	SHA256         string           `json:"sha256"`
	SpiredbVersion string           `json:"spiredb_version"`
	// Physical describes a base backup.
	Physical *PhysicalInfo `json:"physical,omitempty"`
	// Encryption is set when the data object is encrypted (age envelope).
	Encryption *Encryption `json:"encryption,omitempty"`
	// Verification is the last verify result, read from verify.json by List.
	Verification *VerifyResult `json:"verification,omitempty"`

	// dataKeyPlain is the unwrapped data key of an encrypted backup, set
	// by Unlock; never stored.
	dataKeyPlain []byte
}

// Backup kinds.
const (
	KindLogical  = "logical"
	KindPhysical = "physical"
)

// IsPhysical reports whether m is a base backup.
func (m *Manifest) IsPhysical() bool { return m.Kind == KindPhysical }

// KindName is the backup's kind, logical for manifests written before kinds.
func (m *Manifest) KindName() string {
	if m.Kind == "" {
		return KindLogical
	}
	return m.Kind
}

// dataKey is the object holding the backup's data.
func (m *Manifest) dataKey() string {
	if m.IsPhysical() {
		return m.ID + "/" + baseName
	}
	return dumpKey(m.ID)
}

// SPIREInfo is SPIRE's schema record at backup time.
type SPIREInfo struct {
	SchemaVersion int    `json:"schema_version"`
	CodeVersion   string `json:"code_version"`
	Schema        string `json:"schema"`
}

// Verified reports whether the newest verification passed.
func (m *Manifest) Verified() bool { return m.Verification != nil && m.Verification.OK }

func dumpKey(id string) string     { return id + "/" + dumpName }
func manifestKey(id string) string { return id + "/" + manifestName }
func verifyKey(id string) string   { return id + "/" + verifyName }

func putJSON(ctx context.Context, s Store, key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = s.Put(ctx, key, bytes.NewReader(append(b, '\n')))
	return err
}

func getJSON(ctx context.Context, s Store, key string, v any) error {
	rc, err := s.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 16<<20))
	if err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parsing %s: %w", key, err)
	}
	return nil
}

// idPattern is the shape of the IDs Run gives backups (newID): a backup
// directory of any other name was not written by spiredb.
var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$`)

// IsBackupID reports whether s has the shape of a backup ID.
func IsBackupID(s string) bool { return idPattern.MatchString(s) }

// ownNames are the objects Run and Verify write inside a backup's
// directory: the only names prune ever deletes.
var ownNames = []string{dumpName, baseName, manifestName, verifyName}

// Problem is something in a store that looks like a backup but cannot be
// used as one: an unreadable manifest, a copied backup directory. It is
// reported and never deleted.
type Problem struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
}

func (p Problem) String() string { return p.Key + ": " + p.Reason }

// Inventory is what a store holds, sorted out once.
type Inventory struct {
	// Backups are the complete backups, oldest first: an ID-shaped
	// directory whose manifest parses and names that same directory.
	Backups []Manifest
	// Problems are the backup-like things that cannot be used.
	Problems []Problem
	// Foreign are the top-level names spiredb did not write (not ID-shaped):
	// left alone by every command.
	Foreign []string
	// objects are the store's objects by backup ID (ID-shaped only).
	objects map[string][]Object
}

// Inspect lists the store once and sorts what it holds into backups,
// problems and foreign names. Reading needs read access only. One bad
// manifest is a Problem, never an error: the other backups stay usable.
func Inspect(ctx context.Context, s Store) (*Inventory, error) {
	objs, err := s.List(ctx, "")
	if err != nil {
		return nil, err
	}
	inv := &Inventory{objects: map[string][]Object{}}
	foreign := map[string]bool{}
	var ids []string
	hasVerify := map[string]bool{}
	for _, o := range objs {
		id, name, nested := strings.Cut(o.Key, "/")
		if id+"/" == walPrefix && nested {
			continue // the WAL archive: wal push's, pruned with the bases
		}
		if !IsBackupID(id) || !nested {
			if name == manifestName {
				inv.Problems = append(inv.Problems, Problem{Key: o.Key, Reason: "a manifest outside a backup-ID directory (a copied backup?): ignored"})
			}
			foreign[id] = true
			continue
		}
		inv.objects[id] = append(inv.objects[id], o)
		switch name {
		case manifestName:
			ids = append(ids, id)
		case verifyName:
			hasVerify[id] = true
		}
	}
	for id := range foreign {
		inv.Foreign = append(inv.Foreign, id)
	}
	sort.Strings(inv.Foreign)
	for _, id := range ids {
		var m Manifest
		if err := getJSON(ctx, s, manifestKey(id), &m); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // pruned meanwhile
			}
			inv.Problems = append(inv.Problems, Problem{Key: manifestKey(id), Reason: "unreadable manifest: " + err.Error()})
			continue
		}
		if m.ID != id {
			inv.Problems = append(inv.Problems, Problem{Key: manifestKey(id), Reason: fmt.Sprintf("the manifest names backup %q, not its directory (a copied backup?): ignored", m.ID)})
			continue
		}
		if m.IsPhysical() && m.Physical == nil {
			inv.Problems = append(inv.Problems, Problem{Key: manifestKey(id), Reason: "a base backup's manifest without its physical section (start, segment size, cluster): ignored"})
			continue
		}
		if hasVerify[id] {
			var v VerifyResult
			if err := getJSON(ctx, s, verifyKey(id), &v); err == nil && v.ID == id {
				m.Verification = &v
			}
		}
		inv.Backups = append(inv.Backups, m)
	}
	sort.Slice(inv.Backups, func(i, j int) bool {
		a, b := inv.Backups[i], inv.Backups[j]
		if !a.StartedAt.Equal(b.StartedAt) {
			return a.StartedAt.Before(b.StartedAt)
		}
		return a.ID < b.ID
	})
	sort.Slice(inv.Problems, func(i, j int) bool { return inv.Problems[i].Key < inv.Problems[j].Key })
	return inv, nil
}

// Warn logs each problem as one warning line.
func (inv *Inventory) Warn(logger *slog.Logger) {
	for _, p := range inv.Problems {
		logger.Warn("not a usable backup, left alone: "+p.Reason, "key", p.Key)
	}
}

// List returns every complete backup in the store, oldest first, with its
// last verification result. Problems (see Inspect) are left out.
func List(ctx context.Context, s Store) ([]Manifest, error) {
	inv, err := Inspect(ctx, s)
	if err != nil {
		return nil, err
	}
	return inv.Backups, nil
}

// Find returns the backup with id, or the newest when latest is set
// (whatever its source: see GroupBySource).
func Find(ctx context.Context, s Store, id string, latest bool) (*Manifest, error) {
	return find(ctx, s, id, latest, "", anySource, nil)
}

// How find treats --latest in a store holding backups of several sources.
const (
	anySource  = iota // the newest, whatever its source
	warnSource        // the newest, with a warning naming its source
	oneSource         // an *AmbiguousLatestError
)

// find is Find for backups of kind ("": any), logging the store's
// problems as warnings. latest picks the newest of that kind; mixed says
// what to do when those come from more than one source.
func find(ctx context.Context, s Store, id string, latest bool, kind string, mixed int, logger *slog.Logger) (*Manifest, error) {
	if latest == (id != "") {
		return nil, errors.New("name a backup with --id ID or --latest (one of them)")
	}
	inv, err := Inspect(ctx, s)
	if err != nil {
		return nil, err
	}
	inv.Warn(orDiscard(logger))
	var all []Manifest
	for _, m := range inv.Backups {
		if kind == "" || m.KindName() == kind || m.ID == id {
			all = append(all, m)
		}
	}
	if latest {
		if len(all) == 0 {
			if kind != "" {
				return nil, fmt.Errorf("no %s backups in %s", kind, s)
			}
			return nil, fmt.Errorf("no backups in %s", s)
		}
		newest := &all[len(all)-1]
		if groups := GroupBySource(all); len(groups) > 1 {
			switch mixed {
			case oneSource:
				return nil, &AmbiguousLatestError{Choosing: "--latest", Store: s.String(), Sources: groups}
			case warnSource:
				orDiscard(logger).Warn(fmt.Sprintf("the store holds backups of %d sources; --latest is the newest of %s", len(groups), newest.Source()), "id", newest.ID)
			}
		}
		return newest, nil
	}
	for i := range all {
		if all[i].ID == id {
			if kind != "" && all[i].KindName() != kind {
				return nil, fmt.Errorf("backup %s is a %s backup, this needs a %s one", id, all[i].KindName(), kind)
			}
			return &all[i], nil
		}
	}
	for _, p := range inv.Problems {
		if strings.HasPrefix(p.Key, id+"/") {
			return nil, fmt.Errorf("%s in %s is not a usable backup: %s", id, s, p.Reason)
		}
	}
	return nil, fmt.Errorf("no backup %q in %s (see `spiredb backup list`)", id, s)
}
