package tuning

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
)

// Marker begins every statement spiredb sends (pg.Marker); rows whose text
// contains it are spiredb's own and are left out of every report.
// (pg_stat_statements records neither application_name nor the session, so
// a comment is the only mark that survives into the view.)
const Marker = pg.Marker

// Statement is one pg_stat_statements row (a user, a query id, top-level).
// Times are milliseconds.
type Statement struct {
	UserID      uint32  `json:"userid"`
	QueryID     int64   `json:"queryid"`
	Query       string  `json:"query"`
	Calls       int64   `json:"calls"`
	ExecMs      float64 `json:"exec_ms"`
	PlanMs      float64 `json:"plan_ms"`
	Rows        int64   `json:"rows"`
	SharedHit   int64   `json:"shared_blks_hit"`
	SharedRead  int64   `json:"shared_blks_read"`
	TempRead    int64   `json:"temp_blks_read"`
	TempWritten int64   `json:"temp_blks_written"`
	// IOMs is block read and write time: zero unless track_io_timing is on.
	IOMs float64 `json:"io_ms"`
	// StatsSince is when this row started counting (PostgreSQL 17+).
	StatsSince *time.Time `json:"stats_since,omitempty"`
}

// TotalMs is execution plus planning time (planning is counted only with
// pg_stat_statements.track_planning).
func (s Statement) TotalMs() float64 { return s.ExecMs + s.PlanMs }

// Source describes where and how statements were read.
type Source struct {
	Database         string `json:"database"`
	ServerVersion    string `json:"server_version"`
	ServerVersionNum int    `json:"server_version_num"`
	Extension        string `json:"extension_version"`
	// StatsReset is the last full reset (pg_stat_statements_info, PG14+).
	StatsReset *time.Time `json:"stats_reset,omitempty"`
	// Deallocated counts rows evicted because pg_stat_statements.max was
	// reached since the last reset: statistics are then incomplete.
	Deallocated int64 `json:"deallocated"`
	Max         int64 `json:"max"`
	// Hidden counts rows of other users whose text this role may not read
	// (it lacks pg_read_all_stats).
	Hidden        int  `json:"hidden"`
	Excluded      int  `json:"excluded"`
	TrackIOTiming bool `json:"track_io_timing"`
	TrackPlanning bool `json:"track_planning"`
}

// NotEnabledError says pg_stat_statements cannot be read and how to fix it.
type NotEnabledError struct {
	Database  string
	Preloaded bool
	Created   bool
}

func (e *NotEnabledError) Error() string {
	switch {
	case e.Preloaded && !e.Created:
		return fmt.Sprintf("pg_stat_statements is loaded but not created in database %q: run CREATE EXTENSION pg_stat_statements; in it (as a superuser or the database owner)", e.Database)
	case e.Created && !e.Preloaded:
		return "pg_stat_statements is created but not loaded: add it to shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', keeping any library already listed) and restart PostgreSQL"
	}
	return fmt.Sprintf("pg_stat_statements is not enabled: add it to shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', keeping any library already listed), restart PostgreSQL, then run CREATE EXTENSION pg_stat_statements; in database %q", e.Database)
}

// extension finds pg_stat_statements: its schema and version, and whether
// the library is preloaded.
func extension(ctx context.Context, conn *pgx.Conn) (schema, version string, err error) {
	var db, preload string
	var nsp, ver *string
	err = conn.QueryRow(ctx, Marker+`SELECT pg_catalog.current_database(), pg_catalog.current_setting('shared_preload_libraries'),
		(SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'),
		(SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements')`).Scan(&db, &preload, &nsp, &ver)
	if err != nil {
		return "", "", err
	}
	preloaded := false
	for _, lib := range strings.Split(preload, ",") {
		if strings.Trim(strings.TrimSpace(lib), `"`) == "pg_stat_statements" {
			preloaded = true
		}
	}
	if nsp == nil || !preloaded {
		return "", "", &NotEnabledError{Database: db, Preloaded: preloaded, Created: nsp != nil}
	}
	return *nsp, *ver, nil
}

// selectList maps the view's columns, which changed across extension
// versions, to the fields of Statement:
//
//	1.8 (PostgreSQL 13)  total_time → total_exec_time, total_plan_time, wal_*
//	1.9 (14)             toplevel, pg_stat_statements_info
//	1.10 (15, 16)        temp_blk_read_time, temp_blk_write_time, jit_*
//	1.11 (17)            blk_*_time → shared_blk_*_time, local_blk_*_time, stats_since
//	1.12 (18)            wal_buffers_full, parallel_workers_*
//
// Columns it does not know are ignored, so a later version keeps working.
func selectList(cols map[string]bool) (sel, where string, err error) {
	for _, c := range []string{"userid", "dbid", "queryid", "query", "calls", "rows", "shared_blks_hit", "shared_blks_read", "temp_blks_read", "temp_blks_written"} {
		if !cols[c] {
			return "", "", fmt.Errorf("pg_stat_statements has no column %s: unsupported extension version", c)
		}
	}
	exec := "total_exec_time"
	if !cols[exec] {
		if !cols["total_time"] {
			return "", "", errors.New("pg_stat_statements has neither total_exec_time nor total_time: unsupported extension version")
		}
		exec = "total_time" // before PostgreSQL 13
	}
	plan := "0::float8"
	if cols["total_plan_time"] {
		plan = "total_plan_time"
	}
	var io []string
	for _, c := range []string{"blk_read_time", "blk_write_time", "shared_blk_read_time", "shared_blk_write_time", "local_blk_read_time", "local_blk_write_time", "temp_blk_read_time", "temp_blk_write_time"} {
		if cols[c] {
			io = append(io, c)
		}
	}
	ioExpr := "0::float8"
	if len(io) > 0 {
		ioExpr = strings.Join(io, " + ")
	}
	since := "NULL::timestamptz"
	if cols["stats_since"] {
		since = "stats_since"
	}
	sel = fmt.Sprintf("userid, COALESCE(queryid, 0), COALESCE(query, ''), calls, %s, %s, rows, shared_blks_hit, shared_blks_read, temp_blks_read, temp_blks_written, %s, %s",
		exec, plan, ioExpr, since)
	where = "dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"
	if cols["toplevel"] {
		// with pg_stat_statements.track = all, nested statements are
		// counted again inside their caller's time
		where += " AND toplevel"
	}
	return sel, where, nil
}

// redactQuery masks the literals of a statement text that can carry a
// secret: before PostgreSQL 16 the text of a utility statement is stored
// verbatim. Masked: the literal after PASSWORD (ALTER ROLE, a user
// mapping's or a server's OPTIONS), after PROGRAM (COPY), and the value a
// SET gives a setting that holds a command, a connection string or a key
// (ALTER SYSTEM SET archive_command, primary_conninfo,
// ssl_passphrase_command, a custom *.token). The scanner finds them in
// every quoting form ('…', E'…', U&'…' UESCAPE, $$…$$, $tag$…$tag$); a text
// it cannot scan (cut short by track_activity_query_size) is masked from
// the first such place on. Then every password-looking part left (a
// connection string in a dblink call, an AWS secret) is masked too.
func redactQuery(q string) string {
	upper := strings.ToUpper(q)
	if !strings.Contains(upper, "PASSWORD") && !strings.Contains(upper, "PROGRAM") && !strings.Contains(upper, "SET") {
		return dsn.RedactText(q)
	}
	res, err := pg_query.Scan(q)
	if err != nil {
		if loc := secretPlace.FindStringIndex(q); loc != nil {
			return q[:loc[1]] + " '*****'"
		}
		return dsn.RedactText(q)
	}
	var b strings.Builder
	last := 0
	toks := res.Tokens
	mask := func(lit int) int {
		end := int(toks[lit].End)
		next := lit + 1
		// U&'…' UESCAPE '!': the escape character is not the secret, but
		// it belongs to the literal
		if lit+2 < len(toks) && toks[lit+1].Token == pg_query.Token_UESCAPE && toks[lit+2].Token == pg_query.Token_SCONST {
			end, next = int(toks[lit+2].End), lit+3
		}
		b.WriteString(q[last:toks[lit].Start])
		b.WriteString("'*****'")
		last = end
		return next
	}
	isLiteral := func(i int) bool {
		return i < len(toks) && (toks[i].Token == pg_query.Token_SCONST || toks[i].Token == pg_query.Token_USCONST)
	}
	for i := 0; i < len(toks); i++ {
		switch toks[i].Token {
		case pg_query.Token_PASSWORD, pg_query.Token_PROGRAM:
			if isLiteral(i + 1) {
				i = mask(i+1) - 1
			}
		case pg_query.Token_SET:
			// SET name [= | TO] 'value' [, 'value' …]
			j, name := i+1, ""
			for ; j < len(toks) && j < i+8; j++ {
				if t := toks[j].Token; t == pg_query.Token_ASCII_61 || t == pg_query.Token_TO || isLiteral(j) || t == pg_query.Token_ASCII_59 {
					break
				}
				name += strings.ToLower(strings.Trim(q[toks[j].Start:toks[j].End], `"`))
			}
			if j+1 >= len(toks) || !secretSetting.MatchString(name) || (toks[j].Token != pg_query.Token_ASCII_61 && toks[j].Token != pg_query.Token_TO) {
				continue
			}
			for k := j + 1; isLiteral(k); {
				k = mask(k)
				if k+1 < len(toks) && toks[k].Token == pg_query.Token_ASCII_44 {
					k++
					continue
				}
				i = k - 1
				break
			}
		}
	}
	b.WriteString(q[last:])
	return dsn.RedactText(b.String())
}

// secretSetting matches the names of settings whose values can carry a
// secret: commands (archive_command, restore_command,
// ssl_passphrase_command, …), connection strings and keys.
var secretSetting = regexp.MustCompile(`command|conninfo|password|passphrase|secret|token|key`)

// secretPlace finds, in a text the scanner cannot read, the first place a
// secret literal can follow.
var secretPlace = regexp.MustCompile(`(?i)\bpassword\b|\bprogram\b|\bset\s+[a-z0-9_."]*(?:command|conninfo|password|passphrase|secret|token|key)[a-z0-9_."]*\s*(?:=|\bto\b)`)

// ReadStatements reads pg_stat_statements for the connected database,
// leaving out spiredb's own statements and rows whose text is hidden from
// this role (both counted in Source).
func ReadStatements(ctx context.Context, conn *pgx.Conn) ([]Statement, Source, error) {
	var src Source
	schema, version, err := extension(ctx, conn)
	if err != nil {
		return nil, src, err
	}
	src.Extension = version
	view := pgx.Identifier{schema, "pg_stat_statements"}.Sanitize()
	err = conn.QueryRow(ctx, Marker+`SELECT pg_catalog.current_database(), pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_version_num')::int,
		pg_catalog.current_setting('track_io_timing') = 'on',
		COALESCE(pg_catalog.current_setting('pg_stat_statements.track_planning', true) = 'on', false),
		COALESCE(pg_catalog.current_setting('pg_stat_statements.max', true), '0')::int8`).
		Scan(&src.Database, &src.ServerVersion, &src.ServerVersionNum, &src.TrackIOTiming, &src.TrackPlanning, &src.Max)
	if err != nil {
		return nil, src, err
	}
	rows, err := conn.Query(ctx, Marker+`SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, view)
	if err != nil {
		return nil, src, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, src, err
	}
	cols := make(map[string]bool, len(names))
	for _, n := range names {
		cols[n] = true
	}
	if cols["toplevel"] {
		// pg_stat_statements_info exists from 1.9 (PostgreSQL 14)
		info := pgx.Identifier{schema, "pg_stat_statements_info"}.Sanitize()
		if err := conn.QueryRow(ctx, Marker+"SELECT stats_reset, dealloc FROM "+info).Scan(&src.StatsReset, &src.Deallocated); err != nil {
			return nil, src, fmt.Errorf("reading pg_stat_statements_info: %w", err)
		}
	}
	sel, where, err := selectList(cols)
	if err != nil {
		return nil, src, err
	}
	rows, err = conn.Query(ctx, Marker+"SELECT "+sel+" FROM "+view+" WHERE "+where)
	if err != nil {
		return nil, src, fmt.Errorf("reading pg_stat_statements: %w", err)
	}
	defer rows.Close()
	var out []Statement
	for rows.Next() {
		var s Statement
		if err := rows.Scan(&s.UserID, &s.QueryID, &s.Query, &s.Calls, &s.ExecMs, &s.PlanMs, &s.Rows,
			&s.SharedHit, &s.SharedRead, &s.TempRead, &s.TempWritten, &s.IOMs, &s.StatsSince); err != nil {
			return nil, src, err
		}
		switch {
		case strings.Contains(s.Query, Marker):
			src.Excluded++
			continue
		case s.Query == "<insufficient privilege>":
			src.Hidden++
			continue
		}
		s.Query = redactQuery(s.Query)
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, src, fmt.Errorf("reading pg_stat_statements: %w", err)
	}
	slices.SortFunc(out, compareKey)
	return out, src, nil
}

// compareKey orders statements by (userid, queryid), the identity a diff
// matches rows on.
func compareKey(a, b Statement) int {
	if a.UserID != b.UserID {
		if a.UserID < b.UserID {
			return -1
		}
		return 1
	}
	switch {
	case a.QueryID < b.QueryID:
		return -1
	case a.QueryID > b.QueryID:
		return 1
	}
	return 0
}

// Reset clears pg_stat_statements for the connected database, or for every
// database when all is set.
func Reset(ctx context.Context, conn *pgx.Conn, all bool) error {
	schema, _, err := extension(ctx, conn)
	if err != nil {
		return err
	}
	fn := pgx.Identifier{schema, "pg_stat_statements_reset"}.Sanitize()
	q := Marker + "SELECT " + fn + "()"
	if !all {
		// (userid, dbid, queryid) with 0 meaning any: PostgreSQL 12+
		q = Marker + "SELECT " + fn + "(0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()), 0)"
	}
	if _, err := conn.Exec(ctx, q); err != nil {
		return fmt.Errorf("resetting pg_stat_statements: %w (a superuser, or GRANT EXECUTE ON FUNCTION pg_stat_statements_reset to this role)", err)
	}
	return nil
}
