// Package backup takes, lists, verifies, restores and prunes logical
// backups of a SPIRE datastore.
//
// A backup is pg_dump's custom format streamed straight into a Store (S3 or
// a local directory) with no temporary file: memory is bounded by the
// store's part size × concurrency, never by the database size. The sha256 is
// computed on the way. A manifest (manifest.json) is written only after the
// data object is complete, and a backup without a manifest does not exist
// for List, Verify, Restore or Prune. Row counts of SPIRE's tables in the
// manifest are taken in the very snapshot pg_dump dumps (pg_export_snapshot +
// pg_dump --snapshot).
//
// Layout in a store: ID/dump, ID/manifest.json, ID/verify.json.
package backup
