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

// leaveOut decides which monitoring extensions of the dump the target
// cannot take and returns the pg_restore arguments that leave them out
// (none when nothing must be), with a cleanup.
func leaveOut(ctx context.Context, s Store, m *Manifest, restorer, path, tempDir string, target *pgx.Conn) ([]string, []string, func(), error) {
	toc, err := readTOC(ctx, s, m, restorer, path)
	if err != nil {
		return nil, nil, func() {}, err
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
