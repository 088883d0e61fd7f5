package migrations

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ownTable is the version table of spiredb's own migrations; bookkeeping
// are spiredb's other tables in its schema. No operator's set may use
// them as its version table: its runs would move spiredb's version, or
// delete spiredb's records.
const ownTable = "schema_migrations"

var bookkeeping = []string{"migration_runs", "backfill_jobs", "view_refreshes"}

// Validate reports options Open cannot work with, in one line.
func (o Options) Validate() error {
	if len(o.Table) > 63 || strings.ContainsRune(o.Table, 0) {
		return fmt.Errorf("invalid version table %q: at most 63 bytes", o.Table)
	}
	switch {
	case slices.Contains(bookkeeping, o.Table):
		return fmt.Errorf("--version-table %s: spiredb.%s is spiredb's own bookkeeping, not a version table: give this migration set a table of its own", o.Table, o.Table)
	case o.Source != "" && o.Table == ownTable:
		return fmt.Errorf("--version-table %s: spiredb.%s holds spiredb's own migrations' version, and another set there would move it: give this set a table of its own (default operator_migrations)", o.Table, o.Table)
	case o.Source == "" && o.Table != "" && o.Table != ownTable:
		return fmt.Errorf("--version-table %s: spiredb's own migrations keep their version in spiredb.%s; --version-table names the table of an operator's set (with --source)", o.Table, ownTable)
	}
	if o.LockWait < 0 {
		return errors.New("migrations: negative lock wait")
	}
	return o.Retry.Validate()
}
