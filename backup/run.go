package backup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgarchive"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/internal/version"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// lockName names the session advisory lock a backup holds on its source
// database (advisory locks are per database, so one name is enough).
const lockName = "backup"

// ErrBackupRunning is returned when another backup of the same database
// holds the lock. Two CronJob pods starting at once is normal: the second
// one reports it and exits 0.
var ErrBackupRunning = errors.New("another backup of this database is running")

// Progress reports bytes written so far.
type Progress func(done int64, elapsed time.Duration)

// RunOptions configure Run.
type RunOptions struct {
	Conn  pg.Options
	Store Store
	// Codec is CodecZstd (the default when empty: pg_dump writes an
	// uncompressed archive, spiredb compresses it with zstd on two cores) or
	// CodecPgDump (pg_dump compresses, at Compress).
	Codec string
	// Compress is pg_dump's -Z level 0-9 with CodecPgDump; -1 keeps
	// pg_dump's default. With CodecZstd it must be -1 or 0.
	Compress int
	Label    string
	// Keys.Recipients, when set, encrypt the dump (age envelope).
	Keys     Keys
	Tools    Tools
	Logger   *slog.Logger
	Progress Progress
}

// Run streams pg_dump -Fc of the database into the store and writes the
// manifest after the data. It returns ErrBackupRunning when another backup
// of the database is in progress.
func Run(ctx context.Context, o RunOptions) (*Manifest, error) {
	logger := orDiscard(o.Logger)
	if err := o.Validate(); err != nil {
		return nil, err
	}
	conn, release, err := lockedSession(ctx, o.Store, o.Conn, lockName)
	if err != nil {
		return nil, err
	}
	defer release()

	m := &Manifest{Label: o.Label, Format: "custom", Compression: o.Compress, Codec: o.codec(), SpiredbVersion: version.String()}
	if m.Codec == CodecZstd {
		m.Compression = 0
	}
	var dbBytes int64
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_database(), pg_catalog.current_setting('server_version'),
		pg_catalog.current_setting('server_version_num')::int, pg_catalog.pg_database_size(pg_catalog.current_database()),
		`+systemIdentifierSQL).
		Scan(&m.Database, &m.ServerVersion, &m.ServerVersionNum, &dbBytes, &m.SystemIdentifier); err != nil {
		return nil, fmt.Errorf("reading server version: %w", err)
	}
	store := o.Store
	if s, ok := store.(sizer); ok {
		// a dump is smaller than the database it comes from (no index
		// data), so the database size bounds the part count safely
		store = s.ForSize(dbBytes)
	}
	dumper, err := o.Tools.dumper(ctx, m.ServerVersionNum)
	if err != nil {
		return nil, err
	}
	if m.PgDumpVersion, _, err = pgprog.FullVersion(ctx, dumper.Path); err != nil {
		return nil, err
	}

	// Export a snapshot; count SPIRE's rows in it; pg_dump dumps the same
	// snapshot. The exporting transaction stays open until pg_dump is done.
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("starting snapshot transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, pg.Marker+"SET LOCAL idle_in_transaction_session_timeout = 0"); err != nil {
		return nil, err
	}
	var snapshot string
	if err := tx.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_export_snapshot()").Scan(&snapshot); err != nil {
		return nil, fmt.Errorf("exporting snapshot: %w", err)
	}
	m.StartedAt = time.Now().UTC()
	m.ID = newID(m.StartedAt)
	logger.Info("backup started", "id", m.ID, "database", m.Database, "store", o.Store.String(), "snapshot", snapshot)

	args := []string{"--format=custom", "--snapshot=" + snapshot, "--no-password"}
	if m.Codec == CodecZstd || o.Compress >= 0 {
		args = append(args, "--compress="+strconv.Itoa(m.Compression))
	}
	// pg_dump dumps the database this session is in, whatever else the
	// DSN says
	dopts := o.Conn
	dopts.Database = m.Database
	lp, err := pgprog.NewLibpq(dopts, "spiredb-backup")
	if err != nil {
		return nil, err
	}
	defer lp.Close()
	env := lp.Env
	args = append(args, "--dbname="+lp.Conninfo)
	dumpCtx, cancelDump := context.WithCancel(ctx)
	defer cancelDump()
	stderr := pgprog.NewOutput(logger, "pg_dump")
	cmd := pgprog.Command(dumpCtx, dumper.Path, env, nil, stderr, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_dump: %w", err)
	}
	// SPIRE's schema comes from the exported snapshot, read while pg_dump
	// streams that same snapshot. Its row counts are the rows of the dump
	// itself, counted as it streams by (zstd: pg_dump does not compress),
	// rather than a second full read of every table by the server, which
	// shares its CPU with pg_dump's COPY; else counted in the snapshot.
	var dumpScan *pgarchive.Scanner
	if m.Codec == CodecZstd {
		dumpScan = pgarchive.NewScanner()
		defer func() { _ = dumpScan.Close() }()
	}
	var schema spire.Schema
	var present []string
	counted := make(chan error, 1)
	go func() {
		var err error
		schema, err = spire.ReadSchema(dumpCtx, tx)
		if unreadSPIRE(err, logger) {
			counted <- nil
			return
		}
		if err == nil {
			if schema.Present {
				m.SPIRE = &SPIREInfo{SchemaVersion: schema.Version, CodeVersion: schema.CodeVersion, Schema: schema.Schema}
			}
			if dumpScan != nil {
				present, err = spire.PresentTables(dumpCtx, tx, schema.Schema)
			} else {
				m.RowCounts, err = spire.CountRows(dumpCtx, tx, schema.Schema)
			}
		}
		counted <- err
	}()
	src := &dumpReader{r: stdout, cmd: cmd, stderr: stderr, hash: sha256.New(), start: time.Now(), progress: o.Progress}
	// what is stored, and hashed for the manifest: pg_dump's archive, or
	// its zstd compression, encrypted with recipients
	stored, storedHash := io.Reader(src), src.hash
	encrypted := make(chan *Encryption, 1)
	if m.Codec == CodecZstd || len(o.Keys.Recipients) > 0 {
		pr, pw := io.Pipe()
		// only the stored bytes are hashed: pg_dump's are not kept
		src.hash, storedHash = nil, sha256.New()
		stored = pr
		var compress func(io.Writer) (io.WriteCloser, error)
		if m.Codec == CodecZstd {
			compress = zstdDump
		}
		go func() {
			w, enc, err := encodingWriter(io.MultiWriter(pw, storedHash), compress, o.Keys.Recipients)
			encrypted <- enc
			if err == nil {
				var r io.Reader = src
				if dumpScan != nil {
					r = io.TeeReader(src, dumpScan)
				}
				_, err = io.Copy(w, r)
				if cerr := w.Close(); err == nil {
					err = cerr
				}
			}
			pw.CloseWithError(err)
		}()
		defer pr.Close()
	} else {
		encrypted <- nil
	}
	size, err := store.Put(ctx, dumpKey(m.ID), stored)
	if err != nil {
		cancelDump()
	}
	if cerr := <-counted; err == nil && cerr != nil {
		return nil, fmt.Errorf("counting SPIRE rows in the backup snapshot: %w", cerr)
	}
	if err != nil {
		if src.failed { // pg_dump failed on its own: that is the cause
			return nil, src.dumpErr()
		}
		src.wait()
		return nil, fmt.Errorf("writing backup %s: %w", m.ID, err)
	}
	// Put has read to EOF, so pg_dump has exited and succeeded.
	if derr := src.dumpErr(); derr != nil {
		return nil, derr
	}
	if dumpScan != nil {
		if m.RowCounts, err = dumpRowCounts(dumpScan, schema.Schema, present); err != nil {
			logger.Warn("counting SPIRE rows in the snapshot instead of the dump", "err", err)
			if m.RowCounts, err = spire.CountRows(ctx, tx, schema.Schema); err != nil {
				return nil, fmt.Errorf("counting SPIRE rows in the backup snapshot: %w", err)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("ending snapshot transaction: %w", err)
	}
	m.Size = size
	m.SHA256 = hex.EncodeToString(storedHash.Sum(nil))
	m.Encryption = <-encrypted
	m.FinishedAt = time.Now().UTC()
	if err := putJSON(ctx, o.Store, manifestKey(m.ID), m); err != nil {
		return nil, fmt.Errorf("writing manifest of %s (the data is stored but the backup does not count until prune removes it): %w", m.ID, err)
	}
	logger.Info("backup done", "id", m.ID, "bytes", m.Size, "duration", m.FinishedAt.Sub(m.StartedAt).Round(time.Millisecond))
	return m, nil
}

func (o RunOptions) codec() string {
	if o.Codec == "" {
		return CodecZstd
	}
	return o.Codec
}

// lockedSession checks that the store takes writes, opens a session of its
// own (the lock and pg_dump's snapshot need one: no transaction pooler) and
// takes the backup's advisory lock there; ErrBackupRunning when another
// backup holds it. release ends the lock and the session.
func lockedSession(ctx context.Context, s Store, opts pg.Options, name string) (*pgx.Conn, func(), error) {
	if err := checkWrite(ctx, s); err != nil {
		return nil, nil, err
	}
	// a backup must not stop over another role's functions on the
	// search_path (doctor reports them): its own statements call
	// pg_catalog's alone, by qualified name, and pg_dump sets an empty
	// search_path
	opts.TrustSearchPath = true
	conn, err := pg.Connect(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	closeConn := func() { conn.Close(context.WithoutCancel(ctx)) }
	if err := pg.RequireSession(ctx, conn, opts); err != nil {
		closeConn()
		return nil, nil, err
	}
	lock, locked, err := pg.TryAdvisoryLock(ctx, conn, name)
	if err == nil && !locked {
		err = ErrBackupRunning
	}
	if err != nil {
		closeConn()
		return nil, nil, err
	}
	return conn, func() { lock.Unlock(ctx); closeConn() }, nil
}

// newID is sortable by time and unique: 20261127T142235Z-1a2b3c.
func newID(t time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

// dumpReader reads pg_dump's stdout, hashing and counting. At EOF it waits
// for pg_dump and turns a failed exit into a read error, so that the store
// aborts the upload instead of completing a broken object.
type dumpReader struct {
	r        io.Reader
	cmd      *exec.Cmd
	stderr   *pgprog.Output
	hash     hash.Hash
	n        int64
	start    time.Time
	lastTick time.Time
	progress Progress
	what     string // the program, for errors (default pg_dump)

	once    sync.Once
	waitErr error
	failed  bool // pg_dump exited with an error before we stopped it
}

func (d *dumpReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if n > 0 {
		if d.hash != nil {
			d.hash.Write(p[:n])
		}
		d.n += int64(n)
		if d.progress != nil && time.Since(d.lastTick) > 200*time.Millisecond {
			d.lastTick = time.Now()
			d.progress(d.n, time.Since(d.start))
		}
	}
	if errors.Is(err, io.EOF) {
		d.wait()
		if d.waitErr != nil {
			d.failed = true
			return n, d.dumpErr()
		}
		if d.progress != nil {
			d.progress(d.n, time.Since(d.start))
		}
	}
	return n, err
}

func (d *dumpReader) wait() { d.once.Do(func() { d.waitErr = d.cmd.Wait() }) }

func (d *dumpReader) dumpErr() error {
	if d.waitErr == nil {
		return nil
	}
	what := d.what
	if what == "" {
		what = "pg_dump"
	}
	return fmt.Errorf("%s failed (%w): %s", what, d.waitErr, d.stderr.Tail())
}

// dumpRowCounts returns the rows the dump holds for each of present, SPIRE's
// tables in schema nsp.
// unreadSPIRE says whether err refuses to read SPIRE's schema because a
// relation of SPIRE's name would run its owner's code with spiredb's
// privileges (spire.ForeignCodeError), or because more than one schema
// looks like SPIRE's (spire.AmbiguousSchemaError). A backup goes on
// without reading it: the manifest has no SPIRE schema or row counts, and
// the log says why.
func unreadSPIRE(err error, logger *slog.Logger) bool {
	var foreign *spire.ForeignCodeError
	var ambiguous *spire.AmbiguousSchemaError
	if !errors.As(err, &foreign) && !errors.As(err, &ambiguous) {
		return false
	}
	logger.Warn("backing up without SPIRE's schema and row counts in the manifest", "err", err)
	return true
}

func dumpRowCounts(c *pgarchive.Scanner, nsp string, present []string) (map[string]int64, error) {
	rows, err := c.Rows()
	if err != nil {
		return nil, err
	}
	if nsp == "" {
		nsp = "public"
	}
	counts := make(map[string]int64, len(present))
	for _, t := range present {
		n, ok := rows[pgarchive.Table{Schema: nsp, Name: t}]
		if !ok {
			return nil, fmt.Errorf("the dump has no data block for %s.%s", nsp, t)
		}
		counts[t] = n
	}
	return counts, nil
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
