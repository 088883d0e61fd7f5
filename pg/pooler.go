package pg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// Pooling says what stands between spiredb and the server.
type Pooling struct {
	// Behind: the server sees another client address or port than this
	// session's own (a pooler such as PgBouncer, or a TCP proxy).
	Behind bool `json:"behind_pooler"`
	// Transaction: sessions are not kept across transactions (PgBouncer's
	// transaction or statement pooling): session state (advisory locks,
	// exported snapshots, SET) does not survive, and CONCURRENTLY is not
	// safe either.
	Transaction bool   `json:"transaction_pooling"`
	Detail      string `json:"detail,omitempty"`
}

// ErrTransactionPooler is returned by commands that need a session of
// their own when they run through a transaction pooler.
var ErrTransactionPooler = errors.New("this DSN goes through a transaction pooler (PgBouncer pool_mode = transaction): this command needs a session of its own (advisory locks, snapshots, CONCURRENTLY); give it a direct DSN to PostgreSQL")

// DetectPooling looks at what stands between conn and the server. It
// compares the session's own client port with the one the server records
// for its backend, and, through a pooler, opens a second session with opts
// to see whether a session setting of conn leaks to it (the server session
// was handed on at the end of the statement: transaction pooling). It
// speaks the simple protocol: no prepared statement is left behind.
func DetectPooling(ctx context.Context, conn *pgx.Conn, opts Options) (Pooling, error) {
	var p Pooling
	local, ok := conn.PgConn().Conn().LocalAddr().(*net.TCPAddr)
	if !ok {
		return p, nil // a Unix socket: nothing in between
	}
	var port *int32
	var serverPort *int32
	if err := conn.QueryRow(ctx, Marker+"SELECT client_port, pg_catalog.inet_server_port() FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()",
		pgx.QueryExecModeSimpleProtocol).Scan(&port, &serverPort); err != nil {
		return p, fmt.Errorf("reading this session's backend: %w", err)
	}
	remote, _ := conn.PgConn().Conn().RemoteAddr().(*net.TCPAddr)
	switch {
	case port == nil:
		p.Behind, p.Detail = true, "the server sees this session on a Unix socket, but spiredb connected over TCP"
	case int(*port) != local.Port:
		p.Behind, p.Detail = true, "the server sees client port "+strconv.Itoa(int(*port))+", this session uses "+strconv.Itoa(local.Port)
	case remote != nil && serverPort != nil && int(*serverPort) != remote.Port:
		p.Behind, p.Detail = true, "the server listens on "+strconv.Itoa(int(*serverPort))+", spiredb connected to "+strconv.Itoa(remote.Port)
	}
	if !p.Behind {
		return p, nil
	}
	// does a session setting of conn reach another client's session?
	const probe = "spiredb.pooling_probe"
	token := strconv.FormatInt(AdvisoryKey(fmt.Sprint(local.Port, conn.PgConn().PID())), 36)
	if _, err := conn.Exec(ctx, Marker+"SELECT pg_catalog.set_config('"+probe+"', '"+token+"', false)", pgx.QueryExecModeSimpleProtocol); err != nil {
		return p, fmt.Errorf("probing the pooler: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), Marker+"RESET "+probe, pgx.QueryExecModeSimpleProtocol)
	}()
	cfg, err := ParseConfig(opts)
	if err != nil {
		return p, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	other, err := connectConfig(ctx, cfg)
	if err != nil {
		return p, err
	}
	defer other.Close(context.WithoutCancel(ctx))
	var seen *string
	if err := other.QueryRow(ctx, Marker+"SELECT pg_catalog.current_setting('"+probe+"', true)").Scan(&seen); err != nil {
		return p, fmt.Errorf("probing the pooler: %w", err)
	}
	if seen != nil && *seen == token {
		p.Transaction = true
		p.Detail += "; a setting made in one session showed in another: transaction pooling"
	}
	return p, nil
}

// RequireSession refuses a transaction pooler (ErrTransactionPooler) for a
// command that needs a session of its own.
func RequireSession(ctx context.Context, conn *pgx.Conn, opts Options) error {
	p, err := DetectPooling(ctx, conn, opts)
	if err != nil {
		return err
	}
	if p.Transaction {
		return ErrTransactionPooler
	}
	return nil
}
