package tuning_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Catalog queries name pg_catalog's relations and functions with their
// schema, so that no object in the search_path can stand in for them.
func TestCatalogQueriesAreQualified(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	rel := regexp.MustCompile(`(?:FROM|JOIN)\s+([a-z_]+\.)?(pg_[a-z_]+)`)
	fn := regexp.MustCompile(`(^|[^\w.])(current_setting|current_database|pg_database_size|pg_relation_size|now)\(`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			for _, m := range rel.FindAllStringSubmatchIndex(line, -1) {
				name := line[m[4]:m[5]]
				if name != "pg_stat_statements" && (m[2] < 0 || line[m[2]:m[3]] != "pg_catalog.") {
					t.Errorf("%s:%d: %s without pg_catalog.", f, i+1, name)
				}
			}
			if m := fn.FindStringSubmatch(line); m != nil && strings.Contains(line, "`") || m != nil && strings.Contains(line, `"SELECT`) {
				t.Errorf("%s:%d: %s() without pg_catalog.", f, i+1, m[2])
			}
		}
	}
}
