// Package migrations runs spiredb's own migrations (embedded: the spiredb
// schema's bookkeeping tables) and operators' directories on a live
// database, on golang-migrate's source and version-table format: the lock
// wait bounded and its holder named, each migration in one transaction
// under lock_timeout with its version change (retried on lock timeouts,
// rolled back on failure: never dirty), "-- spiredb:no-transaction" files
// statement by statement. It also holds idempotent helpers for the classic
// zero-downtime steps. Subpackages: backfill (resumable batched updates)
// and lint (the migration safety linter).
package migrations
