package integration_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// externalMain is a program in another module: it can import only
// spiredb's public packages, and calls backup, replication, migrations,
// indexes and tuning with its own pgx pool, and matches spiredb's errors
// with errors.As.
const externalMain = `package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/migrations"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
	"github.com/spiredb/spiredb/tuning"
)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("APP_DSN"))
	must(err)
	defer pool.Close()
	conn := pg.Options{Pool: pool}

	store, err := backup.NewFileStore(os.Getenv("APP_STORE"))
	must(err)
	m, err := backup.Run(ctx, backup.RunOptions{Conn: conn, Store: store, Compress: -1, Label: "external"})
	must(err)
	fmt.Println("backup", m.RowCounts["registered_entries"])

	st, err := replication.GetStatus(ctx, conn, replication.Limit{})
	must(err)
	fmt.Println("replication", st.Role)

	r, err := migrations.Open(ctx, conn, migrations.Options{})
	must(err)
	applied, err := r.Up(ctx, 0)
	must(err)
	must(r.Close(ctx))
	fmt.Println("migrations", len(applied))

	must(pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		plan, err := indexes.MakePlan(ctx, c.Conn())
		if err != nil {
			return err
		}
		fmt.Println("indexes", len(plan.ToDo()) > 0)
		rec, err := tuning.Recommend(tuning.Inputs{RAM: 8 << 30, CPUs: 2})
		if err != nil {
			return err
		}
		diffs, err := tuning.CheckSettings(ctx, c.Conn(), rec)
		if err != nil {
			return err
		}
		fmt.Println("tuning", len(diffs) > 0)
		return nil
	}))

	_, err = replication.GetStatus(ctx, pg.Options{DSN: "postgres://u:pw-never-shown@127.0.0.1:1/x?connect_timeout=2"}, replication.Limit{})
	var ce *pg.ConnectError
	fmt.Println("connect error matched", errors.As(err, &ce))
}
`

// TestExternalModule builds a program in a module of its own (a replace
// directive points at this checkout) and runs it against a SPIRE
// datastore: spiredb is usable as a library with the caller's own pool,
// and its errors can be matched from outside.
func TestExternalModule(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 25})

	root, err := filepath.Abs("..")
	require.NoError(t, err)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	require.NoError(t, err)
	// the same requirements as spiredb's, so that the build is the same
	var reqs []string
	inBlock := false
	for _, line := range strings.Split(string(gomod), "\n") {
		switch {
		case strings.HasPrefix(line, "require ("):
			inBlock = true
		case inBlock && strings.TrimSpace(line) == ")":
			inBlock = false
		case inBlock:
			reqs = append(reqs, strings.TrimSpace(line))
		}
	}
	require.NotEmpty(t, reqs)
	dir := t.TempDir()
	mod := "module example.com/spiredbuser\n\ngo 1.26.0\n\nrequire (\n\tgithub.com/spiredb/spiredb v0.0.0-00010101000000-000000000000\n\t" +
		strings.Join(reqs, "\n\t") + "\n)\n\nreplace github.com/spiredb/spiredb => " + root + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.sum"), gosum, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(externalMain), 0o644))

	cmd := exec.CommandContext(ctx, "go", "run", "-mod=mod", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "APP_DSN="+db.DSN, "APP_STORE="+t.TempDir(), "GOWORK=off", "GOFLAGS=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stdout: %s\nstderr: %s", stdout.String(), stderr.String())
	require.Equal(t, `backup 25
replication primary
migrations 2
indexes true
tuning true
connect error matched true
`, stdout.String())
	require.NotContains(t, stdout.String()+stderr.String(), "pw-never-shown")
}
