// Package tuning will analyse pg_stat_statements grouped by fingerprint and
// labelled with SPIRE's operations, and recommend and check settings. Not
// implemented yet: see the query analysis and tuning issue.
package tuning
