// Package lint is spiredb's migration safety linter: it parses migration
// SQL with pg_query (PostgreSQL's own parser) and reports what would lock,
// rewrite or break a live SPIRE database, each finding with the safe
// rewrite. It knows SPIRE's schema (from the schema a real spire-server
// created) and, given a catalog, weighs lock findings by table size.
package lint

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Severities, from the most to the least serious.
const (
	Error   = "error"
	Warning = "warning"
	Note    = "note"
)

// SeverityRank orders severities: higher is more serious.
func SeverityRank(s string) int {
	switch s {
	case Error:
		return 3
	case Warning:
		return 2
	case Note:
		return 1
	}
	return 0
}

// Finding is one problem in a migration.
type Finding struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Column   int    `json:"column"`
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	Message  string `json:"message"`
	Fix      string `json:"fix"`
}

// File is one migration to lint.
type File struct {
	Name string
	SQL  string
}

// Options shape the lint.
type Options struct {
	// PGVersion is the target server's major version (13-18); 0 is 15.
	PGVersion int
	// RunnerSetsLockTimeout: the files run through spiredb's migration
	// runner, which sets lock_timeout on its session (lock-taking DDL needs
	// no SET of its own) and runs a file in one transaction unless its
	// first line is NoTransaction. Off for files another tool runs.
	RunnerSetsLockTimeout bool
	// Catalog, when set, is the live database: tables, columns and
	// indexes are resolved against it and lock findings weighed by size.
	Catalog *Catalog
}

// Catalog is what the linter reads from a live database.
type Catalog struct {
	// Tables maps table name to its estimated rows, columns and indexes.
	Tables map[string]*Table
	// MatviewUniqueIndex lists materialized views with a plain unique index.
	MatviewUniqueIndex map[string]bool
}

// Table is one live table.
type Table struct {
	Rows    int64
	Columns map[string]string
	Indexes []CatalogIndex
}

// CatalogIndex is one live index.
type CatalogIndex struct {
	Name string
	Keys []string
}

// ParseError is a file pg_query cannot parse.
type ParseError struct {
	File string
	Err  error
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s: %v", e.File, e.Err) }

// statement is one parsed statement with its position and context.
type statement struct {
	node *pg_query.Node
	text string
	line int
	col  int
	// inTx: inside an explicit BEGIN ... COMMIT, or in a multi-statement
	// file (a file is sent as one query string: an implicit transaction)
	inTx      bool
	multiStmt bool
	// runnerTx: spiredb's runner runs the file in one transaction
	runnerTx bool
	ignore   map[string]bool
}

// HasNoTransaction reports whether a migration file starts with the
// NoTransaction directive (after blank lines), as spiredb's runner decides.
func HasNoTransaction(sql string) bool {
	return strings.HasPrefix(strings.TrimSpace(sql), NoTransaction)
}

// NoTransaction is the first line that makes spiredb's runner run the
// file statement by statement outside a transaction (migrations.NoTransaction
// is the same directive).
const NoTransaction = "-- spiredb:no-transaction"

var ignoreRE = regexp.MustCompile(`--\s*spiredb:ignore\s+([a-z0-9-]+)`)

// Lint checks files and returns the findings sorted by file and position.
// A file that does not parse is a *ParseError.
func Lint(files []File, opts Options) ([]Finding, error) {
	if opts.PGVersion == 0 {
		opts.PGVersion = 15
	}
	spire, err := loadSpire()
	if err != nil {
		return nil, err
	}
	l := &linter{opts: opts, spire: spire, createdTables: map[string]bool{}, uniqueIndexedViews: map[string]bool{},
		validatedNotNull: map[string]bool{}, fileColumns: map[string]map[string]bool{}}
	// views and tables a set of files creates are known to the others
	var parsed [][]statement
	for _, f := range files {
		stmts, err := split(f, opts.RunnerSetsLockTimeout)
		if err != nil {
			return nil, &ParseError{File: f.Name, Err: err}
		}
		parsed = append(parsed, stmts)
		for _, s := range stmts {
			l.learn(s)
		}
	}
	var out []Finding
	for i, f := range files {
		l.lockTimeoutSet = false
		for _, s := range parsed[i] {
			for _, fd := range l.check(s) {
				if s.ignore[fd.Rule] {
					continue
				}
				fd.File, fd.Line, fd.Column = f.Name, s.line, s.col
				out = append(out, fd)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return out, nil
}

// split parses a file into statements with line and column of their first
// token, whether each runs in a transaction, and the rules silenced by a
// `-- spiredb:ignore RULE reason` comment on the line before.
//
// Whether a statement runs in a transaction depends on who runs the file. A
// file that starts with NoTransaction runs statement by statement (only an
// explicit BEGIN ... COMMIT makes a transaction). Otherwise spiredb's runner
// (runner) wraps the whole file in one transaction, and another tool sends
// a file of several statements as one query string: an implicit
// transaction.
func split(f File, runner bool) ([]statement, error) {
	res, err := pg_query.Parse(f.SQL)
	if err != nil {
		return nil, err
	}
	src := f.SQL
	noTx := HasNoTransaction(src)
	multi := len(res.Stmts) > 1 && !noTx
	var out []statement
	inExplicit := false
	for _, raw := range res.Stmts {
		start := int(raw.StmtLocation)
		end := len(src)
		if raw.StmtLen > 0 {
			end = start + int(raw.StmtLen)
		}
		if start > len(src) || end > len(src) || start > end {
			continue
		}
		// the first token: skip blanks and comments the location includes
		tok := start + firstToken(src[start:end])
		line := 1 + strings.Count(src[:tok], "\n")
		col := tok - strings.LastIndex(src[:tok], "\n")
		s := statement{node: raw.Stmt, text: src[start:end], line: line, col: col, multiStmt: multi, ignore: map[string]bool{}}
		lines := strings.Split(src[:tok], "\n")
		if len(lines) >= 2 {
			for _, m := range ignoreRE.FindAllStringSubmatch(lines[len(lines)-2], -1) {
				s.ignore[m[1]] = true
			}
		}
		if ts := raw.Stmt.GetTransactionStmt(); ts != nil {
			switch ts.Kind {
			case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
				inExplicit = true
			case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
				inExplicit = false
			}
		}
		s.inTx = inExplicit || multi || (runner && !noTx)
		s.runnerTx = runner && !noTx
		out = append(out, s)
	}
	return out, nil
}

// firstToken is the offset of the first character that is neither blank
// nor part of a comment.
func firstToken(s string) int {
	i := 0
	for i < len(s) {
		switch {
		case s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r':
			i++
		case strings.HasPrefix(s[i:], "--"):
			j := strings.IndexByte(s[i:], '\n')
			if j < 0 {
				return len(s)
			}
			i += j + 1
		case strings.HasPrefix(s[i:], "/*"):
			j := strings.Index(s[i:], "*/")
			if j < 0 {
				return len(s)
			}
			i += j + 2
		default:
			return i
		}
	}
	return i
}
