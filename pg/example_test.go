package pg_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
)

// A program that uses spiredb as a library brings its own pool: spiredb
// takes its sessions out of it, with spiredb's safety settings on them, and
// never returns them changed.
func ExampleWithConn() {
	ctx := context.Background()
	dsn := pgtest.ExampleDB("pg", 0) // your own DSN

	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	err = pg.WithConn(ctx, pg.Options{Pool: pool}, func(conn *pgx.Conn) error {
		var lock string
		if err := conn.QueryRow(ctx, "SHOW lock_timeout").Scan(&lock); err != nil {
			return err
		}
		fmt.Println("spiredb's session: lock_timeout", lock)
		return nil
	})
	if err != nil {
		panic(err)
	}

	// a server that cannot be reached is a *pg.ConnectError, secrets masked
	_, err = pg.Connect(ctx, pg.Options{DSN: "postgres://spire:s3cret@127.0.0.1:1/spire?connect_timeout=1"})
	var ce *pg.ConnectError
	fmt.Println(errors.As(err, &ce), strings.Contains(err.Error(), "s3cret"))
	// Output:
	// spiredb's session: lock_timeout 2s
	// true false
}
