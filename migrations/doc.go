// Package migrations will run spiredb's own and operators' migrations with
// golang-migrate (version table spiredb.schema_migrations, bounded lock wait,
// never dirty) and batched backfills: not implemented yet (the
// zero-downtime migrations issue). Its subpackage lint, the migration
// safety linter (`spiredb migrate lint`), is.
package migrations
