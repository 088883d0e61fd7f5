package backup

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgprog"
)

// Tools says where the PostgreSQL client programs (pg_dump, pg_restore)
// are.
type Tools struct {
	// BinDir, when set, is the only place looked at; empty means Debian's
	// /usr/lib/postgresql/MAJOR/bin, $PATH and pg_config --bindir.
	BinDir string
}

// dumper finds a pg_dump that can dump a server of serverVersionNum: its
// major, or newer.
func (t Tools) dumper(ctx context.Context, serverVersionNum int) (*pgprog.Program, error) {
	serverMajor := serverVersionNum / 10000
	p, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_dump", BinDir: t.BinDir, Major: serverMajor, Match: pgprog.AtLeast})
	if err == nil {
		return p, nil
	}
	// an older one is there: say exactly what to install
	if old, oerr := pgprog.Find(ctx, pgprog.Request{Name: "pg_dump", BinDir: t.BinDir}); oerr == nil {
		if verr := CheckDumpVersion(old.Major, serverVersionNum); verr != nil {
			return nil, verr
		}
	}
	return nil, err
}

// restorer finds a pg_restore for a target server of targetVersionNum
// (0: any, for --list): the target's own major first, else the newest
// there is, refused up front when it cannot restore into the target.
func (t Tools) restorer(ctx context.Context, targetVersionNum int) (*pgprog.Program, error) {
	if targetVersionNum > 0 {
		if p, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_restore", BinDir: t.BinDir, Major: targetVersionNum / 10000, Match: pgprog.Exact}); err == nil {
			return p, nil
		}
	}
	p, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_restore", BinDir: t.BinDir})
	if err != nil {
		return nil, err
	}
	if targetVersionNum > 0 {
		if err := CheckRestoreVersion(p.Major, targetVersionNum); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// CheckRestoreVersion refuses a pg_restore that cannot restore into a
// server of targetVersionNum: from 17 on, pg_restore starts every session
// with SET transaction_timeout = 0, which older servers reject (measured
// with pg_restore 17.12 into 15).
func CheckRestoreVersion(restoreMajor, targetVersionNum int) error {
	target := targetVersionNum / 10000
	if restoreMajor >= 17 && target < 17 {
		return fmt.Errorf("pg_restore %d cannot restore into PostgreSQL %d (it sets transaction_timeout, new in 17): install postgresql-client-%d and pass --pg-bin /usr/lib/postgresql/%d/bin",
			restoreMajor, target, target, target)
	}
	return nil
}

// CheckDumpVersion refuses a pg_dump older than the server: it cannot dump
// a newer server's catalog.
func CheckDumpVersion(dumpMajor, serverVersionNum int) error {
	serverMajor := serverVersionNum / 10000
	if dumpMajor < serverMajor {
		return fmt.Errorf("pg_dump %d is older than the server (PostgreSQL %d): install postgresql-client-%d and pass --pg-bin /usr/lib/postgresql/%d/bin",
			dumpMajor, serverMajor, serverMajor, serverMajor)
	}
	return nil
}

// serverVersionNum is conn's server_version_num (0 when unknown), from the
// server_version it reported at start-up.
func serverVersionNum(conn *pgx.Conn) int {
	v := conn.PgConn().ParameterStatus("server_version")
	major, rest, _ := strings.Cut(v, ".")
	maj, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	minor, _ := strconv.Atoi(strings.TrimFunc(strings.SplitN(rest, " ", 2)[0], func(r rune) bool { return r < '0' || r > '9' }))
	return maj*10000 + minor
}
