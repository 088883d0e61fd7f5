// Package sql embeds the SQL that operators may also read and run by hand:
// the definitions of spiredb's materialized views over SPIRE's tables.
// Importers alias it, e.g. spiresql.
package sql

import "embed"

// Views holds views/NAME.sql: the SELECT of each materialized view, with
// {{schema}} standing for SPIRE's schema.
//
//go:embed views/*.sql
var Views embed.FS
