package backup

import (
	"context"
	"fmt"

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

// restorer finds pg_restore.
func (t Tools) restorer(ctx context.Context) (*pgprog.Program, error) {
	return pgprog.Find(ctx, pgprog.Request{Name: "pg_restore", BinDir: t.BinDir})
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
