// Package replication bootstraps PostgreSQL streaming standbys for a SPIRE
// datastore, reports their health, promotes one with gates, and fences an
// old primary.
//
// It uses what PostgreSQL 12 and later provide: a physical replication slot
// and `pg_basebackup -R -X stream -S slot` (standby.signal and
// primary_conninfo written by pg_basebackup itself: no recovery.conf, no
// trigger file), pg_stat_replication and pg_replication_slots.wal_status for
// health, and pg_promote(wait) for promotion.
//
// A standby can serve SPIRE's stale-tolerant reads through the datastore's
// ro_connection_string; Status says for each standby whether it is fit for
// that and why not.
package replication
