// Package pgcontainer backs the pgtest API with testcontainers-go's
// postgres module, so that suites can run against other PostgreSQL majors
// (postgres:13 … 17 images) where a Docker engine answers. It is a package
// of its own so that ordinary test binaries do not link a Docker client.
package pgcontainer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/spiredb/spiredb/pg"
)

// Images is the default matrix; SPIREDB_PG_IMAGES (comma-separated)
// overrides it.
func Images() []string {
	if v := os.Getenv("SPIREDB_PG_IMAGES"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"postgres:13", "postgres:14", "postgres:15", "postgres:16", "postgres:17"}
}

// Server is a PostgreSQL container with the harness's settings
// (pg_stat_statements preloaded, replication allowed).
type Server struct {
	Image    string
	Host     string
	Port     int
	User     string
	Password string
	c        *tcpostgres.PostgresContainer
}

// Start runs image and waits until it accepts connections. The test is
// skipped, with the reason, when no Docker engine answers.
func Start(t *testing.T, image string) *Server {
	t.Helper()
	testcontainers.SkipIfProviderIsNotHealthy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pw := randHex(12)
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword(pw),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithCmdArgs("-c", "shared_preload_libraries=pg_stat_statements", "-c", "wal_level=replica", "-c", "max_wal_senders=10"),
		testcontainers.WithWaitStrategy(wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(2*time.Minute)),
	)
	testcontainers.CleanupContainer(t, c)
	require.NoError(t, err, "starting %s", image)
	cs, err := c.ConnectionString(ctx, "sslmode=disable")
	require.NoError(t, err)
	cfg, err := pgx.ParseConfig(cs)
	require.NoError(t, err)
	return &Server{Image: image, Host: cfg.Host, Port: int(cfg.Port), User: cfg.User, Password: pw, c: c}
}

// DSN returns a URL DSN for database db.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", s.User, s.Password, net.JoinHostPort(s.Host, fmt.Sprint(s.Port)), db)
}

// CreateDatabase creates a database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := pg.CreateDatabase(ctx, pg.Options{DSN: s.DSN("postgres")}, name); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// DropDatabase drops a database, ending its sessions.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return pg.DropDatabase(ctx, pg.Options{DSN: s.DSN("postgres")}, name)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
