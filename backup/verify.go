package backup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgarchive"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// Verification levels, each including the previous ones.
const (
	LevelChecksum = "checksum" // stream the object, compare size and sha256
	LevelTOC      = "toc"      // also pg_restore --list
	LevelRestore  = "restore"  // also restore into a scratch database and compare
	// LevelPITR restores the newest (or named) base backup and every
	// archived WAL segment after it into a scratch data directory.
	LevelPITR = "pitr"
)

// VerifyResult is stored next to the manifest and shown by List.
type VerifyResult struct {
	ID       string        `json:"id"`
	Level    string        `json:"level"`
	OK       bool          `json:"ok"`
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"duration_ns"`
	Checks   []Check       `json:"checks"`
	// Recorded is false when the result could not be stored (a read-only
	// store).
	Recorded bool `json:"-"`
}

// Check is one verification step.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Failed returns the first failed check, or nil.
func (v *VerifyResult) Failed() *Check {
	for i := range v.Checks {
		if !v.Checks[i].OK {
			return &v.Checks[i]
		}
	}
	return nil
}

func (v *VerifyResult) add(name string, ok bool, format string, args ...any) {
	v.Checks = append(v.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Store  Store
	ID     string
	Latest bool
	Level  string
	// Scratch is a connection to the server the scratch database is created
	// on (any database there; the role needs CREATEDB).
	Scratch pg.Options
	// Jobs > 1 (the default is 2) downloads the dump to a temporary file in
	// TempDir, checks it, and restores it with pg_restore -j; 1 streams with
	// no temporary file. The amcheck pass uses as many sessions.
	Jobs    int
	TempDir string
	Tools   Tools
	// Keys.Identities open an encrypted backup (every level but checksum).
	Keys Keys
	// FetchCommand is the restore_command of a pitr verification
	// (spiredb wal fetch %f %p with this store's flags); its scratch data
	// directory is made in TempDir.
	FetchCommand string
	Logger       *slog.Logger
}

// Verify checks a backup at the requested level, stores the result next to
// its manifest and returns it. A backup that fails a check is a result with
// OK false, not an error; errors mean verification itself could not run.
func Verify(ctx context.Context, o VerifyOptions) (*VerifyResult, error) {
	logger := orDiscard(o.Logger)
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Level == "" {
		o.Level = LevelRestore
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	switch o.Level {
	case LevelChecksum, LevelTOC, LevelRestore, LevelPITR:
	default:
		return nil, fmt.Errorf("invalid level %q: want checksum, toc, restore or pitr", o.Level)
	}
	if err := o.Store.Check(ctx); err != nil {
		return nil, err
	}
	kind := KindLogical
	switch o.Level {
	case LevelChecksum:
		kind = ""
	case LevelPITR:
		kind = KindPhysical
	}
	m, err := find(ctx, o.Store, o.ID, o.Latest, kind, warnSource, o.Logger)
	if err != nil {
		return nil, err
	}
	// beyond the checksum an encrypted backup is read: without its key
	// that is an error, not a failed verification of the backup
	if o.Level != LevelChecksum {
		if err := m.Unlock(o.Keys.Identities); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	res := &VerifyResult{ID: m.ID, Level: o.Level, Time: start.UTC()}
	logger.Info("verifying backup", "id", m.ID, "level", o.Level)

	switch o.Level {
	case LevelChecksum:
		err = verifyChecksum(ctx, o, m, res, nil)
	case LevelTOC:
		err = verifyTOC(ctx, o, m, res)
	case LevelRestore:
		err = verifyRestore(ctx, o, m, res, logger)
	case LevelPITR:
		err = verifyPITR(ctx, o, m, res, logger)
	}
	if err != nil {
		return nil, err
	}
	res.Duration = time.Since(start)
	res.OK = res.Failed() == nil
	// a read-only store can be verified: the result is then returned but
	// not recorded next to the backup
	if err := putJSON(ctx, o.Store, verifyKey(m.ID), res); err != nil {
		logger.Warn("verification result not recorded in the store (read-only?): backup list and doctor will not see it", "id", m.ID, "err", err)
	} else {
		res.Recorded = true
	}
	return res, nil
}

// verifyChecksum streams the object through sink (when not nil) and
// compares size and sha256 with the manifest.
func verifyChecksum(ctx context.Context, o VerifyOptions, m *Manifest, res *VerifyResult, sink io.Writer) error {
	rc, err := o.Store.Get(ctx, m.dataKey())
	if errors.Is(err, ErrNotFound) {
		res.add("checksum", false, "data object %s is missing", m.dataKey())
		return nil
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	w := io.Writer(h)
	var dec io.WriteCloser
	if sink != nil {
		// the sink (pg_restore, a file for it) gets the decoded archive
		dec = decodingWriter(m, sink)
		w = io.MultiWriter(h, &forgivingWriter{w: dec})
	}
	n, err := io.Copy(w, rc)
	if dec != nil {
		// a decoding error shows as the checksum mismatch it comes with,
		// or as pg_restore's failure
		_ = dec.Close()
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", m.dataKey(), err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	switch {
	case n != m.Size:
		res.add("checksum", false, "size mismatch: stored object has %d bytes, manifest says %d (truncated or replaced)", n, m.Size)
	case sum != m.SHA256:
		res.add("checksum", false, "sha256 mismatch: stored object %s, manifest %s (corrupted)", sum, m.SHA256)
	default:
		res.add("checksum", true, "%d bytes, sha256 %s", n, sum)
	}
	return nil
}

// forgivingWriter keeps the checksum stream going after the consumer (a
// pg_restore that exited early) stops reading.
type forgivingWriter struct {
	w   io.Writer
	err error
}

func (f *forgivingWriter) Write(p []byte) (int, error) {
	if f.err == nil {
		_, f.err = f.w.Write(p)
	}
	return len(p), nil
}

func verifyTOC(ctx context.Context, o VerifyOptions, m *Manifest, res *VerifyResult) error {
	restorer, err := o.Tools.restorer(ctx, m, 0)
	if err != nil {
		return err
	}
	stderr := pgprog.NewOutput(orDiscard(o.Logger), "pg_restore")
	cmd := pgprog.Command(ctx, restorer.Path, nil, nil, stderr, "--list")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pg_restore: %w", err)
	}
	cerr := verifyChecksum(ctx, o, m, res, stdin)
	_ = stdin.Close()
	werr := cmd.Wait()
	if cerr != nil {
		return cerr
	}
	if werr != nil {
		res.add("toc", false, "pg_restore --list failed (%v): %s", werr, stderr.Tail())
		return nil
	}
	entries := 0
	for _, l := range strings.Split(out.String(), "\n") {
		if l != "" && !strings.HasPrefix(l, ";") {
			entries++
		}
	}
	res.add("toc", entries > 0, "%d archive entries", entries)
	return nil
}

func verifyRestore(ctx context.Context, o VerifyOptions, m *Manifest, res *VerifyResult, logger *slog.Logger) error {
	return withScratchRestore(ctx, o, m, "spiredb_verify_", res, logger, func(sopts pg.Options) error {
		// row counts and amcheck run side by side
		var compared VerifyResult
		done := make(chan error, 1)
		go func() {
			sconn, err := pg.Connect(ctx, sopts)
			if err != nil {
				done <- err
				return
			}
			defer sconn.Close(context.WithoutCancel(ctx))
			compareRestored(ctx, sconn, m, &compared)
			done <- nil
		}()
		var checked VerifyResult
		began := time.Now()
		ierr := checkIndexes(ctx, sopts, o.Jobs, &checked, logger)
		logger.Debug("amcheck done", "took", time.Since(began).Round(time.Millisecond))
		if err := <-done; err != nil {
			return err
		}
		if ierr != nil {
			return ierr
		}
		res.Checks = append(append(res.Checks, compared.Checks...), checked.Checks...)
		return nil
	})
}

// withScratchRestore creates a scratch database named prefix+ID on
// o.Scratch's server, restores the backup into it (checksum checked, like
// verify: a failure is a failed check in res, and then use is not called),
// calls use with options that reach it, and drops it.
func withScratchRestore(ctx context.Context, o VerifyOptions, m *Manifest, prefix string, res *VerifyResult, logger *slog.Logger,
	use func(sopts pg.Options) error) error {
	admin, err := pg.Connect(ctx, o.Scratch)
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	dropDeadScratch(ctx, admin, logger)
	// a name of this run's own: another run of the same backup may be
	// restoring at the same time
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	scratch := prefix + strings.ToLower(strings.ReplaceAll(m.ID, "-", "_")) + "_" + hex.EncodeToString(suffix)
	ident := pgx.Identifier{scratch}.Sanitize()
	if _, err := admin.Exec(ctx, pg.Marker+"CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("creating scratch database %s: %w", scratch, err)
	}
	defer func() {
		if _, err := admin.Exec(context.WithoutCancel(ctx), pg.Marker+"DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			logger.Error("dropping scratch database", "database", scratch, "err", err)
		}
	}()
	// the mark that lets a later run clean it if this one is killed: this
	// session, which lasts as long as the run
	if err := markScratch(ctx, admin, scratch, strings.TrimSuffix(strings.TrimPrefix(prefix, "spiredb_"), "_"), m.ID); err != nil {
		return err
	}

	// every session and program below goes to the scratch database this
	// run created, whatever the scratch DSN names
	sopts := o.Scratch
	sopts.Database = scratch
	lp, err := pgprog.NewLibpq(sopts, "spiredb-verify")
	if err != nil {
		return err
	}
	defer lp.Close()
	conninfo, env := lp.Conninfo, lp.Env
	version, err := serverVersionNum(ctx, admin)
	if err != nil {
		return err
	}
	restorer, err := o.Tools.restorer(ctx, m, version)
	if err != nil {
		return err
	}
	args := []string{"--no-owner", "--no-privileges", "--exit-on-error", "--dbname=" + conninfo}
	stderr := pgprog.NewOutput(logger, "pg_restore")
	// monitoring extensions the scratch role cannot create are left out,
	// and said so (a managed service's role restores SPIRE's data anyway)
	extArgs := func(path string) ([]string, func(), error) {
		var skipped, a []string
		cleanup := func() {}
		err := pg.WithConn(ctx, sopts, func(c *pgx.Conn) (err error) {
			skipped, a, cleanup, err = leaveOut(ctx, o.Store, m, restorer.Path, path, o.TempDir, c, true)
			return err
		})
		if len(skipped) > 0 {
			res.add("extensions", true, "%s", leftOutDetail(skipped))
			logger.Warn("restoring without extensions the role cannot create", "extensions", skipped)
		}
		return a, cleanup, err
	}
	var werr error
	if o.Jobs > 1 {
		f, err := os.CreateTemp(o.TempDir, "spiredb-verify-*.dump")
		if err != nil {
			return fmt.Errorf("creating temporary file for the parallel restore: %w", err)
		}
		defer os.Remove(f.Name())
		began := time.Now()
		sc := pgarchive.NewScanner()
		defer func() { _ = sc.Close() }()
		cerr := verifyChecksum(ctx, o, m, res, io.MultiWriter(f, sc))
		logger.Debug("downloaded and checked", "took", time.Since(began).Round(time.Millisecond))
		if err := f.Close(); cerr == nil {
			cerr = err
		}
		if cerr != nil {
			return cerr
		}
		if res.Failed() != nil {
			return nil // the checksum failed: restoring it proves nothing more
		}
		setDataOffsets(sc, f.Name(), logger)
		ea, cleanup, err := extArgs(f.Name())
		defer cleanup()
		if err != nil {
			return err
		}
		args = append(args, ea...)
		began = time.Now()
		werr = pgprog.Command(ctx, restorer.Path, env, nil, stderr, append(args, "--jobs="+strconv.Itoa(o.Jobs), f.Name())...).Run()
		logger.Debug("pg_restore done", "took", time.Since(began).Round(time.Millisecond))
	} else {
		ea, cleanup, err := extArgs("")
		defer cleanup()
		if err != nil {
			return err
		}
		args = append(args, ea...)
		cmd := pgprog.Command(ctx, restorer.Path, env, nil, stderr, args...)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting pg_restore: %w", err)
		}
		cerr := verifyChecksum(ctx, o, m, res, stdin)
		_ = stdin.Close()
		werr = cmd.Wait()
		if cerr != nil {
			return cerr
		}
	}
	if werr != nil {
		res.add("restore", false, "pg_restore into scratch database failed (%v): %s", werr, stderr.Tail())
		return nil
	}
	res.add("restore", true, "restored into scratch database %s (jobs %d)", scratch, o.Jobs)
	return use(sopts)
}

// compareRestored checks SPIRE's schema version and every table's row count
// against the manifest.
func compareRestored(ctx context.Context, conn *pgx.Conn, m *Manifest, res *VerifyResult) {
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		res.add("spire-schema", false, "reading SPIRE schema: %v", err)
		return
	}
	switch {
	case m.SPIRE == nil && !s.Present:
		res.add("spire-schema", true, "no SPIRE schema (none at backup time either)")
	case m.SPIRE == nil || !s.Present:
		res.add("spire-schema", false, "SPIRE schema present at backup: %t, after restore: %t", m.SPIRE != nil, s.Present)
	case s.Version != m.SPIRE.SchemaVersion || s.CodeVersion != m.SPIRE.CodeVersion:
		res.add("spire-schema", false, "SPIRE schema %d/%s after restore, %d/%s in the manifest", s.Version, s.CodeVersion, m.SPIRE.SchemaVersion, m.SPIRE.CodeVersion)
	default:
		res.add("spire-schema", true, "SPIRE schema version %d, code_version %s", s.Version, s.CodeVersion)
	}
	counts, err := spire.CountRows(ctx, conn, s.Schema)
	if err != nil {
		res.add("row-counts", false, "counting rows: %v", err)
		return
	}
	var diffs []string
	for t, want := range m.RowCounts {
		if got := counts[t]; got != want {
			diffs = append(diffs, fmt.Sprintf("%s %d (manifest %d)", t, got, want))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		res.add("row-counts", false, "row counts differ: %s", strings.Join(diffs, ", "))
		return
	}
	var total int64
	for _, n := range m.RowCounts {
		total += n
	}
	res.add("row-counts", true, "%d tables, %d rows match the manifest (registered_entries %d)", len(m.RowCounts), total, m.RowCounts["registered_entries"])
}

// checkIndexes runs amcheck's bt_index_check on every btree index, over
// jobs sessions, when the extension is available.
func checkIndexes(ctx context.Context, opts pg.Options, jobs int, res *VerifyResult, logger *slog.Logger) error {
	conn, err := pg.Connect(ctx, opts)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var available bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'amcheck')").Scan(&available); err != nil || !available {
		res.add("amcheck", true, "skipped: the amcheck extension is not available on this server")
		return nil
	}
	if _, err := conn.Exec(ctx, pg.Marker+"CREATE EXTENSION IF NOT EXISTS amcheck"); err != nil {
		logger.Warn("amcheck not usable", "err", err)
		res.add("amcheck", true, "skipped: %v", err)
		return nil
	}
	// called by the extension's schema: the restored dump decides where
	// amcheck lives, and may hold a function of the same name elsewhere
	var schema string
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT n.nspname::text FROM pg_catalog.pg_extension e
		JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'`).Scan(&schema); err != nil {
		return fmt.Errorf("finding amcheck's schema: %w", err)
	}
	check := pg.Marker + "SELECT " + pgx.Identifier{schema, "bt_index_check"}.Sanitize() + "($1::pg_catalog.regclass)"
	rows, err := conn.Query(ctx, pg.Marker+amcheckIndexesSQL)
	if err != nil {
		return fmt.Errorf("listing indexes: %w", err)
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("listing indexes: %w", err)
	}
	work := make(chan string, len(indexes))
	for _, ix := range indexes {
		work <- ix
	}
	close(work)
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	var connErr error
	for w := range max(jobs, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conn
			if w > 0 {
				var err error
				if c, err = pg.Connect(ctx, opts); err != nil {
					mu.Lock()
					connErr = err
					mu.Unlock()
					return
				}
				defer c.Close(context.WithoutCancel(ctx))
			}
			for ix := range work {
				if _, err := c.Exec(ctx, check, ix); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", ix, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if connErr != nil {
		return connErr
	}
	if len(failures) > 0 {
		sort.Strings(failures)
		res.add("amcheck", false, "bt_index_check failed on %d of %d btree indexes: %s", len(failures), len(indexes), strings.Join(failures, "; "))
		return nil
	}
	res.add("amcheck", true, "bt_index_check passed on %d btree indexes", len(indexes))
	return nil
}

// markScratch comments the scratch database with scratchComment of
// conn's session.
func markScratch(ctx context.Context, conn *pgx.Conn, name, purpose, id string) error {
	var started time.Time
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()").Scan(&started); err != nil {
		return fmt.Errorf("marking scratch database %s: %w", name, err)
	}
	var stmt string
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.format('COMMENT ON DATABASE %I IS %L', $1::text, $2::text)",
		name, scratchComment(purpose, id, conn.PgConn().PID(), started)).Scan(&stmt); err != nil {
		return fmt.Errorf("marking scratch database %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, pg.Marker+stmt); err != nil {
		return fmt.Errorf("marking scratch database %s: %w", name, err)
	}
	return nil
}

// scratchMark reads scratchComment back: the session of the run that
// created the database.
var scratchMark = regexp.MustCompile(`^spiredb scratch database \([^)]*\), session ([0-9]+) started (\S+): `)

// dropDeadScratch drops the scratch databases of runs that ended without
// dropping them (killed, OOM): those of this role, named as spiredb names
// them and marked by scratchComment, whose session is gone. A database without the mark, or whose run's session
// is alive, is never touched; nor is one somebody is connected to (no
// FORCE). Failures are logged: the run goes on.
func dropDeadScratch(ctx context.Context, conn *pgx.Conn, logger *slog.Logger) {
	rows, err := conn.Query(ctx, pg.Marker+`SELECT d.datname, pg_catalog.shobj_description(d.oid, 'pg_database')
FROM pg_catalog.pg_database d
WHERE pg_catalog.shobj_description(d.oid, 'pg_database') LIKE 'spiredb scratch database (%'
	AND d.datname OPERATOR(pg_catalog.~) '^spiredb_(verify|diff|rehearse)_'
	AND d.datdba = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)`)
	if err != nil {
		logger.Warn("listing leftover scratch databases", "err", err)
		return
	}
	type leftover struct {
		name    string
		pid     int64
		started time.Time
	}
	var found []leftover
	for rows.Next() {
		var name, comment string
		if err := rows.Scan(&name, &comment); err != nil {
			break
		}
		mark := scratchMark.FindStringSubmatch(comment)
		if mark == nil {
			continue
		}
		pid, perr := strconv.ParseInt(mark[1], 10, 32)
		started, terr := time.Parse(time.RFC3339Nano, mark[2])
		if perr == nil && terr == nil {
			found = append(found, leftover{name, pid, started})
		}
	}
	rows.Close()
	for _, l := range found {
		var alive bool
		// backend_start is hidden from other roles: then the pid alone
		// keeps it (a reused pid only delays the cleaning)
		if err := conn.QueryRow(ctx, pg.Marker+`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity
WHERE pid = $1 AND (backend_start IS NULL OR backend_start = $2))`, l.pid, l.started).Scan(&alive); err != nil || alive {
			continue
		}
		if _, err := conn.Exec(ctx, pg.Marker+"DROP DATABASE IF EXISTS "+pgx.Identifier{l.name}.Sanitize()); err != nil {
			logger.Warn("a scratch database left by an earlier run could not be dropped", "database", l.name, "err", err)
			continue
		}
		logger.Info("dropped a scratch database left by an earlier run", "database", l.name)
	}
}

// scratchComment marks a scratch database as the run's own: which run, and
// the session (pid and start) whose end means the run has ended.
func scratchComment(purpose, id string, pid uint32, started time.Time) string {
	return fmt.Sprintf("spiredb scratch database (%s of backup %s), session %d started %s: dropped when that session has ended",
		purpose, id, pid, started.UTC().Format(time.RFC3339Nano))
}
