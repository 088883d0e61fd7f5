package lint

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Rule describes one check.
type Rule struct {
	ID       string `json:"id"`
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
}

// Rules lists every rule, with its default severity.
var Rules = []Rule{
	{"create-index-not-concurrently", Error, "CREATE INDEX without CONCURRENTLY blocks writes to the table for the whole build"},
	{"drop-index-not-concurrently", Warning, "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table"},
	{"reindex-not-concurrently", Error, "REINDEX without CONCURRENTLY blocks writes (and reads using the index) for the rebuild"},
	{"concurrently-in-transaction", Error, "CONCURRENTLY cannot run in a transaction block: the migration fails"},
	{"add-column-volatile-default", Error, "ADD COLUMN with a volatile default rewrites the table under ACCESS EXCLUSIVE"},
	{"add-column-not-null-no-default", Error, "ADD COLUMN NOT NULL without a default fails on a table with rows"},
	{"set-not-null", Error, "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE"},
	{"constraint-not-valid", Error, "ADD CHECK / FOREIGN KEY validates every row under a lock that blocks writes"},
	{"unique-without-using-index", Error, "ADD UNIQUE / PRIMARY KEY builds its index under ACCESS EXCLUSIVE"},
	{"alter-column-type", Error, "ALTER COLUMN TYPE rewrites the table (and its indexes) under ACCESS EXCLUSIVE"},
	{"vacuum-full", Error, "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"},
	{"cluster", Error, "CLUSTER rewrites the table under ACCESS EXCLUSIVE"},
	{"lock-table", Error, "LOCK TABLE in a migration blocks the table's traffic for the whole transaction"},
	{"truncate", Error, "TRUNCATE takes ACCESS EXCLUSIVE and deletes every row"},
	{"refresh-concurrently-needs-unique-index", Error, "REFRESH MATERIALIZED VIEW CONCURRENTLY needs a plain unique index on the view"},
	{"missing-lock-timeout", Warning, "lock-taking DDL without lock_timeout can queue behind a long transaction and block everything behind it"},
	{"update-delete-without-where", Error, "UPDATE/DELETE without WHERE touches every row in one transaction"},
	{"batch-in-one-transaction", Error, "a loop of UPDATE/DELETE in a DO block or function is one transaction: every row lock is held to the end"},
	{"offset-paging", Warning, "OFFSET paging rescans all skipped rows for every batch"},
	{"sleep-in-transaction", Error, "pg_sleep inside a transaction holds its locks while sleeping"},
	{"non-immutable-in-index", Error, "an index predicate or expression must be immutable (now(), random(), ... are not)"},
	{"rename", Error, "renaming a table or column breaks every running client that uses the old name"},
	{"spire-unknown-column", Error, "SPIRE's table has no such column"},
	{"spire-expiry-type", Error, "SPIRE's expiry columns are bigint unix seconds, not timestamps"},
	{"spire-duplicate-index", Warning, "SPIRE already creates an index with these leading columns"},
	{"spire-hot-table-lock", Error, "a strong lock on one of SPIRE's hot tables stalls every SPIRE server"},
	{"unknown-table", Warning, "the table does not exist in the database"},
	{"unknown-column", Warning, "the column does not exist in the database"},
	{"duplicate-index", Warning, "an index with these leading columns already exists in the database"},
	{"pgss-renamed-column", Error, "pg_stat_statements renamed total_time/mean_time to total_exec_time/mean_exec_time in PostgreSQL 13"},
}

func severityOf(rule string) string {
	for _, r := range Rules {
		if r.ID == rule {
			return r.Severity
		}
	}
	return Warning
}

type linter struct {
	opts               Options
	spire              *spireSchema
	createdTables      map[string]bool
	uniqueIndexedViews map[string]bool
	validatedNotNull   map[string]bool // table.column with a validated IS NOT NULL check in the files
	// fileColumns: columns the statements checked so far added (or renamed
	// to), by table; they exist for the statements after them
	fileColumns    map[string]map[string]bool
	lockTimeoutSet bool
}

// learn records what the files create, before any check: tables created in
// the files are new (no lock worries), views with their unique indexes.
func (l *linter) learn(s statement) {
	switch n := s.node.Node.(type) {
	case *pg_query.Node_CreateStmt:
		l.createdTables[n.CreateStmt.Relation.Relname] = true
	case *pg_query.Node_CreateTableAsStmt:
		if n.CreateTableAsStmt.Into != nil && n.CreateTableAsStmt.Into.Rel != nil {
			l.createdTables[n.CreateTableAsStmt.Into.Rel.Relname] = true
		}
	case *pg_query.Node_IndexStmt:
		ix := n.IndexStmt
		if ix.Unique && ix.WhereClause == nil && ix.Relation != nil && allPlainColumns(ix) {
			l.uniqueIndexedViews[ix.Relation.Relname] = true
		}
	case *pg_query.Node_AlterTableStmt:
		for _, c := range n.AlterTableStmt.Cmds {
			cmd := c.GetAlterTableCmd()
			if cmd != nil && cmd.Subtype == pg_query.AlterTableType_AT_ValidateConstraint {
				// VALIDATE CONSTRAINT x: assume it is the NOT NULL check
				l.validatedNotNull[n.AlterTableStmt.Relation.Relname+".*"] = true
			}
		}
	}
}

// learnColumns records the columns an ALTER TABLE adds, once it has been
// checked: the statements after it may name them.
func (l *linter) learnColumns(at *pg_query.AlterTableStmt) {
	for _, c := range at.Cmds {
		cmd := c.GetAlterTableCmd()
		if cmd == nil || cmd.Subtype != pg_query.AlterTableType_AT_AddColumn {
			continue
		}
		if cd := cmd.Def.GetColumnDef(); cd != nil {
			l.addFileColumn(at.Relation.Relname, cd.Colname)
		}
	}
}

func allPlainColumns(ix *pg_query.IndexStmt) bool {
	for _, p := range ix.IndexParams {
		if e := p.GetIndexElem(); e == nil || e.Name == "" {
			return false
		}
	}
	return true
}

func (l *linter) finding(rule, msg, fix string) Finding {
	return Finding{Rule: rule, Severity: severityOf(rule), Message: msg, Fix: fix}
}

// weigh lowers a lock finding's severity for a small table when the
// catalog says how big it is: a lock on 100 rows is a note, on 1M an error.
func (l *linter) weigh(f Finding, table string) Finding {
	if l.createdTables[table] {
		f.Severity = Note
		f.Message += " (the table is created in these migrations: empty, so harmless)"
		return f
	}
	if l.opts.Catalog == nil {
		return f
	}
	t, ok := l.opts.Catalog.Tables[table]
	if !ok {
		return f
	}
	switch {
	case t.Rows < 10_000:
		f.Severity = Note
	case t.Rows < 1_000_000:
		if f.Severity == Error {
			f.Severity = Warning
		}
	default:
		f.Severity = Error
	}
	f.Message += fmt.Sprintf(" (%s: about %d rows)", table, t.Rows)
	return f
}

func (l *linter) check(s statement) []Finding {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }
	switch n := s.node.Node.(type) {
	case *pg_query.Node_VariableSetStmt:
		if n.VariableSetStmt.Name == "lock_timeout" {
			l.lockTimeoutSet = true
		}
	case *pg_query.Node_IndexStmt:
		l.checkIndex(s, n.IndexStmt, add)
	case *pg_query.Node_DropStmt:
		d := n.DropStmt
		if d.RemoveType == pg_query.ObjectType_OBJECT_INDEX {
			if !d.Concurrent {
				add(l.finding("drop-index-not-concurrently", "DROP INDEX takes ACCESS EXCLUSIVE on its table until the transaction ends",
					"DROP INDEX CONCURRENTLY ... (alone in its migration: not in a transaction)"))
			} else if s.inTx {
				add(l.finding("concurrently-in-transaction", concurrentlyTxMessage(s), concurrentlyTxFixFor(s)))
			}
		}
	case *pg_query.Node_ReindexStmt:
		if !hasOption(n.ReindexStmt.Params, "concurrently") {
			f := l.finding("reindex-not-concurrently", "REINDEX blocks writes to the table, and reads that use the index, for the whole rebuild",
				"REINDEX INDEX CONCURRENTLY ... (PostgreSQL 12+, alone in its migration)")
			if n.ReindexStmt.Relation != nil {
				f = l.weigh(f, n.ReindexStmt.Relation.Relname)
			}
			add(f)
		} else if s.inTx {
			add(l.finding("concurrently-in-transaction", concurrentlyTxMessage(s), concurrentlyTxFixFor(s)))
		}
	case *pg_query.Node_AlterTableStmt:
		l.checkAlterTable(s, n.AlterTableStmt, add)
	case *pg_query.Node_VacuumStmt:
		if n.VacuumStmt.IsVacuumcmd && hasOption(n.VacuumStmt.Options, "full") {
			add(l.finding("vacuum-full", "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE: SPIRE's queries on it wait for the whole rewrite",
				"plain VACUUM (no lock on reads or writes); to shrink a bloated table online use pg_repack"))
		}
	case *pg_query.Node_ClusterStmt:
		add(l.finding("cluster", "CLUSTER rewrites the table in index order under ACCESS EXCLUSIVE",
			"leave physical order alone, or use pg_repack --order-by online"))
	case *pg_query.Node_LockStmt:
		add(l.finding("lock-table", "LOCK TABLE holds the lock until the migration's transaction ends: SPIRE's queries queue behind it",
			"remove it; rely on the row locks of the statements themselves"))
	case *pg_query.Node_TruncateStmt:
		add(l.finding("truncate", "TRUNCATE takes ACCESS EXCLUSIVE and removes every row at once",
			"DELETE in keyset-paginated batches, each its own transaction, if rows must go while SPIRE runs"))
	case *pg_query.Node_RefreshMatViewStmt:
		r := n.RefreshMatViewStmt
		if r.Concurrent && r.Relation != nil {
			name := r.Relation.Relname
			known := l.uniqueIndexedViews[name] || l.opts.Catalog != nil && l.opts.Catalog.MatviewUniqueIndex[name]
			if !known {
				add(l.finding("refresh-concurrently-needs-unique-index",
					fmt.Sprintf("no plain unique index on %s is visible in these files%s: REFRESH ... CONCURRENTLY will fail", name, catalogHint(l.opts.Catalog)),
					fmt.Sprintf("CREATE UNIQUE INDEX ON %s (<key columns>) -- plain columns, no WHERE, no expressions", name)))
			}
		}
		if r.Concurrent && s.inTx {
			add(l.finding("concurrently-in-transaction", concurrentlyTxMessage(s), concurrentlyTxFixFor(s)))
		}
	case *pg_query.Node_UpdateStmt:
		if n.UpdateStmt.WhereClause == nil {
			add(l.weigh(l.finding("update-delete-without-where", "UPDATE without WHERE rewrites every row in one transaction, holding every row lock to the end",
				"update in keyset-paginated batches (WHERE id > $last ORDER BY id LIMIT n), each its own transaction, from the client or a procedure that COMMITs between batches"), n.UpdateStmt.Relation.Relname))
		}
		l.checkSpireColumns(s.node, n.UpdateStmt.Relation.Relname, add)
	case *pg_query.Node_DeleteStmt:
		if n.DeleteStmt.WhereClause == nil {
			add(l.weigh(l.finding("update-delete-without-where", "DELETE without WHERE removes every row in one transaction",
				"delete in keyset-paginated batches, each its own transaction"), n.DeleteStmt.Relation.Relname))
		}
		l.checkSpireColumns(s.node, n.DeleteStmt.Relation.Relname, add)
	case *pg_query.Node_RenameStmt:
		r := n.RenameStmt
		if r.RenameType == pg_query.ObjectType_OBJECT_TABLE || r.RenameType == pg_query.ObjectType_OBJECT_COLUMN {
			what := "table"
			if r.RenameType == pg_query.ObjectType_OBJECT_COLUMN {
				what = "column " + r.Subname
			}
			add(l.finding("rename", fmt.Sprintf("renaming %s breaks every running client (every SPIRE server) still using the old name", what),
				"add the new name alongside (a new column kept in sync, or a view), move clients, then drop the old"))
		}
		if r.RenameType == pg_query.ObjectType_OBJECT_COLUMN && r.Relation != nil {
			l.addFileColumn(r.Relation.Relname, r.Newname)
		}
	case *pg_query.Node_DoStmt:
		l.checkBody(s, doBody(n.DoStmt), "DO block", add)
	case *pg_query.Node_CreateFunctionStmt:
		l.checkBody(s, functionBody(n.CreateFunctionStmt), "function", add)
	case *pg_query.Node_SelectStmt:
		if hasSleep(s.node) && s.inTx && (s.multiStmt || !s.runnerTx) {
			add(l.finding("sleep-in-transaction", "pg_sleep inside a transaction keeps every lock taken so far while it sleeps",
				"throttle between transactions, in the client, not inside one"))
		}
		if fromTable(s.node, "pg_stat_statements") && l.opts.PGVersion >= 13 {
			seen := map[string]bool{}
			for _, c := range columnRefs(s.node) {
				if seen[c] {
					continue
				}
				seen[c] = true
				if c == "total_time" || c == "mean_time" || c == "blk_read_time" && l.opts.PGVersion >= 17 {
					add(l.finding("pgss-renamed-column", fmt.Sprintf("pg_stat_statements has no %s on PostgreSQL %d", c, l.opts.PGVersion),
						"total_exec_time + total_plan_time, mean_exec_time; shared_blk_read_time from 17"))
				}
			}
		}
		l.checkExpiry(s.node, add)
	}
	l.checkExpiryIfDML(s, add)
	if !l.lockTimeoutSet && !l.opts.RunnerSetsLockTimeout && takesStrongLock(s.node) {
		add(l.finding("missing-lock-timeout", "no lock_timeout is in effect: waiting for a long transaction, this DDL would block every query queued behind it",
			"SET lock_timeout = '2s'; before it (and retry on failure), or run it with spiredb migrate, which sets one"))
	}
	return out
}

func catalogHint(c *Catalog) string {
	if c == nil {
		return " (pass --dsn to look in the database too)"
	}
	return " or the database"
}

const concurrentlyTxFix = "put the statement alone in its own migration file, outside BEGIN/COMMIT, DO blocks and functions"

// concurrentlyTxFixFor names the directive when spiredb's runner would wrap
// the file in a transaction.
func concurrentlyTxFixFor(s statement) string {
	if s.runnerTx {
		return "start the file with " + NoTransaction + " (spiredb's runner then runs it statement by statement, outside a transaction), or put the statement alone in a file that starts so"
	}
	return concurrentlyTxFix
}

func concurrentlyTxMessage(s statement) string {
	if s.runnerTx {
		return "CONCURRENTLY cannot run in a transaction block, and spiredb's runner runs a file in one transaction unless its first line is " + NoTransaction + ": the migration fails"
	}
	if s.multiStmt {
		return "CONCURRENTLY cannot run in a transaction block, and a migration file of several statements is sent as one: the migration fails"
	}
	return "CONCURRENTLY cannot run inside BEGIN ... COMMIT: the migration fails"
}

func (l *linter) checkIndex(s statement, ix *pg_query.IndexStmt, add func(Finding)) {
	table := ix.Relation.Relname
	if !ix.Concurrent && !l.createdTables[table] {
		msg := "CREATE INDEX blocks every INSERT, UPDATE and DELETE on " + table + " for the whole build"
		if hotTables[table] {
			msg += ": one of SPIRE's hot tables, so entry changes and agent attestations stall on every server"
		}
		add(l.weigh(l.finding("create-index-not-concurrently", msg,
			"CREATE INDEX CONCURRENTLY ... (alone in its migration; check for an INVALID index if it fails)"), table))
	}
	if ix.Concurrent && s.inTx {
		add(l.finding("concurrently-in-transaction", concurrentlyTxMessage(s), concurrentlyTxFixFor(s)))
	}
	if hasNonImmutable(ix.WhereClause) || slices.ContainsFunc(ix.IndexParams, func(p *pg_query.Node) bool {
		e := p.GetIndexElem()
		return e != nil && hasNonImmutable(e.Expr)
	}) {
		add(l.finding("non-immutable-in-index", "index predicates and expressions must be immutable: now(), current_timestamp, random() are evaluated once, at build time, or refused",
			"compare with a constant, or filter at query time; for SPIRE's expiry (bigint unix seconds) use WHERE expiry <> 0"))
	}
	var keys []string
	for _, p := range ix.IndexParams {
		if e := p.GetIndexElem(); e != nil && e.Name != "" {
			keys = append(keys, e.Name)
		}
	}
	if cols, ok := l.spire.columns[table]; ok {
		for _, k := range keys {
			if _, ok := cols[k]; !ok && !l.knownColumn(table, k) {
				add(l.finding("spire-unknown-column", fmt.Sprintf("SPIRE's %s has no column %s (its columns: %s)", table, k, strings.Join(sortedKeys(cols), ", ")),
					"index a column SPIRE has; selectors live in the selectors table (registered_entry_id, type, value)"))
			}
		}
		if ix.WhereClause == nil && len(keys) > 0 {
			for _, si := range l.spire.indexes[table] {
				if len(si.keys) >= len(keys) && slices.Equal(si.keys[:len(keys)], keys) && len(ix.IndexIncludingParams) == 0 {
					add(l.finding("spire-duplicate-index", fmt.Sprintf("SPIRE already creates %s on %s (%s): this index duplicates it", si.name, table, strings.Join(si.keys, ", ")),
						"drop this statement"))
					break
				}
			}
		}
	}
	_, spireTable := l.spire.columns[table]
	if c := l.opts.Catalog; c != nil && !l.createdTables[table] {
		t, ok := c.Tables[table]
		if !ok {
			add(l.finding("unknown-table", fmt.Sprintf("no table %s in the database", table), "check the name and the search_path"))
		} else {
			for _, k := range keys {
				if _, ok := t.Columns[k]; !ok && !spireTable {
					add(l.finding("unknown-column", fmt.Sprintf("%s has no column %s in the database", table, k), "check the column name"))
				}
			}
			if ix.WhereClause == nil && len(keys) > 0 {
				for _, ci := range t.Indexes {
					if spireTable && isSpireIndex(l.spire, table, ci.Name) {
						continue // reported as spire-duplicate-index
					}
					if len(ci.Keys) >= len(keys) && slices.Equal(ci.Keys[:len(keys)], keys) && len(ix.IndexIncludingParams) == 0 && ci.Name != ix.Idxname {
						add(l.finding("duplicate-index", fmt.Sprintf("%s already has %s (%s)", table, ci.Name, strings.Join(ci.Keys, ", ")), "drop this statement"))
						break
					}
				}
			}
		}
	}
}

// knownColumn: a column that is not SPIRE's but exists for this statement,
// added earlier in these files or present in the live table (an earlier
// migration).
func (l *linter) knownColumn(table, column string) bool {
	if l.fileColumns[table][column] {
		return true
	}
	if t := l.catalogTable(table); t != nil {
		_, live := t.Columns[column]
		return live
	}
	return false
}

// catalogTable is the live table, when a catalog was given.
func (l *linter) catalogTable(name string) *Table {
	if l.opts.Catalog == nil {
		return nil
	}
	return l.opts.Catalog.Tables[name]
}

// addFileColumn records a column a statement adds, for the statements after it.
func (l *linter) addFileColumn(table, column string) {
	if l.fileColumns[table] == nil {
		l.fileColumns[table] = map[string]bool{}
	}
	l.fileColumns[table][column] = true
}

func (l *linter) checkAlterTable(s statement, at *pg_query.AlterTableStmt, add func(Finding)) {
	if at.Relation == nil {
		return
	}
	table := at.Relation.Relname
	defer l.learnColumns(at)
	strong := false
	for _, c := range at.Cmds {
		cmd := c.GetAlterTableCmd()
		if cmd == nil {
			continue
		}
		switch cmd.Subtype {
		case pg_query.AlterTableType_AT_AddColumn:
			strong = true
			cd := cmd.Def.GetColumnDef()
			if cd == nil {
				continue
			}
			def, notNull := cd.RawDefault, false
			for _, cn := range cd.Constraints {
				if con := cn.GetConstraint(); con != nil {
					switch con.Contype {
					case pg_query.ConstrType_CONSTR_DEFAULT:
						def = con.RawExpr
					case pg_query.ConstrType_CONSTR_NOTNULL:
						notNull = true
					}
				}
			}
			if def != nil && hasVolatile(def) {
				add(l.weigh(l.finding("add-column-volatile-default", "a volatile default ("+volatileName(def)+") is computed for every existing row: a full rewrite under ACCESS EXCLUSIVE",
					"ADD COLUMN without the default, SET DEFAULT for new rows, then fill existing rows in keyset-paginated batches, each its own transaction"), table))
			}
			if notNull && def == nil && !l.createdTables[table] {
				add(l.finding("add-column-not-null-no-default", "ADD COLUMN ... NOT NULL without a default fails as soon as the table has a row",
					"ADD COLUMN with a constant DEFAULT (no rewrite since PostgreSQL 11), or add it nullable, backfill, then add NOT NULL safely"))
			}
		case pg_query.AlterTableType_AT_SetNotNull:
			strong = true
			if !l.validatedNotNull[table+".*"] && !l.createdTables[table] {
				add(l.weigh(l.finding("set-not-null", "SET NOT NULL reads every row under ACCESS EXCLUSIVE unless a validated CHECK proves it",
					fmt.Sprintf("ALTER TABLE %[1]s ADD CONSTRAINT %[2]s_not_null CHECK (%[2]s IS NOT NULL) NOT VALID; ALTER TABLE %[1]s VALIDATE CONSTRAINT %[2]s_not_null; "+
						"ALTER TABLE %[1]s ALTER COLUMN %[2]s SET NOT NULL; (PostgreSQL 12+ skips the scan)", table, cmd.Name)), table))
			}
		case pg_query.AlterTableType_AT_AddConstraint:
			strong = true
			con := cmd.Def.GetConstraint()
			if con == nil {
				continue
			}
			switch con.Contype {
			case pg_query.ConstrType_CONSTR_CHECK, pg_query.ConstrType_CONSTR_FOREIGN:
				if !con.SkipValidation && !l.createdTables[table] {
					add(l.weigh(l.finding("constraint-not-valid", "the constraint is checked against every row while writes to the table wait",
						"ADD CONSTRAINT ... NOT VALID; then, in a later migration, VALIDATE CONSTRAINT (takes only SHARE UPDATE EXCLUSIVE)"), table))
				}
			case pg_query.ConstrType_CONSTR_UNIQUE, pg_query.ConstrType_CONSTR_PRIMARY:
				if con.Indexname == "" && !l.createdTables[table] {
					add(l.weigh(l.finding("unique-without-using-index", "the constraint builds its unique index under ACCESS EXCLUSIVE",
						"CREATE UNIQUE INDEX CONCURRENTLY name ON table (...); then ALTER TABLE ... ADD CONSTRAINT ... UNIQUE USING INDEX name"), table))
				}
			}
		case pg_query.AlterTableType_AT_AlterColumnType:
			strong = true
			if !l.createdTables[table] {
				add(l.weigh(l.finding("alter-column-type", "changing "+cmd.Name+"'s type rewrites the table and its indexes under ACCESS EXCLUSIVE (except a few binary-compatible widenings such as varchar(n) to text)",
					"add a new column of the new type, backfill it in batches, switch readers, then drop the old column"), table))
			}
		case pg_query.AlterTableType_AT_ValidateConstraint:
		default:
			strong = true
		}
	}
	if strong && hotTables[table] && !l.createdTables[table] {
		add(l.finding("spire-hot-table-lock", "ALTER TABLE "+table+" takes ACCESS EXCLUSIVE on one of SPIRE's hot tables: every SPIRE server's reload and every entry change waits, and queues behind it",
			"keep it short with a lock_timeout and retries; and prefer changes SPIRE's own migrations make"))
	}
}

// checkBody looks into a DO block or function body (PL/pgSQL text).
var (
	loopRE   = regexp.MustCompile(`(?i)\b(LOOP|WHILE|FOR)\b`)
	dmlRE    = regexp.MustCompile(`(?i)\b(UPDATE|DELETE)\b`)
	offsetRE = regexp.MustCompile(`(?i)\bOFFSET\b`)
	sleepRE  = regexp.MustCompile(`(?i)\bpg_sleep(_for|_until)?\s*\(`)
	concRE   = regexp.MustCompile(`(?i)\bCONCURRENTLY\b`)
	commitRE = regexp.MustCompile(`(?i)\bCOMMIT\b`)
)

func (l *linter) checkBody(s statement, body, what string, add func(Finding)) {
	if body == "" {
		return
	}
	loop := loopRE.MatchString(body)
	procCommits := commitRE.MatchString(body) // procedures may COMMIT between batches
	if loop && dmlRE.MatchString(body) && !procCommits {
		add(l.finding("batch-in-one-transaction", "the "+what+"'s \"batches\" are one transaction: every updated row stays locked until the end, and nothing is committed if it fails",
			"keyset-paginated batches, each its own transaction: from the client, or a PROCEDURE that COMMITs after each batch"))
	}
	if loop && offsetRE.MatchString(body) {
		add(l.finding("offset-paging", "OFFSET paging reads and skips every earlier row again for each batch: quadratic",
			"keyset paging: WHERE id > $last ORDER BY id LIMIT n"))
	}
	if sleepRE.MatchString(body) && !procCommits {
		add(l.finding("sleep-in-transaction", "pg_sleep in a "+what+" sleeps inside its transaction, holding every lock taken so far",
			"throttle between transactions, in the client, not inside one"))
	}
	if concRE.MatchString(body) {
		add(l.finding("concurrently-in-transaction", "CONCURRENTLY inside a "+what+" runs in a transaction block: it fails", concurrentlyTxFix))
	}
}

func doBody(d *pg_query.DoStmt) string {
	for _, a := range d.Args {
		if de := a.GetDefElem(); de != nil && de.Defname == "as" {
			return de.Arg.GetString_().Sval
		}
	}
	return ""
}

func functionBody(f *pg_query.CreateFunctionStmt) string {
	for _, o := range f.Options {
		if de := o.GetDefElem(); de != nil && de.Defname == "as" {
			var parts []string
			for _, it := range de.Arg.GetList().GetItems() {
				parts = append(parts, it.GetString_().Sval)
			}
			return strings.Join(parts, "\n")
		}
	}
	return ""
}

func hasOption(opts []*pg_query.Node, name string) bool {
	for _, o := range opts {
		if de := o.GetDefElem(); de != nil && strings.EqualFold(de.Defname, name) {
			if de.Arg == nil {
				return true
			}
			if b := de.Arg.GetBoolean(); b != nil {
				return b.Boolval
			}
			return true
		}
	}
	return false
}

// takesStrongLock: DDL that queues for a lock conflicting with SPIRE's
// reads or writes.
func takesStrongLock(n *pg_query.Node) bool {
	switch x := n.Node.(type) {
	case *pg_query.Node_AlterTableStmt, *pg_query.Node_RenameStmt, *pg_query.Node_TruncateStmt,
		*pg_query.Node_ClusterStmt, *pg_query.Node_LockStmt:
		return true
	case *pg_query.Node_IndexStmt:
		return !x.IndexStmt.Concurrent
	case *pg_query.Node_DropStmt:
		return !x.DropStmt.Concurrent && (x.DropStmt.RemoveType == pg_query.ObjectType_OBJECT_INDEX || x.DropStmt.RemoveType == pg_query.ObjectType_OBJECT_TABLE)
	}
	return false
}

// walk calls fn for every Node under m.
func walk(m protoreflect.Message, fn func(*pg_query.Node)) {
	if m == nil || !m.IsValid() {
		return
	}
	if n, ok := m.Interface().(*pg_query.Node); ok {
		fn(n)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fn)
			}
		case fd.Message() != nil && !fd.IsMap():
			walk(v.Message(), fn)
		}
		return true
	})
}

func nodeWalk(n *pg_query.Node, fn func(*pg_query.Node)) {
	if n == nil {
		return
	}
	walk(n.ProtoReflect(), fn)
}

func funcName(fc *pg_query.FuncCall) string {
	if len(fc.Funcname) == 0 {
		return ""
	}
	return strings.ToLower(fc.Funcname[len(fc.Funcname)-1].GetString_().Sval)
}

var volatileFuncs = map[string]bool{"random": true, "gen_random_uuid": true, "uuid_generate_v1": true, "uuid_generate_v4": true,
	"clock_timestamp": true, "timeofday": true, "nextval": true, "txid_current": true}

var nonImmutableFuncs = map[string]bool{"now": true, "current_timestamp": true, "localtimestamp": true, "current_date": true,
	"statement_timestamp": true, "transaction_timestamp": true, "clock_timestamp": true, "random": true, "timeofday": true,
	"gen_random_uuid": true, "nextval": true, "age": true}

func hasVolatile(n *pg_query.Node) bool { return volatileName(n) != "" }

func volatileName(n *pg_query.Node) string {
	name := ""
	nodeWalk(n, func(x *pg_query.Node) {
		if fc := x.GetFuncCall(); fc != nil && volatileFuncs[funcName(fc)] && name == "" {
			name = funcName(fc) + "()"
		}
	})
	return name
}

func hasNonImmutable(n *pg_query.Node) bool {
	found := false
	nodeWalk(n, func(x *pg_query.Node) {
		if fc := x.GetFuncCall(); fc != nil && nonImmutableFuncs[funcName(fc)] {
			found = true
		}
		if x.GetSqlvalueFunction() != nil {
			found = true // CURRENT_TIMESTAMP, CURRENT_DATE, LOCALTIMESTAMP, ...
		}
	})
	return found
}

func hasSleep(n *pg_query.Node) bool {
	found := false
	nodeWalk(n, func(x *pg_query.Node) {
		if fc := x.GetFuncCall(); fc != nil && strings.HasPrefix(funcName(fc), "pg_sleep") {
			found = true
		}
	})
	return found
}

func fromTable(n *pg_query.Node, table string) bool {
	found := false
	nodeWalk(n, func(x *pg_query.Node) {
		if rv := x.GetRangeVar(); rv != nil && rv.Relname == table {
			found = true
		}
	})
	return found
}

func columnRefs(n *pg_query.Node) []string {
	var out []string
	nodeWalk(n, func(x *pg_query.Node) {
		if cr := x.GetColumnRef(); cr != nil && len(cr.Fields) > 0 {
			if s := cr.Fields[len(cr.Fields)-1].GetString_(); s != nil {
				out = append(out, s.Sval)
			}
		}
	})
	return out
}

// checkSpireColumns reports columns a statement on a SPIRE table names that
// SPIRE's table does not have (single-table statements).
func (l *linter) checkSpireColumns(n *pg_query.Node, table string, add func(Finding)) {
	cols, ok := l.spire.columns[table]
	if !ok {
		return
	}
	seen := map[string]bool{}
	for _, c := range columnRefs(n) {
		if _, ok := cols[c]; !ok && !seen[c] && !l.knownColumn(table, c) {
			seen[c] = true
			add(l.finding("spire-unknown-column", fmt.Sprintf("SPIRE's %s has no column %s", table, c), "use one of: "+strings.Join(sortedKeys(cols), ", ")))
		}
	}
}

func (l *linter) checkExpiryIfDML(s statement, add func(Finding)) {
	switch s.node.Node.(type) {
	case *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_IndexStmt:
		l.checkExpiry(s.node, add)
	}
}

// checkExpiry finds SPIRE's bigint expiry compared with a timestamp.
func (l *linter) checkExpiry(n *pg_query.Node, add func(Finding)) {
	reported := false
	nodeWalk(n, func(x *pg_query.Node) {
		e := x.GetAExpr()
		if e == nil || reported {
			return
		}
		for _, pair := range [][2]*pg_query.Node{{e.Lexpr, e.Rexpr}, {e.Rexpr, e.Lexpr}} {
			cr := pair[0].GetColumnRef()
			if cr == nil || len(cr.Fields) == 0 || cr.Fields[len(cr.Fields)-1].GetString_().GetSval() != "expiry" {
				continue
			}
			if isTimestampish(pair[1]) {
				reported = true
				add(l.finding("spire-expiry-type", "SPIRE's registered_entries.expiry and join_tokens.expiry are bigint unix seconds (0 = never): a timestamp comparison fails or means nothing",
					"compare with extract(epoch from now())::bigint, and exclude expiry = 0 (never expires)"))
				return
			}
		}
	})
}

// isTimestampish reports whether an expression yields a timestamp or
// interval: now(), CURRENT_TIMESTAMP, casts to them, arithmetic on them;
// extract(epoch ...) and casts to numbers are numbers.
func isTimestampish(n *pg_query.Node) bool {
	if n == nil {
		return false
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_TypeCast:
		switch t := typeName(x.TypeCast.TypeName); {
		case strings.Contains(t, "timestamp") || t == "interval" || t == "date":
			return true
		case strings.HasPrefix(t, "int") || t == "bigint" || t == "numeric" || strings.HasPrefix(t, "float"):
			return false
		}
		return isTimestampish(x.TypeCast.Arg)
	case *pg_query.Node_FuncCall:
		switch funcName(x.FuncCall) {
		case "now", "clock_timestamp", "to_timestamp", "statement_timestamp", "transaction_timestamp":
			return true
		}
		return false
	case *pg_query.Node_SqlvalueFunction:
		return true
	case *pg_query.Node_AExpr:
		return isTimestampish(x.AExpr.Lexpr) || isTimestampish(x.AExpr.Rexpr)
	}
	return false
}

func isSpireIndex(s *spireSchema, table, name string) bool {
	for _, si := range s.indexes[table] {
		if si.name == name {
			return true
		}
	}
	return false
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
