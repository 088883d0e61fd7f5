// Command spiredb is the operator's toolkit for the PostgreSQL datastore of
// SPIRE: migrations, indexes, tuning, replication, backups and health.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
