package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// monitoringExtensions hold no SPIRE data: a restore may leave one out
// when the target role cannot create it (a managed service's role is no
// superuser, and pg_stat_statements is not a trusted extension).
var monitoringExtensions = []string{
	"amcheck", "hypopg", "pageinspect", "pg_buffercache", "pg_prewarm", "pg_qualstats", "pg_stat_kcache",
	"pg_stat_statements", "pg_visibility", "pg_wait_sampling", "pgstattuple",
}

// tocExtensionRE matches pg_restore --list's lines for an extension and
// its comment: "224; 3079 16385 EXTENSION - pg_stat_statements",
// "4321; 0 0 COMMENT - EXTENSION pg_stat_statements".
var tocExtensionRE = regexp.MustCompile(`^\d+; \d+ \d+ (?:EXTENSION - |COMMENT - EXTENSION )(\S+)`)

// errTOCRead stops the download behind pg_restore --list once it is done.
var errTOCRead = errors.New("table of contents read")

// readTOC returns the dump's table of contents (pg_restore --list),
// reading the dump from path, or from the store when path is empty (the
// download stops when pg_restore has read what it needs).
func readTOC(ctx context.Context, s Store, m *Manifest, restorer, path string) (string, error) {
	stderr := pgprog.NewOutput(nil, "pg_restore")
	if path != "" {
		out, err := pgprog.Command(ctx, restorer, nil, nil, stderr, "--list", path).Output()
		if err != nil {
			return "", fmt.Errorf("pg_restore --list: %w: %s", err, stderr.Tail())
		}
		return string(out), nil
	}
	rc, err := s.Get(ctx, dumpKey(m.ID))
	if err != nil {
		return "", err
	}
	defer rc.Close()
	pr, pw := io.Pipe()
	go func() {
		dec, err := decodedReader(m, rc)
		if err == nil {
			_, err = io.Copy(pw, dec)
			dec.Close()
		}
		pw.CloseWithError(err)
	}()
	cmd := pgprog.Command(ctx, restorer, nil, nil, stderr, "--list")
	cmd.Stdin = pr
	out, err := cmd.Output()
	pr.CloseWithError(errTOCRead)
	if err != nil {
		return "", fmt.Errorf("pg_restore --list: %w: %s", err, stderr.Tail())
	}
	return string(out), nil
}

// uncreatable returns the monitoring extensions of toc that the role of
// conn finds neither created in its database nor can create there.
func uncreatable(ctx context.Context, conn *pgx.Conn, toc string) ([]string, error) {
	var out []string
	for _, line := range strings.Split(toc, "\n") {
		m := tocExtensionRE.FindStringSubmatch(line)
		if m == nil || !slices.Contains(monitoringExtensions, m[1]) || slices.Contains(out, m[1]) {
			continue
		}
		var ok bool
		err := conn.QueryRow(ctx, pg.Marker+`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1)
			OR EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = $1) AND (
			   (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
			   OR coalesce((SELECT bool_or(trusted) FROM pg_catalog.pg_available_extension_versions WHERE name = $1), false)
			      AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'))`, m[1]).Scan(&ok)
		if err != nil {
			return nil, fmt.Errorf("checking extension %s: %w", m[1], err)
		}
		if !ok {
			out = append(out, m[1])
		}
	}
	return out, nil
}

// useList writes a pg_restore --use-list file: toc with the entries of the
// skipped extensions commented out. The caller removes it.
func useList(dir, toc string, skipped []string) (string, error) {
	var b strings.Builder
	for _, line := range strings.Split(toc, "\n") {
		if m := tocExtensionRE.FindStringSubmatch(line); m != nil && slices.Contains(skipped, m[1]) {
			b.WriteString(";")
		}
		b.WriteString(line + "\n")
	}
	f, err := os.CreateTemp(dir, "spiredb-toc-*.list")
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), f.Close()
}

// tocCodeRE matches pg_restore --list's lines for the dump's functions,
// procedures and aggregates (pg_proc's entries, class 1255): "217; 1255
// 16402 FUNCTION public f(integer, text) mallory". An extension's are not
// in the dump, only its CREATE EXTENSION.
var tocCodeRE = regexp.MustCompile(`^\d+; 1255 \d+ \S+ (\S+) (.+) \S+$`)

// backupCode lists the dump's own functions, procedures and aggregates.
func backupCode(toc string) []string {
	var out []string
	for _, line := range strings.Split(toc, "\n") {
		if m := tocCodeRE.FindStringSubmatch(line); m != nil {
			out = append(out, m[1]+"."+m[2])
		}
	}
	return out
}

// refuseCodeAsPrivileged refuses a scratch restore that would run the
// dump's own code (an expression index's or a constraint's function, a
// view's) as a role with more power than a scratch database needs:
// whoever could create functions in SPIRE's database would borrow it.
func refuseCodeAsPrivileged(ctx context.Context, conn *pgx.Conn, toc string) error {
	code := backupCode(toc)
	if len(code) == 0 {
		return nil
	}
	var role string
	var powers []string
	err := conn.QueryRow(ctx, pg.Marker+`SELECT current_user::text, pg_catalog.array_remove(ARRAY[
		CASE WHEN r.rolsuper THEN 'is a superuser' END,
		CASE WHEN r.rolcreaterole THEN 'has CREATEROLE' END,
		CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_execute_server_program', 'USAGE') THEN 'has pg_execute_server_program' END,
		CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_write_server_files', 'USAGE') THEN 'has pg_write_server_files' END,
		CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'USAGE') THEN 'has pg_read_server_files' END,
		CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_signal_backend', 'USAGE') THEN 'has pg_signal_backend' END], NULL)
		FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`).Scan(&role, &powers)
	if err != nil {
		return fmt.Errorf("reading the scratch role's privileges: %w", err)
	}
	if len(powers) == 0 {
		return nil
	}
	shown := code
	if len(shown) > 5 {
		shown = append(shown[:5:5], fmt.Sprintf("… %d in all", len(code)))
	}
	return fmt.Errorf("the backup holds functions (%s) that a restore runs (index expressions, constraints, views) as the restoring role, and scratch role %s %s: give --scratch-dsn a role that is not a superuser, with CREATEDB and nothing more",
		strings.Join(shown, ", "), role, strings.Join(powers, ", "))
}

// leaveOut decides which monitoring extensions of the dump the target
// cannot take and returns the pg_restore arguments that leave them out
// (none when nothing must be), with a cleanup. With scratch, the target is
// a scratch database, and a restore that would run the dump's code with
// more than a scratch role's privileges is refused.
func leaveOut(ctx context.Context, s Store, m *Manifest, restorer, path, tempDir string, target *pgx.Conn, scratch bool) ([]string, []string, func(), error) {
	toc, err := readTOC(ctx, s, m, restorer, path)
	if err != nil {
		return nil, nil, func() {}, err
	}
	if scratch {
		if err := refuseCodeAsPrivileged(ctx, target, toc); err != nil {
			return nil, nil, func() {}, err
		}
	}
	skipped, err := uncreatable(ctx, target, toc)
	if err != nil || len(skipped) == 0 {
		return nil, nil, func() {}, err
	}
	list, err := useList(tempDir, toc, skipped)
	if err != nil {
		return nil, nil, func() {}, err
	}
	return skipped, []string{"--use-list=" + list}, func() { _ = os.Remove(list) }, nil
}

// leftOutDetail says what a restore left out and why.
func leftOutDetail(skipped []string) string {
	return fmt.Sprintf("left out %s: the role can neither find nor create it in the target (monitoring only, no SPIRE data; a superuser can CREATE EXTENSION it afterwards)",
		strings.Join(skipped, ", "))
}
