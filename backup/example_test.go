package backup_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

// Back up a SPIRE datastore with the caller's own pool into a directory
// store (s3:// works the same through backup.OpenStore), then list it.
func ExampleRun() {
	ctx := context.Background()
	dsn := pgtest.ExampleDB("backup", 20) // your SPIRE datastore

	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	dir, err := os.MkdirTemp("", "spiredb-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	store, err := backup.NewFileStore(dir)
	if err != nil {
		panic(err)
	}

	m, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{Pool: pool}, Store: store, Compress: -1})
	if err != nil {
		panic(err)
	}
	fmt.Println("entries:", m.RowCounts["registered_entries"], "SPIRE schema recorded:", m.SPIRE != nil)

	list, err := backup.List(ctx, store)
	if err != nil {
		panic(err)
	}
	fmt.Println("backups:", len(list), "newest is ours:", list[0].ID == m.ID)
	// Output:
	// entries: 20 SPIRE schema recorded: true
	// backups: 1 newest is ours: true
}
