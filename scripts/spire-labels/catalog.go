package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/spire"
)

// rules name SPIRE's operations from the text of its statements (gorm v1
// through lib/pq, as pg_stat_statements stores them, whitespace collapsed).
// The first match wins, so the specific come before the general. The names
// are what `spiredb stats top` prints: keep them stable across versions.
var rules = []struct {
	label string
	re    *regexp.Regexp
}{
	// the full cache reload (default mode: every 5 s on every server); an
	// unfiltered `entry show` pages with the same statement
	{"cache reload page", re(`^WITH listing AS \( SELECT id AS e_id FROM registered_entries (WHERE id > \$1 )?ORDER BY id ASC LIMIT`)},
	{"cache reload node selectors", re(`^SELECT nre\.spiffe_id, nre\.type, nre\.value FROM node_resolver_map_entries nre INNER JOIN attested_node_entries`)},
	// entry create looks for an entry with the same parent, SPIFFE ID and
	// selectors first (ListRegistrationEntries with exact filters)
	{"similar-entry lookup", re(`^WITH listing AS \( SELECT e_id FROM \( SELECT id AS e_id FROM registered_entries WHERE parent_id = \$1 AND spiffe_id = \$2 INTERSECT`)},
	{"entry list (filtered)", re(`^WITH listing AS \( SELECT (E\.id|id|registered_entry_id) AS e_id FROM (registered_entries|selectors)`)},
	{"changed entries fetch (events cache)", re(`^WITH listing AS \( SELECT id FROM registered_entries WHERE entry_id IN`)},
	{"events poll", re(`^SELECT \* FROM "(registered_entries|attested_node_entries)_events"`)},
	{"events prune", re(`^DELETE FROM "(registered_entries|attested_node_entries)_events" WHERE \(created_at < \$1\)`)},
	{"expiry prune", re(`(registered_entries.*expiry < \$\d|expiry != 0)`)},
	{"entry event insert", re(`^INSERT INTO "registered_entries_events"`)},
	{"node event insert", re(`^INSERT INTO "attested_node_entries_events"`)},
	{"entry insert", re(`^INSERT INTO "registered_entries"`)},
	{"selector insert", re(`^INSERT INTO "selectors"`)},
	{"DNS name insert", re(`^INSERT INTO "dns_names"`)},
	{"entry federation insert", re(`^INSERT INTO "federated_registration_entries"`)},
	{"entry update", re(`^UPDATE "registered_entries"`)},
	{"entry delete", re(`^DELETE FROM ("registered_entries"|selectors|dns_names|"federated_registration_entries" WHERE \("registered_entry_id")`)},
	{"entry fetch", re(`^SELECT (\* FROM "(registered_entries|selectors|dns_names)"|"bundles"\.\* FROM "bundles" INNER JOIN "federated_registration_entries" ON .* WHERE \("federated_registration_entries"\."registered_entry_id")`)},
	{"node list", re(`^WITH filtered_nodes AS`)},
	{"node fetch", re(`^SELECT (\* FROM "attested_node_entries" WHERE \(spiffe_id = \$1\)|type, value FROM node_resolver_map_entries WHERE spiffe_id)`)},
	{"node update", re(`^UPDATE "attested_node_entries"`)},
	{"node delete", re(`^DELETE FROM "(attested_node_entries|node_resolver_map_entries)"`)},
	{"bundle fetch", re(`^SELECT (\*|count\(\*\)) FROM "bundles"`)},
	{"bundle write", re(`^(INSERT INTO|UPDATE|DELETE FROM) "bundles"|^DELETE FROM "federated_registration_entries" WHERE \("bundle_id"|^SELECT count\(\*\) FROM "registered_entries" INNER JOIN "federated_registration_entries"`)},
	{"federation relationship", re(`"federated_trust_domains"`)},
	{"join token", re(`"join_tokens"`)},
	{"CA journal", re(`"ca_journals"`)},
	{"schema check (start-up)", re(`^(SELECT count\(\*\) FROM INFORMATION_SCHEMA|SHOW server_version|SELECT \* FROM "migrations")`)},
	{"transaction control", re(`^(BEGIN|COMMIT|ROLLBACK)\b`)},
}

func re(s string) *regexp.Regexp { return regexp.MustCompile(s) }

func label(query string) string {
	q := strings.Join(strings.Fields(query), " ")
	for _, r := range rules {
		if r.re.MatchString(q) {
			return r.label
		}
	}
	return ""
}

// writeCatalog labels the statements, fails on any no rule names (so a new
// SPIRE version's statements are looked at), and writes the catalog sorted
// by label then text, one statement per fingerprint.
func writeCatalog(out string, stmts []observed, examples map[string]*spire.Example) error {
	cat := spire.Catalog{
		SpireVersion: spiretest.Version,
		GeneratedBy:  "make spire-labels (scripts/spire-labels): do not edit",
	}
	seen := map[string]bool{}
	var unlabelled []string
	for _, s := range stmts {
		l := label(s.Query)
		if l == "" {
			unlabelled = append(unlabelled, fmt.Sprintf("  [%s] %.200s", s.Phase, strings.Join(strings.Fields(s.Query), " ")))
			continue
		}
		fp, err := spire.Fingerprint(s.Query)
		if err != nil {
			return fmt.Errorf("fingerprint of %.80q: %w", s.Query, err)
		}
		if seen[fp] {
			continue
		}
		seen[fp] = true
		cat.Statements = append(cat.Statements, spire.Statement{Label: l, Phase: s.Phase, Query: s.Query, Example: examples[fp]})
	}
	if len(unlabelled) > 0 {
		return fmt.Errorf("%d statements match no rule in scripts/spire-labels/catalog.go; add rules:\n%s", len(unlabelled), strings.Join(unlabelled, "\n"))
	}
	labels := map[string]bool{}
	for _, s := range cat.Statements {
		labels[s.Label] = true
	}
	for _, r := range rules {
		if !labels[r.label] {
			fmt.Fprintf(os.Stderr, "spire-labels: warning: no statement for %q in this run\n", r.label)
		}
	}
	sort.SliceStable(cat.Statements, func(i, j int) bool {
		a, b := cat.Statements[i], cat.Statements[j]
		if a.Label != b.Label {
			return a.Label < b.Label
		}
		return a.Query < b.Query
	})
	b, err := json.MarshalIndent(cat, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "spire-labels: wrote %s: %d statements, %d operations\n", out, len(cat.Statements), len(labels))
	return nil
}
