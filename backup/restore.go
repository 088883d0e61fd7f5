package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize/english"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgarchive"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	Store  Store
	ID     string
	Latest bool
	// Target is the database to restore into. Connect as the role SPIRE
	// uses: objects are created owned by the connecting role.
	Target pg.Options
	// Clean drops the target's conflicting objects first; without it a
	// non-empty target is refused. A target that is a SPIRE datastore is
	// first compared with the backup (restored into a scratch database on
	// Scratch's server): when it changed since, the restore is refused
	// with a *LossError carrying the plan, unless AcceptLoss.
	Clean      bool
	AcceptLoss bool
	// AllowSessions restores with Clean although other sessions are
	// connected to the target (a *ConnectedError otherwise): a running
	// spire-server keeps its cache and events cursor across a restore.
	AllowSessions bool
	// Plan only compares the backup with the target and returns the plan
	// (RestoreResult.Plan): the target is not written.
	Plan bool
	// Scratch is the server for the comparison's scratch database
	// (default: Target's; the role needs CREATEDB).
	Scratch *pg.Options
	// Jobs > 1 restores in parallel. pg_restore cannot run parallel from a
	// pipe, so the dump is first downloaded to a temporary file in TempDir
	// (and its checksum verified before anything is restored).
	Jobs    int
	TempDir string
	// Keys.Identities open an encrypted backup.
	Keys   Keys
	Tools  Tools
	Logger *slog.Logger
}

// RestoreResult says what was restored and what SPIRE will find.
type RestoreResult struct {
	ID         string              `json:"id"`
	Database   string              `json:"database"`
	Jobs       int                 `json:"jobs"`
	Duration   time.Duration       `json:"duration_ns"`
	SPIRE      spire.Schema        `json:"spire"`
	Compatible spire.Compatibility `json:"compatible_servers"`
	RowCounts  map[string]int64    `json:"row_counts"`
	// SkippedExtensions are monitoring extensions of the dump the target
	// role could neither find nor create: left out (no SPIRE data).
	SkippedExtensions []string `json:"skipped_extensions,omitempty"`
	// Plan is what the restore replaced (or, with Plan, would replace) in
	// a target that was a SPIRE datastore.
	Plan *DiffResult `json:"plan,omitempty"`
	// Planned is true when only the plan was made (nothing restored).
	Planned bool `json:"planned,omitempty"`
}

// NotEmptyError is returned when the target has objects and Clean is off.
type NotEmptyError struct {
	Database  string
	Relations int
	Example   string
}

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("target database %s is not empty (%d relations, e.g. %s): pass --clean to replace its objects, or restore into a new database",
		e.Database, e.Relations, e.Example)
}

// ConnectedError is returned when a restore with Clean would replace a
// database other sessions are connected to (spiredb's own, by
// application_name, do not count).
type ConnectedError struct {
	Database string
	Sessions []Session
}

// Session is another session of the target database.
type Session struct {
	PID             int32  `json:"pid"`
	User            string `json:"user"`
	ApplicationName string `json:"application_name"`
	ClientAddr      string `json:"client_addr,omitempty"`
}

func (s Session) String() string {
	out := fmt.Sprintf("pid %d user %s", s.PID, s.User)
	if s.ApplicationName != "" {
		out += fmt.Sprintf(" application %q", s.ApplicationName)
	}
	if s.ClientAddr != "" {
		out += " from " + s.ClientAddr
	}
	return out
}

func (e *ConnectedError) Error() string {
	names := make([]string, 0, 3)
	for i, s := range e.Sessions {
		if i == 3 {
			names = append(names, fmt.Sprintf("%d more", len(e.Sessions)-3))
			break
		}
		names = append(names, s.String())
	}
	return fmt.Sprintf("refusing to restore --clean into %s: %s connected (%s); a spire-server that stays connected keeps its cache and events cursor "+
		"from before the restore, and what it writes meanwhile is lost: stop the spire-servers (and anything else connected) first, or pass --allow-sessions",
		e.Database, english.Plural(len(e.Sessions), "other session is", "other sessions are"), strings.Join(names, "; "))
}

// otherSessions lists the client sessions of conn's database other than
// conn's own and spiredb's (application_name spiredb…). Without
// pg_read_all_stats, other roles' client addresses read as empty.
func otherSessions(ctx context.Context, conn *pgx.Conn) ([]Session, error) {
	rows, err := conn.Query(ctx, pg.Marker+`SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(pg_catalog.host(client_addr), '')
		FROM pg_catalog.pg_stat_activity
		WHERE datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid()
		  -- another role's backend_type reads as NULL without pg_read_all_stats;
		  -- background workers have no role
		  AND (backend_type = 'client backend' OR backend_type IS NULL AND usesysid IS NOT NULL)
		  AND coalesce(application_name, '') NOT LIKE 'spiredb%'
		ORDER BY pid`)
	if err != nil {
		return nil, fmt.Errorf("listing the target's sessions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Session, error) {
		var s Session
		err := r.Scan(&s.PID, &s.User, &s.ApplicationName, &s.ClientAddr)
		return s, err
	})
}

// Restore restores a backup into the target database.
func Restore(ctx context.Context, o RestoreOptions) (*RestoreResult, error) {
	logger := orDiscard(o.Logger)
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Jobs <= 0 {
		o.Jobs = 1
	}
	// a wrong or missing key fails here, before the target is touched
	m, err := openLogical(ctx, o.Store, o.ID, o.Latest, o.Keys, o.Logger)
	if err != nil {
		return nil, err
	}
	conn, err := pg.Connect(ctx, o.Target)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res := &RestoreResult{ID: m.ID, Jobs: o.Jobs}
	var rels int
	var example *string
	err = conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_database(), count(*),
		min(n.nspname::text || '.' || c.relname::text)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
		  AND n.nspname NOT LIKE 'pg\_temp%'`).Scan(&res.Database, &rels, &example)
	if err != nil {
		return nil, fmt.Errorf("inspecting target: %w", err)
	}
	if o.Plan || (rels > 0 && o.Clean) {
		if err := planRestore(ctx, o, m, conn, res, logger); err != nil || o.Plan {
			return res, err
		}
	}
	// the plan is what the operator must read first; then nobody may be
	// using the database it replaces
	if rels > 0 && o.Clean && !o.AllowSessions {
		sessions, err := otherSessions(ctx, conn)
		if err != nil {
			return nil, err
		}
		if len(sessions) > 0 {
			return res, &ConnectedError{Database: res.Database, Sessions: sessions}
		}
	}
	if rels > 0 && !o.Clean {
		return nil, &NotEmptyError{Database: res.Database, Relations: rels, Example: *example}
	}

	version, err := serverVersionNum(ctx, conn)
	if err != nil {
		return nil, err
	}
	restorer, err := o.Tools.restorer(ctx, m, version)
	if err != nil {
		return nil, err
	}
	// pg_restore goes to the very database inspected above, whatever else
	// the DSN says
	topts := o.Target
	topts.Database = res.Database
	lp, err := pgprog.NewLibpq(topts, "spiredb-restore")
	if err != nil {
		return nil, err
	}
	defer lp.Close()
	env := lp.Env
	args := []string{"--no-owner", "--no-privileges", "--exit-on-error", "--dbname=" + lp.Conninfo}
	if o.Clean {
		args = append(args, "--clean", "--if-exists")
	}
	skipped, extArgs, cleanup, err := leaveOut(ctx, o.Store, m, restorer.Path, "", o.TempDir, conn, false)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	if len(skipped) > 0 {
		res.SkippedExtensions = skipped
		logger.Warn(leftOutDetail(skipped))
		args = append(args, extArgs...)
	}
	start := time.Now()
	logger.Info("restore started", "id", m.ID, "database", res.Database, "jobs", o.Jobs)
	if o.Jobs > 1 {
		err = restoreParallel(ctx, o, m, restorer.Path, args, env, logger)
	} else {
		err = restoreStream(ctx, o, m, restorer.Path, args, env, logger)
	}
	if err != nil {
		return nil, err
	}
	res.Duration = time.Since(start)

	if res.SPIRE, err = spire.ReadSchema(ctx, conn); err != nil {
		return nil, err
	}
	res.Compatible = spire.Compatible(res.SPIRE)
	if res.RowCounts, err = spire.CountRows(ctx, conn, res.SPIRE.Schema); err != nil {
		return nil, err
	}
	for t, want := range m.RowCounts {
		if got := res.RowCounts[t]; got != want {
			return res, fmt.Errorf("restored %s has %d rows, the manifest %d", t, got, want)
		}
	}
	logger.Info("restore done", "id", m.ID, "duration", res.Duration.Round(time.Millisecond))
	return res, nil
}

// openLogical checks the store, finds the logical backup (id, or the
// newest) and opens its data key: a missing backup or a wrong or missing
// identity fails before anything is written anywhere.
func openLogical(ctx context.Context, s Store, id string, latest bool, keys Keys, logger *slog.Logger) (*Manifest, error) {
	if err := s.Check(ctx); err != nil {
		return nil, err
	}
	m, err := find(ctx, s, id, latest, KindLogical, oneSource, logger)
	if err != nil {
		return nil, err
	}
	if err := m.Unlock(keys.Identities); err != nil {
		return nil, err
	}
	return m, nil
}

// planRestore compares the backup with a target that is a SPIRE
// datastore. It refuses (a *LossError with res.Plan set) when the target
// changed since the backup and AcceptLoss is off; with AcceptLoss a failed
// comparison (a damaged target, say) is logged and the restore goes on.
func planRestore(ctx context.Context, o RestoreOptions, m *Manifest, conn *pgx.Conn, res *RestoreResult, logger *slog.Logger) error {
	if o.Plan {
		res.Planned = true
	}
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		return err
	}
	if !s.Present {
		if o.Plan {
			logger.Info("the target has no SPIRE schema: a restore replaces no SPIRE data", "database", res.Database)
		}
		return nil
	}
	topts := o.Target
	topts.Database = res.Database
	scratch := topts
	if o.Scratch != nil {
		scratch = *o.Scratch
	}
	plan, err := diffManifest(ctx, DiffOptions{Store: o.Store, Live: topts, Scratch: scratch, Jobs: o.Jobs, TempDir: o.TempDir,
		Tools: o.Tools, Keys: o.Keys, Logger: o.Logger}, m)
	if err != nil {
		if o.AcceptLoss && !o.Plan && ctx.Err() == nil {
			logger.Warn("could not compare the target with the backup; restoring anyway (--accept-loss)", "err", err)
			return nil
		}
		return fmt.Errorf("comparing target %s with backup %s before restoring over it: %w", res.Database, m.ID, err)
	}
	res.Plan = plan
	if plan.Findings > 0 && !o.AcceptLoss && !o.Plan {
		return &LossError{Database: res.Database, Plan: plan}
	}
	if plan.Findings > 0 && !o.Plan {
		logger.Warn("restoring over changes made since the backup (--accept-loss)", "database", res.Database, "id", m.ID, "findings", plan.Findings)
	}
	return nil
}

// restoreStream pipes the object into one pg_restore running in a single
// transaction. The last megabyte is held back until the whole object's
// checksum is verified: pg_restore cannot reach its COMMIT without it, so on
// a mismatch it is killed and the target is left as it was.
func restoreStream(ctx context.Context, o RestoreOptions, m *Manifest, path string, args, env []string, logger *slog.Logger) error {
	rc, err := o.Store.Get(ctx, dumpKey(m.ID))
	if err != nil {
		return err
	}
	defer rc.Close()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stderr := pgprog.NewOutput(logger, "pg_restore")
	cmd := pgprog.Command(rctx, path, env, nil, stderr, append(args, "--single-transaction")...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pg_restore: %w", err)
	}
	h := sha256.New()
	hold := &holdback{w: &forgivingWriter{w: stdin}, keep: 1 << 20}
	// the stored bytes are hashed; pg_restore gets them decoded, all but
	// the last megabyte until the hash is checked
	// (a damaged object keeps being read to its end: the checksum says why)
	dec := decodingWriter(m, hold)
	fw := &forgivingWriter{w: dec}
	n, copyErr := io.Copy(fw, io.TeeReader(rc, h))
	derr := dec.Close()
	if copyErr == nil {
		copyErr = checkSum(m, n, h)
	}
	if copyErr == nil && (derr != nil || fw.err != nil) {
		copyErr = fmt.Errorf("decompressing: %w", errors.Join(derr, fw.err))
	}
	if copyErr == nil {
		copyErr = hold.release()
	}
	if copyErr != nil {
		cancel() // kill pg_restore before it commits
		_ = stdin.Close()
		_ = cmd.Wait()
		return fmt.Errorf("restore of %s aborted, the target is unchanged: %w", m.ID, copyErr)
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("pg_restore failed (%w): %s", err, stderr.Tail())
	}
	return nil
}

// restoreParallel downloads the dump to a temporary file, checks it, and
// runs pg_restore -j.
func restoreParallel(ctx context.Context, o RestoreOptions, m *Manifest, path string, args, env []string, logger *slog.Logger) error {
	f, err := os.CreateTemp(o.TempDir, "spiredb-restore-*.dump")
	if err != nil {
		return fmt.Errorf("creating temporary file for the parallel restore: %w", err)
	}
	defer os.Remove(f.Name())
	logger.Info("parallel restore: downloading the dump to a temporary file first (pg_restore cannot run parallel from a pipe)",
		"file", f.Name(), "bytes", m.Size)
	rc, err := o.Store.Get(ctx, dumpKey(m.ID))
	if err != nil {
		_ = f.Close()
		return err
	}
	h := sha256.New()
	sc := pgarchive.NewScanner()
	defer func() { _ = sc.Close() }()
	dec := decodingWriter(m, io.MultiWriter(f, sc))
	fw := &forgivingWriter{w: dec}
	n, err := io.Copy(io.MultiWriter(fw, h), rc)
	_ = rc.Close()
	derr := dec.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("downloading %s: %w", dumpKey(m.ID), err)
	}
	if err := checkSum(m, n, h); err != nil {
		return fmt.Errorf("restore of %s not started: %w", m.ID, err)
	}
	if derr != nil || fw.err != nil {
		return fmt.Errorf("restore of %s not started: decompressing: %w", m.ID, errors.Join(derr, fw.err))
	}
	setDataOffsets(sc, f.Name(), logger)
	stderr := pgprog.NewOutput(logger, "pg_restore")
	if err := pgprog.Command(ctx, path, env, nil, stderr, append(args, "--jobs="+strconv.Itoa(o.Jobs), f.Name())...).Run(); err != nil {
		return fmt.Errorf("pg_restore failed (%w): %s", err, stderr.Tail())
	}
	return nil
}

func checkSum(m *Manifest, n int64, h hash.Hash) error {
	if n != m.Size {
		return fmt.Errorf("size mismatch: read %d bytes, manifest says %d", n, m.Size)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != m.SHA256 {
		return errors.New("sha256 mismatch: the stored object is corrupted")
	}
	return nil
}

// holdback passes writes through except for the last keep bytes, which it
// writes only on release.
type holdback struct {
	w    io.Writer
	keep int
	buf  []byte
}

func (h *holdback) Write(p []byte) (int, error) {
	h.buf = append(h.buf, p...)
	// flush only when twice the hold-back has built up: each byte is moved
	// at most once more, whatever the write size
	if len(h.buf) >= 2*h.keep {
		over := len(h.buf) - h.keep
		if _, err := h.w.Write(h.buf[:over]); err != nil {
			return 0, err
		}
		h.buf = append(h.buf[:0], h.buf[over:]...)
	}
	return len(p), nil
}

func (h *holdback) release() error {
	_, err := h.w.Write(h.buf)
	h.buf = nil
	return err
}
