package schedule_test

import (
	"context"
	"fmt"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/schedule"
)

// A program that uses spiredb as a library runs a schedule file with its
// own tasks: each a library call. Every command the file uses needs a task.
func ExampleNew() {
	cfg, err := schedule.ParseConfig("spiredb.yaml", []byte(`
store: file:///var/backups/spire
jobs:
  - name: backup
    command: backup run
    schedule: "0 */6 * * *"
  - name: refresh
    command: views refresh
    schedule: "@every 30m"
`))
	if err != nil {
		panic(err)
	}
	tasks := schedule.Registry{
		"backup run": func(ctx context.Context, run schedule.Run) error {
			store, err := backup.OpenStore(ctx, run.Store, backup.StoreOptions{})
			if err != nil {
				return err
			}
			_, err = backup.Run(ctx, backup.RunOptions{Conn: run.Conn, Store: store, Compress: -1, Logger: run.Logger})
			return err
		},
	}
	_, err = schedule.New(cfg, schedule.Options{Tasks: tasks, Conn: pg.Options{DSN: "host=spire-db dbname=spire"}})
	fmt.Println(err)
	// Output: no task runs views refresh (registered: backup run)
}
