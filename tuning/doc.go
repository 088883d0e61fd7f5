// Package tuning recommends PostgreSQL settings for a SPIRE datastore and
// checks a live server against them.
//
// The workload it sizes for is SPIRE's, measured (shared/SPIRE.md): every
// spire-server re-reads the whole entry set every 5 seconds in pages of
// 10,000 rows (a sort that spilled ~3.4 MB per page at 20,000 entries), many
// tiny write transactions, events tables that churn and are pruned with
// DELETE, and N servers × max_open_conns (default 100) connections unless a
// pooler sits in front.
//
// pg_stat_statements analysis (stats top/snapshot/diff) is to come in this
// package: see the tuning issue.
package tuning
