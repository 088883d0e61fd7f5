// Package migrations will run spiredb's own and operators' migrations with
// golang-migrate (version table spiredb.schema_migrations, bounded lock wait,
// never dirty) and batched backfills. Not implemented yet: see the
// zero-downtime migrations issue.
package migrations
