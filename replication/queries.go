package replication

import (
	"embed"

	"github.com/spiredb/spiredb/internal/sqlfile"
)

// The package's multi-line catalog queries live in sql/NAME.sql.
//
//go:embed sql/*.sql
var queryFiles embed.FS

func query(name string) string { return sqlfile.Must(queryFiles, name) }

var (
	standbysSQL      = query("standbys")
	slotsSQL         = query("slots")
	receiverSQL      = query("receiver")
	fenceSessionsSQL = query("fence_sessions")
)
