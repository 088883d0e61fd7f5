package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
)

// PrimaryAnswersError is returned when a standby's receiver does not
// stream but a PostgreSQL server that accepts connections, and is not in
// recovery, answers at the address its primary_conninfo names. A receiver
// stops for reasons other than a dead primary (its slot dropped, a
// password changed, WAL it needs removed), and that primary may still
// take SPIRE's writes: promoting would make a second primary. Force
// overrides (a primary fenced, or known to take no writes).
type PrimaryAnswersError struct {
	// Upstream is host:port from primary_conninfo.
	Upstream string
	// Answer is what the server said: an error of its own (authentication,
	// a missing database), or "a primary" when spiredb could log in.
	Answer string
}

func (e *PrimaryAnswersError) Error() string {
	return fmt.Sprintf("refusing to promote: the standby does not stream, but its primary at %s still answers (%s), and promoting would make two primaries if it takes SPIRE's writes: stop it or cut it off, or pass --force once it is fenced (replica fence) or you know it takes none",
		e.Upstream, e.Answer)
}

// upstreamProbeTimeout bounds the probe of the primary's address: a host
// that is gone either refuses at once or never answers.
const upstreamProbeTimeout = 3 * time.Second

// probeUpstream asks the address in the standby's primary_conninfo
// whether a primary answers there, as pg_isready would, with the
// conninfo's own user and password (a passfile it names, spiredb's
// environment), TLS off so that a certificate path of the standby's host
// does not hide a live server. It returns a PrimaryAnswersError when a
// server accepts connections there and is not in recovery, or refuses
// spiredb for a reason of its own (authentication, pg_hba, a missing
// database: it is up). Nothing listening, a timeout, or a server starting
// up, shutting down or in recovery (57P03) is no primary. A setting it
// cannot read or parse is logged, and not held against the promotion.
func probeUpstream(ctx context.Context, conn *pgx.Conn, logger *slog.Logger) error {
	var conninfo string
	err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.current_setting('primary_conninfo')").Scan(&conninfo)
	if err != nil {
		if pg.SQLState(err) == "42501" {
			logger.Warn("cannot read primary_conninfo (superuser or pg_read_all_settings): not checking whether the old primary still answers", "err", err)
			return nil
		}
		return fmt.Errorf("reading primary_conninfo: %w", err)
	}
	if conninfo == "" {
		return nil
	}
	// TLS off before parsing: certificate files the conninfo names live on
	// the standby's host, and a server that insists on TLS still answers
	// (pg_hba refuses: it is up)
	params, err := dsn.Parse(conninfo)
	if err != nil {
		logger.Warn("cannot parse primary_conninfo: not checking whether the old primary still answers", "err", err)
		return nil
	}
	for k := range params {
		if strings.HasPrefix(k, "ssl") || k == "requiressl" || k == "gssencmode" {
			delete(params, k)
		}
	}
	params["sslmode"], params["gssencmode"] = "disable", "disable"
	cfg, err := pgconn.ParseConfig(params.String())
	if err != nil {
		logger.Warn("cannot parse primary_conninfo: not checking whether the old primary still answers", "err", err)
		return nil
	}
	cfg.Database = "postgres"
	cfg.ConnectTimeout = upstreamProbeTimeout
	// not the standby's own name: the primary's monitoring tells them apart
	cfg.RuntimeParams["application_name"] = "spiredb-promote-probe"
	upstream := net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	pctx, cancel := context.WithTimeout(ctx, upstreamProbeTimeout)
	defer cancel()
	c, err := pgconn.ConnectConfig(pctx, cfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code != "57P03" {
			return &PrimaryAnswersError{Upstream: upstream, Answer: pe.Severity + ": " + pe.Message}
		}
		logger.Debug("the old primary does not answer", "upstream", upstream, "err", err)
		return nil
	}
	defer func() { _ = c.Close(context.WithoutCancel(ctx)) }()
	res := c.ExecParams(pctx, "SELECT pg_catalog.pg_is_in_recovery()::text", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return &PrimaryAnswersError{Upstream: upstream, Answer: "it accepts connections: " + res.Err.Error()}
	}
	if len(res.Rows) == 1 && string(res.Rows[0][0]) == "true" {
		logger.Debug("the old primary's address answers as a standby", "upstream", upstream)
		return nil
	}
	return &PrimaryAnswersError{Upstream: upstream, Answer: "a primary: it accepts connections and is not in recovery"}
}
