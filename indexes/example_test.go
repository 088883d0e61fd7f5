package indexes_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Compare spiredb's SPIRE index set with a live datastore, on a session of
// the caller's pool: on a datastore as SPIRE created it, every index of the
// set is still to build and all of SPIRE's own are there.
func ExampleMakePlan() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.ExampleDB("indexes", 10)) // your pool
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	var plan *indexes.Plan
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		plan, err = indexes.MakePlan(ctx, c.Conn())
		return err
	})
	if err != nil {
		panic(err)
	}
	present := 0
	for _, s := range plan.SpireIndexes {
		if s.Present && s.Valid {
			present++
		}
	}
	fmt.Println("to build:", len(plan.ToDo()) == len(indexes.Set()), "SPIRE's own present:", present == len(plan.SpireIndexes))
	// Output: to build: true SPIRE's own present: true
}
