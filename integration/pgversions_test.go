package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/pgtest/pgmajor"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/migrations/lint"
	"github.com/spiredb/spiredb/tuning"
)

// On every other PostgreSQL major (13, 14, 16, 17, 18: the npm server
// packages setup fetches; 15 is the machine's own and runs every suite) a
// real spire-server creates its schema and serves entries, and each
// command that needs no client tool works through the CLI: doctor, stats,
// indexes, views, migrate up, backfill, tune check and lint --dsn.
func TestPostgresMajors(t *testing.T) {
	t.Parallel()
	majors := pgmajor.Majors()
	require.Subset(t, majors, []int{13, 14, 16, 17, 18}, "scripts/setup.sh pgmajors fetches these")
	for _, major := range majors {
		t.Run(fmt.Sprint(major), func(t *testing.T) {
			c := pgtest.NewCluster(t, pgcluster.Options{BinDir: pgmajor.BinDir(t, major)})
			db := pgtest.NewDBOn(t, c)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			_, err := db.Pool.Exec(ctx, "CREATE EXTENSION pg_stat_statements")
			require.NoError(t, err)
			srv := startSpire(t, db, spiretest.Options{})
			require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(300, uint64(major), nil)))
			// SPIRE's cache reload runs its listing query
			_, err = srv.Show(ctx)
			require.NoError(t, err)
			run := func(want []int, args ...string) string {
				t.Helper()
				out, stderr, code := runCLI(t, nil, args...)
				require.Contains(t, want, code, "%s: exit %d\n%s%s", strings.Join(args[:2], " "), code, out, stderr)
				assert.NotContains(t, out+stderr, c.Password)
				return out
			}

			var rep doctor.Report
			require.NoError(t, json.Unmarshal([]byte(run([]int{0, 4}, "doctor", "--dsn", db.DSN, "-o", "json")), &rep))
			require.Equal(t, major, rep.Server.VersionNum/10000)
			require.True(t, rep.SPIRE.Present)
			require.EqualValues(t, 300, rep.SPIRE.Entries)
			require.True(t, rep.Statements.Preloaded)
			// before 15 every role may create in public, and another role's
			// function there can shadow pg_catalog's in SPIRE's statements
			publicCreate := slices.ContainsFunc(rep.Findings, func(f doctor.Finding) bool { return f.Check == "security.public_create" })
			require.Equal(t, major < 15, publicCreate, "PostgreSQL %d's default CREATE on public", major)
			// with a store: this database's backups only (its cluster's
			// system identifier read on every major)
			rep = doctor.Report{}
			require.NoError(t, json.Unmarshal([]byte(run([]int{1}, "doctor", "--dsn", db.DSN, "--store", "file://"+t.TempDir(), "-o", "json")), &rep))
			require.True(t, slices.ContainsFunc(rep.Findings, func(f doctor.Finding) bool {
				return f.Check == "backup.none" && strings.Contains(f.Message, "this database")
			}), "%+v", rep.Findings)

			// pg_stat_statements' columns of this major (total_exec_time,
			// blk_*_time → shared_blk_*_time in 17, stats_since)
			var top tuning.Report
			require.NoError(t, json.Unmarshal([]byte(run([]int{0}, "stats", "top", "--dsn", db.DSN, "-o", "json", "--limit", "0")), &top))
			labels := map[string]bool{}
			for _, g := range top.Groups {
				labels[g.Label] = true
				assert.GreaterOrEqual(t, g.TotalMs, 0.0)
			}
			assert.True(t, labels["entry create"] || labels["cache reload page"], "SPIRE's statements labelled: %v", labels)
			snap := filepath.Join(t.TempDir(), "snap.json")
			run([]int{0}, "stats", "snapshot", "--dsn", db.DSN, "--out", snap)

			run([]int{0}, "indexes", "apply", "--dsn", db.DSN)
			run([]int{0}, "indexes", "check", "--dsn", db.DSN)
			run([]int{0}, "views", "create", "--dsn", db.DSN)
			run([]int{0}, "views", "refresh", "--dsn", db.DSN)
			require.Contains(t, run([]int{0}, "views", "status", "--dsn", db.DSN), "300 rows")

			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "1_bf.up.sql"), []byte(
				"CREATE TABLE bf (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);\n"+
					"INSERT INTO bf (id) SELECT g FROM generate_series(1, 5000) g;\n"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "1_bf.down.sql"), []byte("DROP TABLE bf;\n"), 0o644))
			run([]int{0}, "migrate", "up", "--dsn", db.DSN)
			run([]int{0}, "migrate", "up", "--source", "file://"+dir, "--version-table", "app", "--dsn", db.DSN)
			run([]int{0}, "migrate", "backfill", "--dsn", db.DSN, "--table", "bf", "--set", "n = n + 1", "--name", "bump", "--batch-size", "1000")
			var left int
			require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM bf WHERE n <> 1").Scan(&left))
			require.Zero(t, left, "every row once")

			// the machine's pg_dump is 15: a newer server gets one line
			// naming the fix, and nothing is stored
			if major > 15 {
				store := t.TempDir()
				_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", "file://"+store)
				require.NotEqual(t, 0, code)
				assert.Contains(t, stderr, fmt.Sprintf("pg_dump 15 is older than the server (PostgreSQL %d): install postgresql-client-%d", major, major))
				assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, stderr)
				entries, err := os.ReadDir(store)
				require.NoError(t, err)
				assert.Empty(t, entries)
			}

			run([]int{0, 1}, "tune", "check", "--dsn", db.DSN, "--ram", "4GB", "--cpus", "2")

			bad := filepath.Join(t.TempDir(), "0002_ix.up.sql")
			require.NoError(t, os.WriteFile(bad, []byte("CREATE INDEX CONCURRENTLY x ON registered_entries (spiffe_id);\n"), 0o644))
			var fs []lint.Finding
			require.NoError(t, json.Unmarshal([]byte(run([]int{0, 1}, "migrate", "lint", "--dsn", db.DSN, "-o", "json", bad)), &fs))
			rules := map[string]bool{}
			for _, f := range fs {
				rules[f.Rule] = true
			}
			assert.True(t, rules["spire-duplicate-index"], "the catalog of a %d server was read: %+v", major, fs)
		})
	}
}
