package pgprog_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgprog"
)

// fake writes a program that prints a PostgreSQL version.
func fake(t *testing.T, dir, name string, major int) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	script := fmt.Sprintf("#!/bin/sh\necho '%s (PostgreSQL) %d.2 (Debian)'\n", name, major)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755))
}

func TestFindPicksTheMajorItNeeds(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	v15, v17 := filepath.Join(root, "15"), filepath.Join(root, "17")
	fake(t, v15, "pg_rewind", 15)
	fake(t, v17, "pg_rewind", 17)
	fake(t, v17, "pg_basebackup", 17)
	t.Setenv("PATH", v17+string(os.PathListSeparator)+v15+string(os.PathListSeparator)+os.Getenv("PATH"))

	// the data directory's major exactly: PATH has 17 first, 15 later
	p, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_rewind", BinDir: v15, Major: 15, Match: pgprog.Exact})
	require.NoError(t, err)
	require.Equal(t, 15, p.Major)
	_, err = pgprog.Find(ctx, pgprog.Request{Name: "pg_rewind", BinDir: v17, Major: 15, Match: pgprog.Exact})
	require.ErrorContains(t, err, "no pg_rewind of PostgreSQL 15 in "+v17)
	require.ErrorContains(t, err, "(17)", "the versions found are named")

	// at least the server's major: 17 serves a 16 server, nothing serves 18
	p, err = pgprog.Find(ctx, pgprog.Request{Name: "pg_basebackup", BinDir: v17, Major: 16, Match: pgprog.AtLeast})
	require.NoError(t, err)
	require.Equal(t, 17, p.Major)
	_, err = pgprog.Find(ctx, pgprog.Request{Name: "pg_basebackup", BinDir: v17, Major: 18, Match: pgprog.AtLeast})
	require.ErrorContains(t, err, "of PostgreSQL 18 or newer")

	// a directory without the program, a program that is not PostgreSQL's
	_, err = pgprog.Find(ctx, pgprog.Request{Name: "initdb", BinDir: v17})
	require.ErrorContains(t, err, "no initdb in "+v17)
	require.NoError(t, os.WriteFile(filepath.Join(v15, "pg_ctl"), []byte("#!/bin/sh\necho hello\n"), 0o755))
	_, err = pgprog.Find(ctx, pgprog.Request{Name: "pg_ctl", BinDir: v15, Major: 15, Match: pgprog.Exact})
	require.Error(t, err)
}

func TestDataDirMajor(t *testing.T) {
	dir := t.TempDir()
	_, err := pgprog.DataDirMajor(dir)
	require.ErrorContains(t, err, "not a PostgreSQL data directory")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("16\n"), 0o600))
	v, err := pgprog.DataDirMajor(dir)
	require.NoError(t, err)
	require.Equal(t, 16, v)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("x\n"), 0o600))
	_, err = pgprog.DataDirMajor(dir)
	require.ErrorContains(t, err, "not a version")
}
