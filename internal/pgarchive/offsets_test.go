package pgarchive_test

import (
	"bytes"
	"context"

	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/pgarchive"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/spire"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// dumps returns the same database dumped by pg_dump to a file (pg_dump
// seeks back and writes the data offsets) and to a pipe (it cannot).
func dumps(t *testing.T, db *pgtest.DB, extra ...string) (file, piped string) {
	t.Helper()
	dir := t.TempDir()
	pgDump := filepath.Join(db.Cluster.BinDir, "pg_dump")
	file = filepath.Join(dir, "file.dump")
	out, err := exec.Command(pgDump, append([]string{"-Fc", "-d", db.DSN, "-f", file}, extra...)...).CombinedOutput()
	require.NoError(t, err, string(out))
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(pgDump, append([]string{"-Fc", "-d", db.DSN}, extra...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), stderr.String())
	piped = filepath.Join(dir, "piped.dump")
	require.NoError(t, os.WriteFile(piped, stdout.Bytes(), 0o600))
	return file, piped
}

// loadData fills db with a SPIRE fixture and a large object (a BLOBS data
// block).
func loadData(t *testing.T, db *pgtest.DB) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 3000})
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT pg_catalog.lo_from_bytea(0, pg_catalog.convert_to(repeat('large object ', 10000), 'UTF8'))")
	require.NoError(t, err)
}

func TestSetDataOffsetsWritesWhatPgDumpWouldHave(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadData(t, db)
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"uncompressed", []string{"-Z0"}},
		{"gzip", nil}, // pg_dump's default, every backup before zstd
	} {
		t.Run(tc.name, func(t *testing.T) {
			file, piped := dumps(t, db, tc.extra...)
			want, err := os.ReadFile(file)
			require.NoError(t, err)
			before, err := os.ReadFile(piped)
			require.NoError(t, err)
			require.Equal(t, len(want), len(before))
			require.NotEqual(t, differences(want, before), 0)

			f, err := os.OpenFile(piped, os.O_RDWR, 0)
			require.NoError(t, err)
			res, err := pgarchive.SetDataOffsets(f)
			require.NoError(t, f.Close())
			require.NoError(t, err)
			require.Equal(t, "1.14", res.Version) // pg_dump 15
			require.Greater(t, res.Blocks, 10)
			require.Equal(t, res.Blocks, res.Set)

			// the two dumps differ in the creation time of their header
			// (bytes 13 to 40) and, before, in every data entry's offset;
			// now only in the time
			got, err := os.ReadFile(piped)
			require.NoError(t, err)
			require.Equal(t, want[40:], got[40:])

			// the same from a Scanner that saw the bytes as they were
			// written to a file
			copied := filepath.Join(t.TempDir(), "copied.dump")
			out, err := os.Create(copied)
			require.NoError(t, err)
			sc := pgarchive.NewScanner()
			for off := 0; off < len(before); off += 32 << 10 {
				chunk := before[off:min(len(before), off+32<<10)]
				_, err := out.Write(chunk)
				require.NoError(t, err)
				_, _ = sc.Write(chunk)
			}
			require.NoError(t, sc.Close())
			sres, err := sc.SetDataOffsets(out)
			require.NoError(t, err)
			require.NoError(t, out.Close())
			require.Equal(t, res, sres)
			got, err = os.ReadFile(copied)
			require.NoError(t, err)
			require.Equal(t, want[40:], got[40:])

			// done twice, nothing changes
			f, err = os.OpenFile(piped, os.O_RDWR, 0)
			require.NoError(t, err)
			res, err = pgarchive.SetDataOffsets(f)
			require.NoError(t, f.Close())
			require.NoError(t, err)
			require.Zero(t, res.Set)
		})
	}
}

func TestSetDataOffsetsParallelRestore(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadData(t, db)
	_, piped := dumps(t, db, "-Z0")
	f, err := os.OpenFile(piped, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = pgarchive.SetDataOffsets(f)
	require.NoError(t, f.Close())
	require.NoError(t, err)

	target := pgtest.NewDB(t)
	out, err := exec.Command(filepath.Join(db.Cluster.BinDir, "pg_restore"), "--jobs=2", "--exit-on-error", "--no-owner",
		"-d", target.DSN, piped).CombinedOutput()
	require.NoError(t, err, string(out))
	ctx := context.Background()
	var entries, selectors, lo int64
	require.NoError(t, target.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM registered_entries), (SELECT count(*) FROM selectors),
		(SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)`).Scan(&entries, &selectors, &lo))
	require.EqualValues(t, 3000, entries)
	require.Positive(t, selectors)
	require.EqualValues(t, 1, lo)
}

// TestSetDataOffsetsLeavesDamagedArchivesAlone: an archive that does not
// parse to its end is not written to.
func TestSetDataOffsetsLeavesDamagedArchivesAlone(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadData(t, db)
	_, piped := dumps(t, db, "-Z0")
	whole, err := os.ReadFile(piped)
	require.NoError(t, err)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		data []byte
		err  string
	}{
		{"truncated", whole[:len(whole)-100], "unexpected EOF"},
		{"trailing bytes", append(bytes.Clone(whole), 9, 9, 9, 9, 9, 9), "has no data in the table of contents"},
		{"plain SQL", []byte("--\n-- PostgreSQL database dump\n--\n"), "not a pg_dump custom-format archive"},
		{"empty", nil, "not a pg_dump custom-format archive"},
	} {
		path := filepath.Join(dir, tc.name)
		require.NoError(t, os.WriteFile(path, tc.data, 0o600))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		_, err = pgarchive.SetDataOffsets(f)
		require.NoError(t, f.Close())
		require.ErrorContains(t, err, tc.err, tc.name)
		after, rerr := os.ReadFile(path)
		require.NoError(t, rerr)
		require.True(t, bytes.Equal(tc.data, after), "%s: written to", tc.name)
	}
	require.ErrorIs(t, func() error {
		f, err := os.OpenFile(filepath.Join(dir, "empty"), os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		_, err = pgarchive.SetDataOffsets(f)
		return err
	}(), pgarchive.ErrUnsupported)
}

func differences(a, b []byte) int {
	n := 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestScannerCountsWhatTheTablesHold(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	loadData(t, db)
	ctx := context.Background()
	// values with newlines, tabs and backslashes, escaped by COPY, and an
	// empty table
	_, err := db.Pool.Exec(ctx, `CREATE TABLE odd (v text); CREATE TABLE empty (v int);
		INSERT INTO odd SELECT 'line one' || E'\n' || 'line two' || E'\t\\' || g FROM generate_series(1, 1234) g`)
	require.NoError(t, err)
	_, piped := dumps(t, db, "-Z0")
	data, err := os.ReadFile(piped)
	require.NoError(t, err)

	c := pgarchive.NewScanner()
	// written in uneven pieces, as a pipe delivers it
	for off, step := 0, 1; off < len(data); off, step = off+step, step*3%65521+1 {
		n, err := c.Write(data[off:min(len(data), off+step)])
		require.NoError(t, err)
		require.Equal(t, min(len(data), off+step)-off, n)
	}
	rows, err := c.Rows()
	require.NoError(t, err)

	want := map[pgarchive.Table]int64{}
	res, err := db.Pool.Query(ctx, `SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname = 'public'`)
	require.NoError(t, err)
	tables, err := pgx.CollectRows(res, pgx.RowToStructByPos[pgarchive.Table])
	require.NoError(t, err)
	for _, tb := range tables {
		var n int64
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tb.Schema, tb.Name}.Sanitize()).Scan(&n))
		want[tb] = n
	}
	require.Equal(t, want, rows)
	require.EqualValues(t, 3000, rows[pgarchive.Table{Schema: "public", Name: "registered_entries"}])
	require.EqualValues(t, 1234, rows[pgarchive.Table{Schema: "public", Name: "odd"}])
	require.Contains(t, rows, pgarchive.Table{Schema: "public", Name: "empty"})

	// pg_dump's own compression: not counted
	_, gz := dumps(t, db)
	data, err = os.ReadFile(gz)
	require.NoError(t, err)
	c = pgarchive.NewScanner()
	_, _ = c.Write(data)
	_, err = c.Rows()
	require.ErrorIs(t, err, pgarchive.ErrCompressed)

	// cut short: an error, and Write did not block
	c = pgarchive.NewScanner()
	_, _ = c.Write(data[:len(data)/2])
	_, err = c.Rows()
	require.Error(t, err)
}
