// Package pgtest gives tests a real PostgreSQL: one throwaway cluster per
// test package, started on first use, and one fresh database per test so
// tests can run in parallel.
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestX(t *testing.T) {
//		t.Parallel()
//		db := pgtest.NewDB(t) // db.DSN, db.Pool
//	}
//
// The server binaries come from SPIREDB_PG_BIN, else `pg_config --bindir`,
// else the newest /usr/lib/postgresql/*/bin. Clusters are always stopped:
// by Main when the tests end, by the kernel (parent-death signal) when the
// test binary is killed, and by CleanStale on the next run otherwise.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

var (
	mu       sync.Mutex
	shared   *pgcluster.Cluster
	startErr error
)

// Main runs the package's tests and stops every cluster (and other test
// server) they started, also on SIGINT/SIGTERM.
func Main(m *testing.M) { harness.Main(m) }

// Options returns the cluster options the harness uses.
func Options() pgcluster.Options {
	return pgcluster.Options{BinDir: os.Getenv("SPIREDB_PG_BIN")}
}

// Cluster returns the package's shared cluster, starting it on first use.
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	c, err := sharedCluster()
	require.NoError(t, err, "starting the shared PostgreSQL cluster")
	return c
}

func sharedCluster() (*pgcluster.Cluster, error) {
	mu.Lock()
	defer mu.Unlock()
	if !harness.InMain() {
		return nil, errors.New("pgtest: add `func TestMain(m *testing.M) { pgtest.Main(m) }` to this package")
	}
	if shared == nil && startErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared, startErr = pgcluster.Start(ctx, Options())
		if startErr == nil {
			c := shared
			harness.AtExit(func() { _ = c.Stop() })
		}
	}
	return shared, startErr
}

// ExampleDB creates a fresh database on the shared cluster for a runnable
// example (which has no *testing.T) and returns its DSN; with entries > 0
// it holds a small SPIRE datastore (SPIRE's schema as a real spire-server
// created it, entries registration entries, 3 agents). It is dropped when
// the package's tests end; it panics when there is no cluster.
func ExampleDB(name string, entries int) string {
	c, err := sharedCluster()
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	db := "example_" + name + "_" + hex.EncodeToString(b)
	dsn, err := c.CreateDatabase(ctx, db)
	if err != nil {
		panic(err)
	}
	harness.AtExit(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = c.DropDatabase(ctx, db)
	})
	if entries > 0 {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			panic(err)
		}
		defer conn.Close(ctx)
		if _, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: entries}); err != nil {
			panic(err)
		}
	}
	return dsn
}

// NewCluster starts a cluster of the test's own (replication tests need
// several); it is stopped when the test ends.
func NewCluster(t testing.TB, opts pgcluster.Options) *pgcluster.Cluster {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = os.Getenv("SPIREDB_PG_BIN")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log of %s:\n%s", c.Dir, c.LogTail(30))
		}
		_ = c.Stop()
	})
	return c
}

// Server is what a database can be created on: a local throwaway
// *pgcluster.Cluster, or a container (pgtest/pgcontainer) where Docker runs.
type Server interface {
	DSN(db string) string
	CreateDatabase(ctx context.Context, name string) (string, error)
	DropDatabase(ctx context.Context, name string) error
}

// DB is a fresh database of the test's own.
type DB struct {
	Server Server
	// Cluster is the local cluster the database is on; nil on a container.
	Cluster *pgcluster.Cluster
	Name    string
	DSN     string
	Pool    *pgxpool.Pool
}

// NewDB creates a fresh database on the shared cluster, dropped when the
// test ends.
func NewDB(t testing.TB) *DB {
	t.Helper()
	return NewDBOn(t, Cluster(t))
}

// NewDBOn creates a fresh database on c.
func NewDBOn(t testing.TB, c Server) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := DBName(t)
	dsn, err := c.CreateDatabase(ctx, name)
	require.NoError(t, err)
	pool, err := pg.NewPool(ctx, pg.Options{DSN: dsn, ApplicationName: "spiredb-test"})
	require.NoError(t, err)
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = c.DropDatabase(ctx, name)
	})
	cluster, _ := c.(*pgcluster.Cluster)
	return &DB{Server: c, Cluster: cluster, Name: name, DSN: dsn, Pool: pool}
}

// DBName returns a database name derived from the test name, unique per call.
func DBName(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	base := strings.ToLower(t.Name())
	base = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	return "t_" + base + "_" + hex.EncodeToString(b)
}

// ManagedRole creates a login role of the kind a managed service hands
// out (no superuser, CREATEDB, a member of pg_monitor) and returns db's
// cluster as that role: its User, Password and DSN(name).
func ManagedRole(t testing.TB, db *DB) *pgcluster.Cluster {
	t.Helper()
	role := "managed_" + strings.TrimPrefix(DBName(t), "t_")
	if len(role) > 60 {
		role = role[:60]
	}
	const password = "managed-pw-1"
	_, err := db.Pool.Exec(context.Background(), "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+
		" LOGIN PASSWORD '"+password+"' NOSUPERUSER CREATEDB IN ROLE pg_monitor")
	require.NoError(t, err)
	c := *db.Cluster
	c.User, c.Password = role, password
	return &c
}
