// Package integration holds spiredb's end-to-end suites: the CLI and the
// library against a real PostgreSQL, a real S3 server (versitygw) and real
// spire-servers, started by internal/harness.
package integration
