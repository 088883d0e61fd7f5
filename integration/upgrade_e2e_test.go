package integration_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

func findingChecks(fs []doctor.Finding, sev doctor.Severity) []string {
	var out []string
	for _, f := range fs {
		if f.Severity == sev {
			out = append(out, f.Check)
		}
	}
	return out
}

// spire upgrade-check on a datastore a real spire-server 1.13.3 created:
// SPIRE's one-minor rule, spiredb's views on SPIRE's tables, the verified
// backup, and a rehearsal that starts the real spire-server binary on a
// scratch restore (its start-up migration, timed, with the locks it took),
// leaving no scratch database behind.
func TestSpireUpgradeCheckWithSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	db := pgtest.NewDB(t)
	srv := startSpire(t, db, spiretest.Options{})
	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(300, 21, nil)))
	srv.Stop()
	store := "file://" + filepath.Join(t.TempDir(), "store")

	check := func(args ...string) (*doctor.UpgradeReport, string, int) {
		t.Helper()
		out, errOut, code := runCLI(t, nil, append([]string{"spire", "upgrade-check", "--dsn", db.DSN, "-o", "json"}, args...)...)
		require.NotContains(t, out+errOut, db.Cluster.Password)
		var r doctor.UpgradeReport
		if code == 0 || code == 1 || code == 4 {
			require.NoError(t, json.Unmarshal([]byte(out), &r), out+errOut)
		}
		return &r, errOut, code
	}

	// one minor up, no store: a warning to take a backup first
	r, _, code := check("--to", "1.14.0")
	require.Equal(t, 4, code, "%+v", r.Findings)
	require.Equal(t, "1.13.3", r.Schema.CodeVersion)
	require.True(t, r.Step.OK)
	require.Equal(t, []string{"upgrade.backup"}, findingChecks(r.Findings, doctor.Warning))

	// two minors up: the path, release by release
	r, _, code = check("--to", "v1.15.2")
	require.Equal(t, 1, code)
	require.Equal(t, []string{"upgrade.version"}, findingChecks(r.Findings, doctor.Error))
	require.Equal(t, []string{"1.14.x", "1.15.x"}, r.Step.Path)
	_, errOut, code := check("--to", "one-point-fourteen")
	require.Equal(t, 2, code, errOut)

	// spiredb's materialized views read SPIRE's tables
	_, errOut, code = runCLI(t, nil, "views", "create", "--dsn", db.DSN)
	require.Equal(t, 0, code, errOut)
	r, _, _ = check("--to", "1.14.0")
	require.NotEmpty(t, r.Dependents)
	require.Contains(t, findingChecks(r.Findings, doctor.Warning), "upgrade.views")

	// with a store: no verified backup is an error; a verified one is not
	r, _, code = check("--to", "1.14.0", "--store", store)
	require.Equal(t, 1, code)
	require.Contains(t, findingChecks(r.Findings, doctor.Error), "upgrade.backup")
	_, errOut, code = runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 0, code, errOut)
	_, errOut, code = runCLI(t, nil, "backup", "verify", "--dsn", db.DSN, "--store", store, "--latest")
	require.Equal(t, 0, code, errOut)
	r, _, _ = check("--to", "1.14.0", "--store", store)
	require.NotContains(t, findingChecks(r.Findings, doctor.Error), "upgrade.backup")
	require.NotNil(t, r.Backup)

	// a rehearsal with the real binary: its release must be --to's
	bin, err := harness.Binary("spire-server")
	require.NoError(t, err)
	_, errOut, code = check("--to", "1.14.0", "--store", store, "--spire-server", bin)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "is release 1.13.3, not --to 1.14.0")
	r, errOut, code = check("--to", strings.TrimPrefix(spiretest.Version, "v"), "--store", store, "--spire-server", bin)
	require.Contains(t, []int{0, 4}, code, errOut)
	reh := r.Rehearsal
	require.NotNil(t, reh, "%+v", r.Findings)
	require.Equal(t, "1.13.3", reh.ServerVersion)
	require.Equal(t, 23, reh.Before.Version)
	require.Equal(t, 23, reh.After.Version)
	require.Positive(t, reh.Duration)
	require.NotEmpty(t, reh.Locks, "the server's start-up reads SPIRE's tables")
	require.Contains(t, findingChecks(r.Findings, doctor.Info), "upgrade.rehearsal")
	t.Logf("rehearsal: %s in %s, locks %v", reh.ServerVersion, reh.Duration, reh.Locks)
	var scratch int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname LIKE 'spiredb_rehearse_%'").Scan(&scratch))
	require.Zero(t, scratch, "the scratch database was dropped")

	// a datastore this release cannot migrate (schema 22 needs SPIRE 1.7 or
	// earlier first): the rehearsal fails as the upgrade would, and says so
	_, err = db.Pool.Exec(ctx, "UPDATE migrations SET version = 22")
	require.NoError(t, err)
	out, errOut, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store, "-o", "json")
	require.Equal(t, 0, code, errOut)
	var m struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &m))
	r, errOut, code = check("--to", "1.13.3", "--store", store, "--spire-server", bin, "--backup-id", m.ID)
	require.Equal(t, 1, code, errOut)
	require.Equal(t, []string{"upgrade.rehearsal"}, findingChecks(r.Findings, doctor.Error), "%+v", r.Findings)
	for _, f := range r.Findings {
		if f.Check == "upgrade.rehearsal" {
			require.Contains(t, f.Message, "requires a previous SPIRE release")
		}
	}
	var version int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT version FROM migrations").Scan(&version))
	require.Equal(t, 22, version, "the live datastore was only read")
}
