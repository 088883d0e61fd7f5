package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/s3test"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
)

// ageKey is an identity file and its recipient.
type ageKey struct {
	file, recipient, secret string
}

func newAgeKey(t *testing.T, name string) ageKey {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	f := filepath.Join(t.TempDir(), name+".key")
	require.NoError(t, os.WriteFile(f, []byte("# "+name+"\n"+id.String()+"\n"), 0o600))
	return ageKey{file: f, recipient: id.Recipient().String(), secret: id.String()}
}

// storedObjects reads every object under the store: key → content.
func storedObjects(t *testing.T, s backup.Store) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	objs, err := s.List(ctx, "")
	require.NoError(t, err)
	out := map[string][]byte{}
	for _, o := range objs {
		rc, err := s.Get(ctx, o.Key)
		require.NoError(t, err)
		b, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		out[o.Key] = b
	}
	return out
}

// Encrypted backups of a real spire-server's datastore: no stored object
// holds a plaintext SPIFFE ID or bundle byte; a missing or wrong identity
// fails before the restore target is touched; rekey rewrites manifests only
// and an identity that opens only some backups changes nothing.
func TestEncryptedBackupsWithSpire(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	src := pgtest.NewDB(t)
	srv := startSpire(t, src, spiretest.Options{})
	require.NoError(t, srv.CreateEntries(ctx, spirefixture.GenerateEntries(300, 3, nil)))
	// bytes of SPIRE's trust bundle (its CA certificate's DER), which the
	// stored objects must not hold in plaintext
	var bundle []byte
	require.NoError(t, src.Pool.QueryRow(ctx, "SELECT data FROM bundles ORDER BY id LIMIT 1").Scan(&bundle))
	require.Greater(t, len(bundle), 200)
	// pg_dump writes bytea in hex: look for both forms
	der := bundle[len(bundle)/2 : len(bundle)/2+32]
	derHex := []byte(hex.EncodeToString(der))
	spiffe := []byte("spiffe://")

	alice, bob, carol := newAgeKey(t, "alice"), newAgeKey(t, "bob"), newAgeKey(t, "carol")
	b := s3test.NewBucket(t)
	env, store := s3CLI(b, "enc")
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		out, errOut, code := runCLI(t, env, append(args, store...)...)
		for _, k := range []ageKey{alice, bob, carol} {
			require.NotContains(t, out+errOut, k.secret, "an identity's secret key was printed")
		}
		require.NotContains(t, out+errOut, b.SecretKey)
		return out, errOut, code
	}

	// the canary: the same scan finds SPIRE's bytes in an unencrypted,
	// uncompressed backup
	_, plainStore := s3CLI(b, "plain")
	_, errOut, code := runCLI(t, env, append([]string{"backup", "run", "--dsn", src.DSN, "--compress", "0"}, plainStore...)...)
	require.Equal(t, 0, code, errOut)
	var plain []byte
	for _, o := range storedObjects(t, s3StoreOf(t, b, "plain")) {
		plain = append(plain, o...)
	}
	require.True(t, bytes.Contains(plain, spiffe) && bytes.Contains(plain, derHex), "the canary backup should hold SPIRE's bytes")

	// zstd (the default) and pg_dump's uncompressed archive, both encrypted
	var ids []string
	for _, compress := range []string{"zstd", "0"} {
		out, errOut, code := cli("backup", "run", "--dsn", src.DSN, "--compress", compress, "--recipient", alice.recipient, "-o", "json")
		require.Equal(t, 0, code, errOut)
		var m backup.Manifest
		require.NoError(t, json.Unmarshal([]byte(out), &m))
		require.NotNil(t, m.Encryption)
		require.Equal(t, []string{alice.recipient}, m.Encryption.Recipients)
		require.EqualValues(t, 300, m.RowCounts["registered_entries"])
		ids = append(ids, m.ID)
	}
	// list says which backups are encrypted (the canary's store says none)
	out, errOut, code := cli("backup", "list")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, 2, strings.Count(out, " age "), out)
	out, errOut, code = runCLI(t, env, append([]string{"backup", "list"}, plainStore...)...)
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, out, " age ", out)
	s := s3StoreOf(t, b, "enc")
	before := storedObjects(t, s)
	require.Len(t, before, 4) // two dumps, two manifests
	for k, o := range before {
		require.False(t, bytes.Contains(o, spiffe), "%s holds a plaintext SPIFFE ID", k)
		require.False(t, bytes.Contains(o, der) || bytes.Contains(o, derHex), "%s holds plaintext bundle bytes", k)
	}

	// a missing or wrong identity fails before the target is touched
	dst := pgtest.NewDB(t)
	relations := func() int {
		var n int
		require.NoError(t, dst.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`).Scan(&n))
		return n
	}
	_, errOut, code = cli("backup", "restore", "--id", ids[0], "--target-dsn", dst.DSN)
	require.Equal(t, 2, code, errOut)
	require.Contains(t, errOut, "is encrypted")
	require.Contains(t, errOut, "--identity")
	_, errOut, code = cli("backup", "restore", "--id", ids[1], "--target-dsn", dst.DSN, "--jobs", "2", "--identity", bob.file)
	require.Equal(t, 2, code, errOut)
	require.Contains(t, errOut, "none of the given identities opens it")
	require.Zero(t, relations(), "a failed restore wrote into the target")

	// the checksum needs no key; the restore level does
	_, errOut, code = cli("backup", "verify", "--id", ids[0], "--level", "checksum")
	require.Equal(t, 0, code, errOut)
	_, errOut, code = cli("backup", "verify", "--id", ids[0], "--dsn", src.DSN, "--level", "restore", "--identity", alice.file)
	require.Equal(t, 0, code, errOut)

	for i, id := range ids {
		target := pgtest.NewDB(t)
		out, errOut, code := cli("backup", "restore", "--id", id, "--target-dsn", target.DSN, "--jobs", []string{"1", "2"}[i], "--identity", alice.file)
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "300 registration entries")
	}

	// rotation: rewrap to bob; the data objects are untouched
	out, errOut, code = cli("backup", "rekey", "--all", "--identity", alice.file, "--recipient", bob.recipient, "--yes")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "rekeyed 2 backups to "+bob.recipient)
	after := storedObjects(t, s)
	for _, id := range ids {
		require.Equal(t, sha256.Sum256(before[id+"/dump"]), sha256.Sum256(after[id+"/dump"]), "rekey rewrote a dump")
		require.NotEqual(t, before[id+"/manifest.json"], after[id+"/manifest.json"])
	}
	_, errOut, code = cli("backup", "restore", "--id", ids[0], "--target-dsn", dst.DSN, "--identity", alice.file)
	require.NotEqual(t, 0, code, "the old identity still opens a rekeyed backup")
	require.Contains(t, errOut, "none of the given identities opens it")
	_, errOut, code = cli("backup", "verify", "--id", ids[1], "--dsn", src.DSN, "--level", "toc", "--identity", bob.file)
	require.Equal(t, 0, code, errOut)

	// a backup bob cannot open: rekeying all with bob's identity changes
	// no manifest at all
	_, errOut, code = cli("backup", "run", "--dsn", src.DSN, "--recipient", carol.recipient)
	require.Equal(t, 0, code, errOut)
	mid := storedObjects(t, s)
	_, errOut, code = cli("backup", "rekey", "--all", "--identity", bob.file, "--recipient", alice.recipient, "--yes")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "no manifest was changed")
	require.Equal(t, mid, storedObjects(t, s))

	// a secret key given as a recipient is refused without echoing it
	_, errOut, code = cli("backup", "run", "--dsn", src.DSN, "--recipient", alice.secret)
	require.Equal(t, 2, code, errOut)
	require.Equal(t, mid, storedObjects(t, s), "a refused run wrote something")
}

// Encrypted point-in-time recovery: wal push --recipient and an encrypted
// base; every stored object is an age file after its header; a restore
// without the identity fails before the data directory exists; with it
// (the restore_command gets --identity too) it recovers every row.
func TestEncryptedPointInTimeRecovery(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	key := newAgeKey(t, "dr")
	// the private postgres runs restore_command as the server's user: the
	// identity file is that user's
	idFile := filepath.Join(sharedDir(t), "dr.key")
	copyFile(t, key.file, idFile, 0o600)
	cred, err := pgcluster.ServerCredential()
	require.NoError(t, err)
	if cred != nil {
		require.NoError(t, os.Chown(idFile, int(cred.Uid), int(cred.Gid)))
	}
	b := s3test.NewBucket(t)
	env, flags := s3CLI(b, "pitr-enc")
	c := archivingClusterPushing(t, b, "pitr-enc", []string{"--recipient", key.recipient})
	conn, err := pgx.Connect(ctx, c.DSN("spire"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE ids (id text PRIMARY KEY);
		INSERT INTO ids SELECT 'spiffe://example.org/before/' || g FROM generate_series(1, 500) g`)
	require.NoError(t, err)

	cli := func(args ...string) (string, string, int) {
		t.Helper()
		out, errOut, code := runCLI(t, env, append(args, flags...)...)
		require.NotContains(t, out+errOut, key.secret)
		return out, errOut, code
	}
	out, errOut, code := cli("backup", "run", "--physical", "--dsn", c.DSN("spire"), "--recipient", key.recipient, "-o", "json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"scheme": "age-envelope-v1"`)
	_, err = conn.Exec(ctx, `INSERT INTO ids SELECT 'spiffe://example.org/after/' || g FROM generate_series(1, 500) g`)
	require.NoError(t, err)
	switchWAL(t, c)

	s := s3StoreOf(t, b, "pitr-enc")
	objs := storedObjects(t, s)
	wal := 0
	for k, o := range objs {
		require.False(t, bytes.Contains(o, []byte("spiffe://")), "%s holds a plaintext SPIFFE ID", k)
		switch {
		case filepath.Base(k) == "manifest.json":
		case strings.HasPrefix(k, "wal/"):
			wal++
			body := o[bytes.IndexByte(o, '\n')+1:]
			require.True(t, bytes.HasPrefix(body, []byte("age-encryption.org/v1\n")), "%s is not encrypted", k)
		default:
			require.True(t, bytes.HasPrefix(o, []byte("age-encryption.org/v1\n")), "%s is not encrypted", k)
		}
	}
	require.Positive(t, wal)

	// a segment that is there but cannot be opened is not "missing": wal
	// fetch exits 126, so that PostgreSQL aborts the recovery instead of
	// ending it early at the last segment it could read
	var segment string
	for k := range objs {
		if strings.HasPrefix(k, "wal/") && len(filepath.Base(k)) == 24 {
			segment = filepath.Base(k)
			break
		}
	}
	require.NotEmpty(t, segment)
	fetchDir := t.TempDir()
	for _, extra := range [][]string{nil, {"--identity", newAgeKey(t, "stranger").file}} {
		_, errOut, code := cli(append([]string{"wal", "fetch", segment, filepath.Join(fetchDir, "RECOVERYXLOG"), "--prefetch", "0"}, extra...)...)
		require.Equal(t, 126, code, errOut)
		ents, err := os.ReadDir(fetchDir)
		require.NoError(t, err)
		require.Empty(t, ents, "a fetch that could not decrypt left a file")
	}

	dir := restoreDir(t)
	_, errOut, code = cli("backup", "restore", "--physical", "--latest", "--data-dir", filepath.Join(dir, "data"))
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "is encrypted")
	_, err = os.Stat(filepath.Join(dir, "data"))
	require.ErrorIs(t, err, os.ErrNotExist, "a restore without the key made the data directory")

	_, errOut, code = cli("backup", "restore", "--physical", "--latest", "--data-dir", filepath.Join(dir, "data"), "--identity", idFile)
	require.Equal(t, 0, code, errOut)
	rconn, err := pgx.Connect(ctx, startRestored(t, c, dir))
	require.NoError(t, err)
	defer rconn.Close(ctx)
	var n int
	require.NoError(t, rconn.QueryRow(ctx, "SELECT count(*) FROM ids").Scan(&n))
	require.Equal(t, 1000, n)

	_, errOut, code = cli("backup", "verify", "--latest", "--level", "pitr", "--identity", idFile)
	require.Equal(t, 0, code, errOut)
}
