package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/pg"
)

// putBackup writes a complete backup the way Run lays it out (dump, then
// the manifest naming its directory), without a database: what is under
// test here is what prune and list do with a store's layout.
func putBackup(t *testing.T, s backup.Store, started time.Time, verified bool) backup.Manifest {
	t.Helper()
	ctx := context.Background()
	id := fmt.Sprintf("%s-%06x", started.UTC().Format("20060102T150405Z"), rand.IntN(1<<24))
	data := []byte("PGDMP fake dump of " + id)
	sum := sha256.Sum256(data)
	_, err := s.Put(ctx, id+"/dump", bytes.NewReader(data))
	require.NoError(t, err)
	m := backup.Manifest{ID: id, Database: "spire", StartedAt: started.UTC(), FinishedAt: started.UTC().Add(time.Second),
		Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Format: "custom"}
	putJSONObject(t, s, id+"/manifest.json", m)
	if verified {
		putJSONObject(t, s, id+"/verify.json", backup.VerifyResult{ID: id, Level: backup.LevelChecksum, OK: true, Time: started.UTC()})
		m.Verification = &backup.VerifyResult{OK: true}
	}
	return m
}

func putJSONObject(t *testing.T, s backup.Store, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	_, err = s.Put(context.Background(), key, bytes.NewReader(b))
	require.NoError(t, err)
}

func putRaw(t *testing.T, s backup.Store, key, body string) {
	t.Helper()
	_, err := s.Put(context.Background(), key, strings.NewReader(body))
	require.NoError(t, err)
}

// copyDir copies every object under from/ to to/ (cp -a FROM TO).
func copyDir(t *testing.T, s backup.Store, from, to string) {
	t.Helper()
	ctx := context.Background()
	objs, err := s.List(ctx, from+"/")
	require.NoError(t, err)
	require.NotEmpty(t, objs)
	for _, o := range objs {
		putRaw(t, s, to+strings.TrimPrefix(o.Key, from), string(readObject(t, s, o.Key)))
	}
}

func allKeys(t *testing.T, s backup.Store) []string {
	t.Helper()
	objs, err := s.List(context.Background(), "")
	require.NoError(t, err)
	return keys(objs)
}

func s3RootStore(t *testing.T) backup.Store {
	t.Helper()
	b := s3test.NewBucket(t)
	s, err := backup.OpenStore(context.Background(), "s3://"+b.Name, s3Options(b))
	require.NoError(t, err)
	return s
}

// TestPruneDeletesOnlyWhatSpiredbWrote: another application's files, a
// copied backup directory, a corrupt manifest and unknown files inside a
// backup directory survive prune; the real newest backup is kept; only
// old backups and spiredb's own leftovers go. On a directory store and at
// an S3 bucket's root.
func TestPruneDeletesOnlyWhatSpiredbWrote(t *testing.T) {
	t.Parallel()
	for name, mk := range map[string]func(t *testing.T) backup.Store{"file": fileStore, "s3-bucket-root": s3RootStore} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := mk(t)
			base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
			var real []backup.Manifest
			for i := range 4 {
				real = append(real, putBackup(t, s, base.Add(time.Duration(i)*time.Hour), i == 1))
			}
			newest := real[len(real)-1]
			foreign := []string{"cache/apt/pkgcache.bin", "lib/dpkg/status", "log/syslog", "spool/x/dump", "tmp/manifest.json.bak", "notes.txt",
				"20261101T000000Z-zzzzzz/dump"} // not quite an ID: not spiredb's
			for _, k := range foreign {
				putRaw(t, s, k, "someone else's "+k)
			}
			copyDir(t, s, newest.ID, "pinned-before-upgrade")
			// an ID-shaped copy: its manifest names another directory
			copyID := "20261201T000000Z-abcdef"
			copyDir(t, s, real[0].ID, copyID)
			// a corrupt manifest in an ID-shaped directory with its dump
			corrupt := "20261102T000000Z-c0ffee"
			putRaw(t, s, corrupt+"/dump", "PGDMP")
			putRaw(t, s, corrupt+"/manifest.json", "{not json")
			// spiredb's own leftover of a killed run, plus an unknown file
			// inside an old backup directory
			leftover := "20261020T000000Z-0ddba1"
			putRaw(t, s, leftover+"/dump", "PGDMP half")
			putRaw(t, s, real[0].ID+"/README", "pinned by ops")
			before := allKeys(t, s)

			inv, err := backup.Inspect(ctx, s)
			require.NoError(t, err)
			require.Len(t, inv.Backups, 4)
			require.Equal(t, newest.ID, inv.Backups[3].ID)
			problems := map[string]string{}
			for _, p := range inv.Problems {
				problems[p.Key] = p.Reason
			}
			require.Contains(t, problems, "pinned-before-upgrade/manifest.json")
			require.Contains(t, problems[copyID+"/manifest.json"], "names backup")
			require.Contains(t, problems[corrupt+"/manifest.json"], "unreadable manifest")

			dry, err := backup.Prune(ctx, backup.PruneOptions{Store: s, Policy: backup.Policy{KeepLast: 1}, DryRun: true, StaleAfter: -1})
			require.NoError(t, err)
			require.Equal(t, before, allKeys(t, s), "a dry run changes nothing")
			require.ElementsMatch(t, []string{real[0].ID, real[2].ID}, dry.Deleted)

			res, err := backup.Prune(ctx, backup.PruneOptions{Store: s, Policy: backup.Policy{KeepLast: 1}, StaleAfter: -1})
			require.NoError(t, err)
			require.ElementsMatch(t, []string{real[0].ID, real[2].ID}, res.Deleted, "real[1] is the newest verified")
			require.Equal(t, []string{leftover}, res.Leftovers)
			require.Contains(t, res.Foreign, "pinned-before-upgrade")
			require.Contains(t, res.Foreign, "cache")

			after := allKeys(t, s)
			for _, k := range foreign {
				require.Contains(t, after, k, "foreign object deleted")
			}
			for _, k := range before {
				if strings.HasPrefix(k, "pinned-before-upgrade/") || strings.HasPrefix(k, copyID+"/") || strings.HasPrefix(k, corrupt+"/") {
					require.Contains(t, after, k, "a copy or an unreadable backup was deleted")
				}
			}
			require.Contains(t, after, real[0].ID+"/README", "an unknown file in a backup directory was deleted")
			require.NotContains(t, after, real[0].ID+"/dump")
			require.NotContains(t, after, leftover+"/dump")

			list, err := backup.List(ctx, s)
			require.NoError(t, err)
			require.Equal(t, []string{real[1].ID, newest.ID}, idsOf(list))
		})
	}
}

func idsOf(ms []backup.Manifest) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// TestOneUnreadableManifestIsAWarning: list, verify and restore's lookup
// of the other backups still work.
func TestOneUnreadableManifestIsAWarning(t *testing.T) {
	forEachStore(t, func(t *testing.T, s backup.Store) {
		ctx := context.Background()
		good := putBackup(t, s, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), false)
		newer := putBackup(t, s, time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), false)
		putRaw(t, s, newer.ID+"/manifest.json", "\x00garbage")
		list, err := backup.List(ctx, s)
		require.NoError(t, err)
		require.Equal(t, []string{good.ID}, idsOf(list))
		m, err := backup.Find(ctx, s, good.ID, false)
		require.NoError(t, err)
		require.Equal(t, good.ID, m.ID)
		m, err = backup.Find(ctx, s, "", true)
		require.NoError(t, err)
		require.Equal(t, good.ID, m.ID, "latest is the newest usable backup")
		_, err = backup.Find(ctx, s, newer.ID, false)
		require.ErrorContains(t, err, "unreadable manifest")
		res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: good.ID, Level: backup.LevelChecksum})
		require.NoError(t, err)
		require.True(t, res.OK, "%+v", res.Checks)
	})
}

// TestPruneProperty: random store layouts with foreign objects, copied,
// corrupt and partial backups. Prune deletes only spiredb's own backups
// that no rule keeps and its own stale leftovers, never the newest or the
// newest verified backup, and never anything else.
func TestPruneProperty(t *testing.T) {
	t.Parallel()
	for seed := range uint64(60) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 7))
			ctx := context.Background()
			s := fileStore(t)
			base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			var real []backup.Manifest
			for i := range 1 + rng.IntN(12) {
				real = append(real, putBackup(t, s, base.Add(time.Duration(i*(1+rng.IntN(40)))*time.Hour), rng.IntN(4) == 0))
			}
			protected := map[string]bool{} // keys that must survive
			names := []string{"dump", "manifest.json", "verify.json", "data", "x/y/z", ".hidden"}
			for i := range rng.IntN(8) {
				var k string
				switch rng.IntN(4) {
				case 0: // foreign, any depth
					k = fmt.Sprintf("app%d/%s", i, names[rng.IntN(len(names))])
				case 1: // top-level foreign file
					k = fmt.Sprintf("file%d.txt", i)
				case 2: // ID-like but not an ID
					k = fmt.Sprintf("2026010%dT000000Z-%d/dump", i%10, i)
				default: // an unknown object inside a real backup's directory
					k = real[rng.IntN(len(real))].ID + "/" + names[3+rng.IntN(3)]
				}
				putRaw(t, s, k, "foreign")
				protected[k] = true
			}
			for i := range rng.IntN(3) { // copies, under any name
				from := real[rng.IntN(len(real))].ID
				to := fmt.Sprintf("copy-%d", i)
				if rng.IntN(2) == 0 {
					to = fmt.Sprintf("20270101T00000%dZ-aaaaa%d", i, i)
				}
				copyDir(t, s, from, to)
			}
			for i := range rng.IntN(3) { // corrupt manifests
				id := fmt.Sprintf("20250101T00000%dZ-bbbbb%d", i, i)
				putRaw(t, s, id+"/dump", "PGDMP")
				putRaw(t, s, id+"/manifest.json", "{")
			}
			for _, k := range allKeys(t, s) {
				id, _, _ := strings.Cut(k, "/")
				if strings.HasPrefix(id, "copy-") || strings.HasPrefix(id, "20270101") || strings.HasPrefix(id, "20250101") {
					protected[k] = true
				}
			}
			var leftovers []string
			for i := range rng.IntN(3) {
				id := fmt.Sprintf("20240101T00000%dZ-ccccc%d", i, i)
				putRaw(t, s, id+"/dump", "half")
				leftovers = append(leftovers, id)
			}
			byTime := slices.Clone(real)
			slices.SortFunc(byTime, func(a, b backup.Manifest) int { return a.StartedAt.Compare(b.StartedAt) })
			newest, newestVerified := byTime[len(byTime)-1].ID, ""
			for _, m := range byTime {
				if m.Verification != nil {
					newestVerified = m.ID
				}
			}
			policy := backup.Policy{KeepLast: rng.IntN(3), KeepDaily: rng.IntN(3)}
			if policy.Empty() {
				policy.KeepLast = 1
			}
			res, err := backup.Prune(ctx, backup.PruneOptions{Store: s, Policy: policy, StaleAfter: -1})
			require.NoError(t, err)
			after := allKeys(t, s)
			for k := range protected {
				require.Contains(t, after, k, "prune deleted %s, which it did not write", k)
			}
			for _, id := range leftovers {
				require.NotContains(t, after, id+"/dump")
			}
			list, err := backup.List(ctx, s)
			require.NoError(t, err)
			ids := idsOf(list)
			require.Contains(t, ids, newest)
			if newestVerified != "" {
				require.Contains(t, ids, newestVerified)
			}
			for _, d := range res.Deleted {
				require.True(t, slices.ContainsFunc(real, func(m backup.Manifest) bool { return m.ID == d }), "deleted %s, not a backup", d)
				require.NotContains(t, ids, d)
			}
			require.Len(t, ids, len(real)-len(res.Deleted))
		})
	}
}

// TestReadOnlyDirectoryStore: a store the process may read but not write
// is listed, checked and restored from; only writing commands refuse it.
func TestReadOnlyDirectoryStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	rw, err := backup.NewFileStore(dir)
	require.NoError(t, err)
	m := putBackup(t, rw, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), false)
	// a read-only view of it: a read-only bind mount, or another uid, in
	// production; here the store's own write check is what differs
	ro := readOnlyStore{rw}
	require.NoError(t, ro.Check(ctx))
	list, err := backup.List(ctx, ro)
	require.NoError(t, err)
	require.Equal(t, []string{m.ID}, idsOf(list))
	res, err := backup.Verify(ctx, backup.VerifyOptions{Store: ro, ID: m.ID, Level: backup.LevelChecksum})
	require.NoError(t, err)
	require.True(t, res.OK)
	require.False(t, res.Recorded, "the result cannot be stored in a read-only store")
	_, err = backup.Prune(ctx, backup.PruneOptions{Store: ro, Policy: backup.Policy{KeepLast: 1}, DryRun: true})
	require.NoError(t, err)
	entries, err := os.ReadDir(filepath.Join(dir, m.ID))
	require.NoError(t, err)
	require.Len(t, entries, 2, "nothing written")
}

// readOnlyStore refuses every write, as a store on a read-only mount does.
type readOnlyStore struct{ backup.Store }

func (r readOnlyStore) Put(context.Context, string, io.Reader) (int64, error) {
	return 0, os.ErrPermission
}

func (r readOnlyStore) Delete(context.Context, ...string) error { return os.ErrPermission }

// recordingTools wraps the real pg_dump and pg_restore in scripts that
// append their argv to a file, so a test can read what /proc would show.
func recordingTools(t *testing.T) (backup.Tools, string) {
	t.Helper()
	dir := t.TempDir()
	argv := filepath.Join(dir, "argv.log")
	for _, prog := range []string{"pg_dump", "pg_restore"} {
		real, err := exec.LookPath(prog)
		require.NoError(t, err)
		script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> %s\nexec %s \"$@\"\n", argv, real)
		require.NoError(t, os.WriteFile(filepath.Join(dir, prog), []byte(script), 0o755))
	}
	return backup.Tools{BinDir: dir}, argv
}

// TestLibpqProgramsGetNoSecretsAndTheRightDatabase: pg_dump and
// pg_restore's argv carry neither password nor sslpassword; verify
// restores into the scratch database it created even when the scratch DSN
// names another database in its query string; files are private.
func TestLibpqProgramsGetNoSecretsAndTheRightDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := spireDB(t, 200)
	tools, argv := recordingTools(t)
	dir := t.TempDir()
	s, err := backup.NewFileStore(filepath.Join(dir, "store"))
	require.NoError(t, err)
	const sslSecret = "SSLsecret/?#@9"
	withSSL := db.DSN + "&sslpassword=" + url.QueryEscape(sslSecret)
	m, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: withSSL}, Store: s, Compress: -1, Tools: tools})
	require.NoError(t, err)

	// a scratch DSN whose query string names a database verify did not create
	victim := pgtest.NewDB(t)
	_, err = victim.Pool.Exec(ctx, "CREATE TABLE keep_me (id int)")
	require.NoError(t, err)
	scratch := db.DSN + "&dbname=" + victim.Name
	for _, jobs := range []int{1, 2} {
		res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelRestore, Jobs: jobs,
			Scratch: pg.Options{DSN: scratch}, Tools: tools})
		require.NoError(t, err)
		require.True(t, res.OK, "%+v", res.Checks)
	}
	var tables int
	require.NoError(t, victim.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables))
	require.Equal(t, 1, tables, "verify restored into a database it did not create")

	logged, err := os.ReadFile(argv)
	require.NoError(t, err)
	password := strings.TrimPrefix(strings.Split(strings.Split(db.DSN, "@")[0], "://")[1], "postgres:")
	require.NotEmpty(t, password)
	for _, secret := range []string{password, sslSecret, url.QueryEscape(sslSecret)} {
		require.NotContains(t, string(logged), secret, "a secret on a program's command line")
	}
	require.Contains(t, string(logged), "dbname='spiredb_verify_")

	require.NoError(t, filepath.WalkDir(filepath.Join(dir, "store"), func(p string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		info, err := d.Info()
		require.NoError(t, err)
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		require.Equal(t, want, info.Mode().Perm(), p)
		return nil
	}))
}

// TestVerifyDropsOnlyItsOwnScratchDatabase: verify, diff and upgrade-check
// restore into a scratch database they create. A database that merely has
// the name such a run would use (another run's of the same backup, at the
// same time, or anybody's), or a scratch database whose run is still alive,
// is never dropped and its sessions are never ended; only a leftover whose
// run's session is provably gone is cleaned.
func TestVerifyDropsOnlyItsOwnScratchDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := spireDB(t, 200)
	s, err := backup.NewFileStore(t.TempDir())
	require.NoError(t, err)
	m, err := backup.Run(ctx, backup.RunOptions{Conn: pg.Options{DSN: db.DSN}, Store: s})
	require.NoError(t, err)
	base := "spiredb_verify_" + strings.ToLower(strings.ReplaceAll(m.ID, "-", "_"))
	create := func(name, comment string) {
		_, err := db.Pool.Exec(ctx, "CREATE DATABASE "+name)
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = db.Pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
		if comment != "" {
			_, err = db.Pool.Exec(ctx, fmt.Sprintf("COMMENT ON DATABASE %s IS '%s'", name, comment))
			require.NoError(t, err)
		}
	}
	exists := func(name string) bool {
		var ok bool
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&ok))
		return ok
	}

	// the name a run of this backup used to take, with somebody in it
	create(base, "")
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.Path = "/" + base
	inside, err := pgx.Connect(ctx, u.String())
	require.NoError(t, err)
	defer inside.Close(ctx)
	var pid uint32
	var started time.Time
	require.NoError(t, inside.QueryRow(ctx, "SELECT pg_backend_pid(), backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").Scan(&pid, &started))
	// a scratch-shaped name without spiredb's mark
	create(base+"_deadbeef", "")
	// a run that is still going: its session is alive
	create(base+"_0a1b2c3d", backup.ScratchComment("verify", m.ID, pid, started))
	// a run that ended without dropping its database (killed): its
	// session is gone
	create(base+"_0badc0de", backup.ScratchComment("verify", m.ID, pid, started.Add(-time.Hour)))
	// the same mark on a database whose name spiredb never gives (copied
	// by hand, or set by its owner): not a scratch database
	appDB := "app_" + strings.TrimPrefix(base, "spiredb_verify_")
	create(appDB, backup.ScratchComment("verify", m.ID, pid, started.Add(-time.Hour)))

	res, err := backup.Verify(ctx, backup.VerifyOptions{Store: s, ID: m.ID, Level: backup.LevelRestore, Scratch: pg.Options{DSN: db.DSN}})
	require.NoError(t, err)
	require.True(t, res.OK, "%+v", res.Checks)

	require.NoError(t, inside.Ping(ctx), "a session in a database verify did not create was ended")
	for _, kept := range []string{base, base + "_deadbeef", base + "_0a1b2c3d", appDB} {
		require.True(t, exists(kept), "%s is not this run's: it stays", kept)
	}
	require.False(t, exists(base+"_0badc0de"), "the leftover of a run whose session is gone is cleaned")
	var own int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname LIKE $1 AND datname NOT IN ($2, $3, $4)",
		base+"%", base, base+"_deadbeef", base+"_0a1b2c3d").Scan(&own))
	require.Zero(t, own, "verify dropped its own scratch database")
}

// TestSharedStoreKeepsEachDatabasesBackups: two SPIRE databases backed up
// into one store (two deployments given the same prefix). Retention keeps
// each one's newest backups: the other's more frequent runs never push
// them out. --latest, which could mean either, is refused by restore and
// diff, naming both; --id restores the one named.
func TestSharedStoreKeepsEachDatabasesBackups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	staging, prod := spireDB(t, 40), spireDB(t, 60)
	prodOld := runBackup(t, prod, s, "prod")
	prodNew := runBackup(t, prod, s, "prod")
	var stagingRuns []*backup.Manifest
	for range 3 {
		stagingRuns = append(stagingRuns, runBackup(t, staging, s, "staging"))
	}

	res, err := backup.Prune(ctx, backup.PruneOptions{Store: s, Policy: backup.Policy{KeepLast: 1}, StaleAfter: -1})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{prodOld.ID, stagingRuns[0].ID, stagingRuns[1].ID}, res.Deleted,
		"each database keeps its own newest backup")
	list, err := backup.List(ctx, s)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{prodNew.ID, stagingRuns[2].ID}, idsOf(list))

	target := pgtest.NewDB(t)
	for name, latest := range map[string]func() error{
		"restore": func() error {
			_, err := backup.Restore(ctx, backup.RestoreOptions{Store: s, Latest: true, Target: pg.Options{DSN: target.DSN}})
			return err
		},
		"diff": func() error {
			_, err := backup.Diff(ctx, backup.DiffOptions{Store: s, Latest: true, Live: pg.Options{DSN: prod.DSN}, Scratch: pg.Options{DSN: prod.DSN}})
			return err
		},
	} {
		err := latest()
		require.Error(t, err, name+" --latest chose between two databases' backups")
		require.ErrorContains(t, err, "ambiguous", name)
		require.ErrorContains(t, err, prodNew.ID, name)
		require.ErrorContains(t, err, stagingRuns[2].ID, name)
	}
	conn, err := pgx.Connect(ctx, target.DSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var rels int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").Scan(&rels))
	require.Zero(t, rels, "a refused restore wrote into the target")

	rr, err := backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: prodNew.ID, Target: pg.Options{DSN: target.DSN}})
	require.NoError(t, err)
	require.EqualValues(t, 60, rr.RowCounts["registered_entries"])
}

// TestRestoreCleanRefusesWhileOthersAreConnected: a spire-server that
// stays connected through a restore --clean keeps its entry cache and its
// events cursor and goes on from the replaced state (and whatever it
// writes meanwhile is lost). The restore is refused, naming the sessions,
// before anything is dropped; spiredb's own sessions do not count, and
// AllowSessions overrides.
func TestRestoreCleanRefusesWhileOthersAreConnected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	db := spireDB(t, 50)
	m := runBackup(t, db, s, "")
	db.Pool.Reset()

	spire, err := pgx.Connect(ctx, db.DSN+"&application_name=spire-server")
	require.NoError(t, err)
	defer spire.Close(ctx)
	_, err = spire.Exec(ctx, "DELETE FROM registered_entries WHERE entry_id IN (SELECT entry_id FROM registered_entries LIMIT 5)")
	require.NoError(t, err)
	own, err := pgx.Connect(ctx, db.DSN+"&application_name=spiredb-schedule")
	require.NoError(t, err)
	defer own.Close(ctx)

	count := func() int {
		var n int
		require.NoError(t, spire.QueryRow(ctx, "SELECT count(*) FROM registered_entries").Scan(&n))
		return n
	}
	_, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m.ID, Target: pg.Options{DSN: db.DSN}, Clean: true, AcceptLoss: true})
	var ce *backup.ConnectedError
	require.ErrorAs(t, err, &ce)
	require.ErrorContains(t, err, "spire-server")
	require.NotContains(t, err.Error(), "spiredb-schedule")
	require.Len(t, ce.Sessions, 1)
	require.Equal(t, 45, count(), "a refused restore changed the target")

	_, err = backup.Restore(ctx, backup.RestoreOptions{Store: s, ID: m.ID, Target: pg.Options{DSN: db.DSN}, Clean: true, AcceptLoss: true, AllowSessions: true})
	require.NoError(t, err)
	require.Equal(t, 50, count())
}

// TestBaseManifestWithoutItsPhysicalSectionIsAProblem: a manifest that
// says "physical" but lacks the section every use of a base reads is one
// warning, not a crash of list, windows or doctor.
func TestBaseManifestWithoutItsPhysicalSectionIsAProblem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := fileStore(t)
	good := putBackup(t, s, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), false)
	id := "20261102T000000Z-0badba"
	putRaw(t, s, id+"/base.tar.zst", "not a base")
	putJSONObject(t, s, id+"/manifest.json", backup.Manifest{ID: id, Kind: backup.KindPhysical, StartedAt: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)})

	inv, err := backup.Inspect(ctx, s)
	require.NoError(t, err)
	require.Equal(t, []string{good.ID}, idsOf(inv.Backups))
	require.Len(t, inv.Problems, 1)
	require.Contains(t, inv.Problems[0].Reason, "physical")
	_, err = backup.Windows(ctx, s)
	require.NoError(t, err)
}
