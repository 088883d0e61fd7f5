// Package sqlfile reads the catalog queries packages keep in embedded
// sql/NAME.sql files, where they read (and can be run by hand) as SQL.
package sqlfile

import (
	"io/fs"
	"strings"
)

// Must returns sql/NAME.sql from fsys, trimmed. A missing file panics: the
// packages call it when they are initialised, so every test of the package
// catches a wrong name.
func Must(fsys fs.FS, name string) string {
	b, err := fs.ReadFile(fsys, "sql/"+name+".sql")
	if err != nil {
		panic("missing embedded query: " + err.Error())
	}
	return strings.TrimSpace(string(b))
}
