package backup

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
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

// restorer finds a pg_restore for backup m and a target server of
// targetVersionNum (0: none, for --list). It must read m's archive (its
// pg_dump's major or newer) and be able to restore into the target: the
// target's own major first, else the nearest that reads the archive;
// refused up front, in one line naming the fix, when none can.
func (t Tools) restorer(ctx context.Context, m *Manifest, targetVersionNum int) (*pgprog.Program, error) {
	dumpMajor := dumpMajorOf(m)
	target := targetVersionNum / 10000
	if dumpMajor >= 17 && target > 0 && target < 17 {
		return nil, fmt.Errorf("backup %s was made by pg_dump %d, whose archives only pg_restore %d or newer reads, and those cannot restore into PostgreSQL %d (they set transaction_timeout): restore into a PostgreSQL %d or newer server, or take backups of this server with pg_dump %d (--pg-bin /usr/lib/postgresql/%d/bin)",
			m.ID, dumpMajor, dumpMajor, target, 17, target, target)
	}
	if target > 0 && target >= dumpMajor {
		if p, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_restore", BinDir: t.BinDir, Major: target, Match: pgprog.Exact}); err == nil {
			return p, nil
		}
	}
	req := pgprog.Request{Name: "pg_restore", BinDir: t.BinDir}
	if dumpMajor > 0 {
		req.Major, req.Match = dumpMajor, pgprog.AtLeast
	}
	p, err := pgprog.Find(ctx, req)
	if err != nil {
		if dumpMajor > 0 {
			if old, oerr := pgprog.Find(ctx, pgprog.Request{Name: "pg_restore", BinDir: t.BinDir}); oerr == nil {
				return nil, fmt.Errorf("backup %s was made by pg_dump %d, and pg_restore %d cannot read its archive: install postgresql-client-%d and pass --pg-bin /usr/lib/postgresql/%d/bin",
					m.ID, dumpMajor, old.Major, dumpMajor, dumpMajor)
			}
		}
		return nil, err
	}
	if targetVersionNum > 0 {
		if err := CheckRestoreVersion(p.Major, targetVersionNum); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// dumpMajorOf is the major of the pg_dump that made m (0 when unknown).
func dumpMajorOf(m *Manifest) int {
	if m == nil {
		return 0
	}
	major, _, _ := strings.Cut(m.PgDumpVersion, ".")
	n, _ := strconv.Atoi(major)
	return n
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

// serverVersionNum is conn's server_version_num, as backup run reads it.
func serverVersionNum(ctx context.Context, conn *pgx.Conn) (int, error) {
	var v int
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.current_setting('server_version_num')::int").Scan(&v); err != nil {
		return 0, fmt.Errorf("reading the target's version: %w", err)
	}
	return v, nil
}
