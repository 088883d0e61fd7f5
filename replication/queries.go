package replication

import (
	"embed"
	"strings"
)

// The package's multi-line catalog queries live in sql/NAME.sql, where
// they read (and can be run by hand) as SQL.
//
//go:embed sql/*.sql
var queryFiles embed.FS

// query returns sql/NAME.sql. A missing file panics when the package is
// initialised, so every test of the package catches it.
func query(name string) string {
	b, err := queryFiles.ReadFile("sql/" + name + ".sql")
	if err != nil {
		panic("missing embedded query: " + err.Error())
	}
	return strings.TrimSpace(string(b))
}

var (
	standbysSQL      = query("standbys")
	slotsSQL         = query("slots")
	receiverSQL      = query("receiver")
	fenceSessionsSQL = query("fence_sessions")
)
