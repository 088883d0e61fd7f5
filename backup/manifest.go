package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Object names inside a backup's directory.
const (
	dumpName     = "dump"
	manifestName = "manifest.json"
	verifyName   = "verify.json"
)

// Manifest describes one complete backup.
type Manifest struct {
	ID               string           `json:"id"`
	Label            string           `json:"label,omitempty"`
	Database         string           `json:"database"`
	StartedAt        time.Time        `json:"started_at"`
	FinishedAt       time.Time        `json:"finished_at"`
	ServerVersion    string           `json:"server_version"`
	ServerVersionNum int              `json:"server_version_num"`
	PgDumpVersion    string           `json:"pg_dump_version"`
	Format           string           `json:"format"`
	Compression      int              `json:"compression"` // -1: pg_dump's default
	SPIRE            *SPIREInfo       `json:"spire,omitempty"`
	RowCounts        map[string]int64 `json:"row_counts"`
	Size             int64            `json:"size"`
	SHA256           string           `json:"sha256"`
	SpiredbVersion   string           `json:"spiredb_version"`
	// Verification is the last verify result, read from verify.json by List.
	Verification *VerifyResult `json:"verification,omitempty"`
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

// List returns every complete backup in the store, oldest first, with its
// last verification result.
func List(ctx context.Context, s Store) ([]Manifest, error) {
	objs, err := s.List(ctx, "")
	if err != nil {
		return nil, err
	}
	hasVerify := map[string]bool{}
	var ids []string
	for _, o := range objs {
		id, name, ok := strings.Cut(o.Key, "/")
		if !ok {
			continue
		}
		switch name {
		case manifestName:
			ids = append(ids, id)
		case verifyName:
			hasVerify[id] = true
		}
	}
	out := make([]Manifest, 0, len(ids))
	for _, id := range ids {
		var m Manifest
		if err := getJSON(ctx, s, manifestKey(id), &m); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // pruned meanwhile
			}
			return nil, err
		}
		if hasVerify[id] {
			var v VerifyResult
			if err := getJSON(ctx, s, verifyKey(id), &v); err == nil {
				m.Verification = &v
			}
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].StartedAt.Equal(out[j].StartedAt) {
			return out[i].StartedAt.Before(out[j].StartedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Find returns the backup with id, or the newest when latest is set.
func Find(ctx context.Context, s Store, id string, latest bool) (*Manifest, error) {
	if latest == (id != "") {
		return nil, errors.New("name a backup with --id ID or --latest (one of them)")
	}
	all, err := List(ctx, s)
	if err != nil {
		return nil, err
	}
	if latest {
		if len(all) == 0 {
			return nil, fmt.Errorf("no backups in %s", s)
		}
		return &all[len(all)-1], nil
	}
	for i := range all {
		if all[i].ID == id {
			return &all[i], nil
		}
	}
	return nil, fmt.Errorf("no backup %q in %s (see `spiredb backup list`)", id, s)
}
