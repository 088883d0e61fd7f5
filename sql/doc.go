// Package sql will embed the SQL that operators may also read and run by
// hand (catalog queries, SPIRE index and view definitions). Importers alias
// it, e.g. spiresql.
package sql
