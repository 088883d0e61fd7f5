package replication_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// Read a server's replication status with the caller's own pgx config:
// its role, its standbys (each judged against the lag limit) and slots.
func ExampleGetStatus() {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(pgtest.ExampleDB("replication", 0)) // your config
	if err != nil {
		panic(err)
	}
	limit, err := replication.ParseLimit("16MB")
	if err != nil {
		panic(err)
	}
	s, err := replication.GetStatus(ctx, pg.Options{Config: cfg}, limit)
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Role, "with", len(s.Standbys), "standbys; lag limit", s.MaxLag)
	// Output: primary with 0 standbys; lag limit 16.0 MiB
}
