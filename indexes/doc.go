// Package indexes will hold SPIRE's benchmark-proven index set as data and
// apply it with CREATE INDEX CONCURRENTLY, check index health and advise with
// hypopg. Not implemented yet: see the indexes and materialized views issue.
package indexes
