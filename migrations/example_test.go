package migrations_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/migrations"
	"github.com/spiredb/spiredb/pg"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Apply spiredb's own migrations (its schema beside SPIRE's) with the
// caller's pool; an operator's directory works the same with
// Options.Source = "file:///migrations".
func ExampleOpen() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.ExampleDB("migrations", 5)) // your pool
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	r, err := migrations.Open(ctx, pg.Options{Pool: pool}, migrations.Options{})
	if err != nil {
		panic(err)
	}
	defer r.Close(ctx)
	applied, err := r.Up(ctx, 0)
	if err != nil {
		panic(err)
	}
	v, dirty, err := r.Version(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("applied", len(applied), "version", v, "dirty", dirty)
	again, err := r.Up(ctx, 0)
	if err != nil {
		panic(err)
	}
	fmt.Println("applied", len(again), "on a second run")
	// Output:
	// applied 2 version 2 dirty false
	// applied 0 on a second run
}
