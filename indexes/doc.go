// Package indexes holds spiredb's SPIRE index set as data (Set: name,
// table, definition, the SPIRE operations it serves, the SPIRE schema
// versions it was verified on, and the benchmark's figures) and works it
// against a live database: MakePlan (missing, present, different, INVALID),
// Apply (CREATE INDEX CONCURRENTLY one at a time, lock timeouts retried,
// INVALID leftovers dropped and rebuilt), Check (invalid, duplicate, unused
// on the primary and the standbys, bloated; never SPIRE's own, unique or
// constraint indexes) and Advise (pg_stat_statements' top statements tried
// against hypothetical indexes with hypopg). Package views manages the
// materialized views.
package indexes
