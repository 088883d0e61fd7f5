package integration_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// A real spire-server creates its schema and 2,000 entries through its API;
// spiredb doctor then reports what SPIRE wrote.
func TestDoctorOnRealSpireServer(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	srv := startSpire(t, db, spiretest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(2000, 42, nil)))
	n, err := srv.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, 2000, n)

	stdout, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Contains(t, []int{0, 4}, code, "doctor exit %d: %s", code, stderr)
	var rep struct {
		Server struct {
			Role       string `json:"role"`
			VersionNum int    `json:"version_num"`
		} `json:"server"`
		Statements struct {
			Preloaded bool `json:"preloaded"`
		} `json:"pg_stat_statements"`
		SPIRE struct {
			Present     bool   `json:"present"`
			Version     int    `json:"version"`
			CodeVersion string `json:"code_version"`
			Entries     int64  `json:"registration_entries"`
			Bundles     int64  `json:"bundles"`
		} `json:"spire"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	require.True(t, rep.SPIRE.Present)
	require.Equal(t, 23, rep.SPIRE.Version)
	require.Equal(t, "1.13.3", rep.SPIRE.CodeVersion)
	require.EqualValues(t, 2000, rep.SPIRE.Entries)
	require.EqualValues(t, 1, rep.SPIRE.Bundles, "the server's own trust bundle")
	require.Equal(t, "primary", rep.Server.Role)
	require.True(t, rep.Statements.Preloaded)
	require.NotContains(t, stdout+stderr, db.Cluster.Password, "doctor printed the DSN password")
}

// The COPY loader writes data a real spire-server serves exactly: the count
// matches and a spot check of entries matches what was generated.
func TestFixtureIsServedBySpire(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	const n = 3000
	spec := spirefixture.Spec{Entries: n, Seed: 7}
	sum := loadFixture(t, db, spec)
	require.EqualValues(t, n, sum.Entries)

	srv := startSpire(t, db, spiretest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	count, err := srv.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, n, count)

	want := spirefixture.GenerateEntries(n, spec.Seed, spirefixture.FederatedTrustDomains(2))
	for _, i := range []int{0, 1, 7, 40, 1234, n - 1} {
		e := want[i]
		out, err := srv.Show(ctx, "-spiffeID", e.SpiffeID)
		require.NoError(t, err)
		var got []map[string]any
		require.NoError(t, json.Unmarshal(out, &got))
		require.Len(t, got, 1, "entry %d", i)
		g := got[0]
		require.Equal(t, e.ParentID, spiffeIDString(g["parent_id"]), "entry %d parent", i)
		require.EqualValues(t, e.X509SVIDTTL, g["x509_svid_ttl"])
		require.EqualValues(t, e.JWTSVIDTTL, g["jwt_svid_ttl"])
		require.Equal(t, e.Hint, str(g["hint"]))
		require.EqualValues(t, e.EntryExpiry, num(g["expires_at"]), "entry %d expiry", i)
		require.ElementsMatch(t, selectorStrings(e.Selectors), gotSelectors(g["selectors"]), "entry %d selectors", i)
		require.ElementsMatch(t, e.DNSNames, strs(g["dns_names"]), "entry %d dns", i)
		var fed []string
		for _, td := range e.FederatesWith {
			fed = append(fed, strings.TrimPrefix(td, "spiffe://"))
		}
		require.ElementsMatch(t, fed, strs(g["federates_with"]), "entry %d federates_with", i)
	}
}

func spiffeIDString(v any) string {
	m, _ := v.(map[string]any)
	path := str(m["path"])
	return "spiffe://" + str(m["trust_domain"]) + path
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func num(v any) int64 {
	switch x := v.(type) {
	case float64:
		return int64(x)
	case string:
		var n int64
		for _, c := range x {
			n = n*10 + int64(c-'0')
		}
		return n
	}
	return 0
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, x := range l {
		out = append(out, str(x))
	}
	return out
}

func selectorStrings(sels []spirefixture.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.Type + ":" + s.Value
	}
	return out
}

func gotSelectors(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, x := range l {
		m, _ := x.(map[string]any)
		out = append(out, str(m["type"])+":"+str(m["value"]))
	}
	return out
}

// doctor over every module: healthy (exit 0), then with a lagging standby,
// an old backup and an INVALID index (exit 1, each finding with its fix).
func TestDoctorAllModules(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	primary, dsn, conn := primaryWithFixture(t, 2000)
	_, err := conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements")
	require.NoError(t, err)
	store := "file://" + t.TempDir()
	for _, args := range [][]string{
		{"indexes", "apply", "--dsn", dsn},
		{"backup", "run", "--dsn", dsn, "--store", store},
		{"backup", "verify", "--dsn", dsn, "--store", store, "--latest", "--level", "toc"},
	} {
		_, stderr, code := runCLI(t, nil, args...)
		require.Equal(t, 0, code, "%v: %s", args, stderr)
	}
	standby := startStandby(t, primary)

	report := func(extra ...string) (doctor.Report, int) {
		t.Helper()
		out, stderr, code := runCLI(t, nil, append([]string{"doctor", "--dsn", dsn, "--store", store, "--replica-dsn", standby.DSN("spire"), "-o", "json"}, extra...)...)
		require.Contains(t, []int{0, 1, 4}, code, stderr)
		var r doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		require.NotContains(t, out+stderr, primary.Password)
		return r, code
	}
	waitTrue(t, dsn, "SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'")
	// replication without a cap on slots' WAL, standbys without feedback
	r, code := report()
	assert.Equal(t, 4, code, "warnings: %+v", r.Findings)
	flagged := map[string]bool{}
	for _, f := range r.Findings {
		flagged[f.Check] = true
	}
	assert.True(t, flagged["replication.slot_cap"], "%+v", r.Findings)
	assert.True(t, flagged["replication.feedback"], "%+v", r.Findings)
	assert.False(t, flagged["replication.rewind"], "the harness runs wal_log_hints = on")
	require.NoError(t, execOn(dsn, "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'"))
	require.NoError(t, execOn(dsn, "SELECT pg_reload_conf()"))
	require.NoError(t, execOn(standby.DSN("spire"), "ALTER SYSTEM SET hot_standby_feedback = on"))
	require.NoError(t, execOn(standby.DSN("spire"), "SELECT pg_reload_conf()"))
	waitTrue(t, standby.DSN("spire"), "SELECT current_setting('hot_standby_feedback') = 'on'")
	waitTrue(t, dsn, "SELECT current_setting('max_slot_wal_keep_size') = '1GB'")

	r, code = report()
	assert.Equal(t, 0, code, "healthy: %+v", r.Findings)
	require.NotNil(t, r.Replication)
	assert.Equal(t, 1, r.Replication.Ready)
	require.NotNil(t, r.Backups)
	assert.Equal(t, 1, r.Backups.Count)
	assert.NotNil(t, r.Backups.NewestVerified)
	require.NotNil(t, r.Indexes)
	assert.Zero(t, r.Indexes.SetMissing)

	// the standby stops replaying while the primary writes 40 MB of WAL
	sconn, err := pgx.Connect(ctx, standby.DSN("spire"))
	require.NoError(t, err)
	defer sconn.Close(ctx)
	_, err = sconn.Exec(ctx, "SELECT pg_wal_replay_pause()")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE TABLE churn AS SELECT g, md5(g::text) AS v FROM generate_series(1, 400000) g")
	require.NoError(t, err)
	// a failed unique concurrent build leaves an INVALID index
	_, err = conn.Exec(ctx, "CREATE UNIQUE INDEX CONCURRENTLY broken ON registered_entries (parent_id)")
	require.Error(t, err)
	time.Sleep(1100 * time.Millisecond)
	// a copied backup in the store: reported, not counted, left alone
	dir := strings.TrimPrefix(store, "file://")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.NoError(t, exec.Command("cp", "-a", filepath.Join(dir, ents[0].Name()), filepath.Join(dir, "pinned-before-upgrade")).Run())

	r, code = report("--max-backup-age", "1s", "--ram", "4GB", "--cpus", "2")
	assert.Equal(t, 1, code)
	checks := map[string]doctor.Finding{}
	for _, f := range r.Findings {
		checks[f.Check] = f
	}
	assert.Equal(t, doctor.Warning, checks["replication.standby"].Severity, "%+v", r.Findings)
	assert.Equal(t, "spiredb replica status", checks["replication.standby"].Fix)
	assert.Equal(t, doctor.Error, checks["backup.age"].Severity)
	assert.Equal(t, doctor.Warning, checks["backup.store"].Severity)
	assert.Contains(t, checks["backup.store"].Message, "pinned-before-upgrade/manifest.json")
	assert.Equal(t, 1, r.Backups.Count, "a copy is not a backup")
	assert.Contains(t, checks["backup.age"].Fix, "spiredb backup run --store "+store)
	assert.Equal(t, doctor.Error, checks["indexes.invalid"].Severity)
	assert.Contains(t, checks["indexes.invalid"].Fix, `DROP INDEX CONCURRENTLY "public"."broken"`)
	assert.Equal(t, doctor.Error, r.Worst)
	assert.True(t, r.SettingsChecked)
	assert.Equal(t, doctor.Warning, checks["settings.shared_buffers"].Severity, "the harness runs 128MB; 4GB of RAM wants 1GB")
	assert.Contains(t, checks["settings.shared_buffers"].Fix, "ALTER SYSTEM SET shared_buffers")
	_, err = sconn.Exec(ctx, "SELECT pg_wal_replay_resume()")
	require.NoError(t, err)
}

func execOn(dsn, sql string) error {
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql)
	return err
}

// TestDoctorCountsOnlyThisDatabasesBackups: a store shared with another
// database (another deployment given the same prefix). That database's
// fresh backups say nothing about this one's: doctor reports no backup of
// this database, and names the store's other source.
func TestDoctorCountsOnlyThisDatabasesBackups(t *testing.T) {
	t.Parallel()
	this, other, store := sharedStore(t)

	report := func() doctor.Report {
		t.Helper()
		out, stderr, code := runCLI(t, nil, "doctor", "--dsn", this.DSN, "--store", store, "-o", "json")
		require.Contains(t, []int{0, 1, 4}, code, stderr)
		var r doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		return r
	}
	checks := func(r doctor.Report) map[string]doctor.Finding {
		m := map[string]doctor.Finding{}
		for _, f := range r.Findings {
			m[f.Check] = f
		}
		return m
	}
	r := report()
	c := checks(r)
	require.Contains(t, c, "backup.none", "another database's backup counted as this one's: %+v", r.Findings)
	require.Equal(t, doctor.Error, c["backup.none"].Severity)
	require.Contains(t, c, "backup.shared", "%+v", r.Findings)
	require.Contains(t, c["backup.shared"].Message, "database "+other.Name)
	require.Zero(t, r.Backups.Count)

	// nor is the other's verified backup this one's way back from an upgrade
	_, stderr, code := runCLI(t, nil, "backup", "verify", "--dsn", other.DSN, "--store", store, "--latest", "--level", "toc")
	require.Equal(t, 0, code, stderr)
	out, stderr, code := runCLI(t, nil, "spire", "upgrade-check", "--dsn", this.DSN, "--store", store, "--to", "1.14.0", "-o", "json")
	require.Equal(t, 1, code, out+stderr)
	var u doctor.UpgradeReport
	require.NoError(t, json.Unmarshal([]byte(out), &u), out)
	require.Equal(t, []string{"upgrade.backup"}, findingChecks(u.Findings, doctor.Error))

	_, stderr, code = runCLI(t, nil, "backup", "run", "--dsn", this.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	r = report()
	c = checks(r)
	require.NotContains(t, c, "backup.none")
	require.Contains(t, c, "backup.shared")
	require.Equal(t, 1, r.Backups.Count)
}

// sharedStore is a SPIRE database with no backup yet (this), another
// (other), and a file store holding a backup of the other only: one store
// two deployments were given by mistake.
func sharedStore(t *testing.T) (this, other *pgtest.DB, store string) {
	t.Helper()
	this, other = pgtest.NewDB(t), pgtest.NewDB(t)
	loadFixture(t, this, spirefixture.Spec{Entries: 30})
	loadFixture(t, other, spirefixture.Spec{Entries: 30})
	store = "file://" + filepath.Join(t.TempDir(), "store")
	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", other.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	return this, other, store
}
