package backup

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// PhysicalRestoreOptions configure RestorePhysical.
type PhysicalRestoreOptions struct {
	Store Store
	// ID restores this base backup; empty picks the newest whose window
	// holds Target.
	ID     string
	Target Target
	// DataDir is the new data directory: absent or empty.
	DataDir string
	// FetchCommand is the restore_command PostgreSQL runs, e.g.
	// spiredb wal fetch %f %p --store s3://bucket/prefix.
	FetchCommand string
	// PrepareOnly writes the base and the recovery settings and leaves the
	// recovery to the PostgreSQL the operator starts on DataDir. Otherwise
	// spiredb runs the recovery itself (it needs the postgres binary of the
	// base's major) and leaves a cleanly shut down data directory on a new
	// timeline at the target.
	PrepareOnly bool
	// Keys.Identities open an encrypted base.
	Keys   Keys
	Tools  Tools
	Logger *slog.Logger

	// whileRunning, when set, runs against the recovered server before it
	// is shut down (verify --level pitr).
	whileRunning func(ctx context.Context, conn pg.Options) error
}

// PhysicalRestoreResult says what a point-in-time restore reached.
type PhysicalRestoreResult struct {
	BaseID  string `json:"base_id"`
	DataDir string `json:"data_dir"`
	Target  string `json:"target"`
	Window  Window `json:"window"`
	// Prepared: the recovery is left to the operator's PostgreSQL.
	Prepared bool `json:"prepared"`
	// ReachedLSN and ReachedTime are the last replayed record and the last
	// replayed transaction's commit time.
	ReachedLSN  LSN        `json:"reached_lsn,omitempty"`
	ReachedTime *time.Time `json:"reached_time,omitempty"`
	// EndOfArchive: no transaction after the target was archived, so the
	// restore ends at the archive's end, which is the same state.
	EndOfArchive bool `json:"end_of_archive"`
	// ArchivingOff: archive_mode = off was added to the restored
	// directory's postgresql.auto.conf, so that the copy does not archive
	// its new timeline into the store it came from.
	ArchivingOff bool          `json:"archiving_off"`
	Timeline     uint32        `json:"timeline,omitempty"`
	Duration     time.Duration `json:"duration_ns"`
}

// RestorePhysical restores a base backup and replays the archived WAL to
// the target. A target outside every restorable window is refused before
// anything is written, with the windows in the error.
func RestorePhysical(ctx context.Context, o PhysicalRestoreOptions) (*PhysicalRestoreResult, error) {
	logger := orDiscard(o.Logger)
	start := time.Now()
	if o.Store == nil {
		return nil, errors.New("restore: no store")
	}
	if err := o.Target.validate(); err != nil {
		return nil, err
	}
	if o.DataDir == "" || !filepath.IsAbs(o.DataDir) {
		return nil, fmt.Errorf("--data-dir must be an absolute path, got %q", o.DataDir)
	}
	if o.FetchCommand == "" {
		return nil, errors.New("restore: no restore_command (FetchCommand)")
	}
	if err := o.Store.Check(ctx); err != nil {
		return nil, err
	}
	m, w, err := chooseBase(ctx, o.Store, o.ID, o.Target, logger)
	if err != nil {
		return nil, err
	}
	// a wrong or missing key fails before the directory is touched
	if err := m.Unlock(o.Keys.Identities); err != nil {
		return nil, err
	}
	major := m.ServerVersionNum / 10000
	var postgres *pgprog.Program
	if !o.PrepareOnly {
		if postgres, err = pgprog.Find(ctx, pgprog.Request{Name: "postgres", BinDir: o.Tools.BinDir, Major: major, Match: pgprog.Exact}); err != nil {
			return nil, fmt.Errorf("recovering needs the PostgreSQL %d server: %w (or pass --prepare-only and start your own server on the directory)", major, err)
		}
	}
	cleanup, err := emptyDir(o.DataDir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			cleanup()
		}
	}()
	cred, err := pgprog.Credential(o.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(o.DataDir, 0o700); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(o.DataDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	res := &PhysicalRestoreResult{BaseID: m.ID, DataDir: o.DataDir, Target: o.Target.String(), Window: w}
	logger.Info("restoring base backup", "id", m.ID, "window", w.String(), "target", o.Target.String(), "data_dir", o.DataDir)
	if err := downloadBase(ctx, o.Store, m, o.DataDir, cred); err != nil {
		return nil, err
	}
	// Debian keeps postgresql.conf in /etc/postgresql, outside the data
	// directory, so a base of such a cluster has none; postgres will not
	// start without one
	if _, err := os.Stat(filepath.Join(o.DataDir, "postgresql.conf")); errors.Is(err, os.ErrNotExist) {
		logger.Warn("the base has no postgresql.conf (the cluster kept it outside the data directory): an empty one is written; start the server with your configuration")
		if err := writeOwned(filepath.Join(o.DataDir, "postgresql.conf"), []byte("# written by spiredb backup restore --physical: the base had none\n"), cred); err != nil {
			return nil, err
		}
	}
	settings := recoverySettings(o.FetchCommand, o.Target)
	if err := writeOwned(filepath.Join(o.DataDir, "recovery.signal"), nil, cred); err != nil {
		return nil, err
	}
	if o.PrepareOnly {
		settings["recovery_target_action"] = "promote"
		settings["archive_mode"] = "off" // see below
		if err := appendAutoConf(o.DataDir, settings, cred); err != nil {
			return nil, err
		}
		res.Prepared = true
		res.Duration = time.Since(start)
		ok = true
		return res, nil
	}
	r := &recovery{postgres: postgres.Path, dataDir: o.DataDir, cred: cred, role: m.Physical.BootstrapRole, database: m.Database, logger: logger}
	if err := r.run(ctx, settings, o.Target, w, res, o.whileRunning); err != nil {
		return nil, err
	}
	if res.EndOfArchive || o.Target.Latest {
		if err := reachedArchiveEnd(ctx, o.Store, res, m.Physical.SegmentSize, o.Target); err != nil {
			return nil, err
		}
	}
	_ = os.RemoveAll(filepath.Join(o.DataDir, "pg_wal", ".spiredb-prefetch"))
	// the base's archive_command points at this store: a restored copy
	// started as is would push its new timeline there, and later restores
	// (recovery_target_timeline = latest) would follow that branch. Off
	// until the operator makes it the primary and turns it back on.
	if err := appendAutoConf(o.DataDir, map[string]string{"archive_mode": "off"}, cred); err != nil {
		return nil, err
	}
	res.ArchivingOff = true
	res.Duration = time.Since(start)
	ok = true
	logger.Info("point-in-time restore done", "id", m.ID, "reached_lsn", res.ReachedLSN, "timeline", res.Timeline, "duration", res.Duration.Round(time.Millisecond))
	return res, nil
}

// recoverySettings are the recovery parameters for target.
func recoverySettings(fetch string, t Target) map[string]string {
	s := map[string]string{
		"restore_command":          fetch,
		"recovery_target_timeline": "latest",
	}
	switch {
	case !t.Time.IsZero():
		s["recovery_target_time"] = t.Time.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
	case t.LSN != 0:
		s["recovery_target_lsn"] = t.LSN.String()
	}
	if !t.Latest {
		// pause at the target so that the point reached can be read, then
		// resume, which ends recovery
		s["recovery_target_action"] = "pause"
	}
	return s
}

// downloadBase streams the base's object through sha256, zstd and tar into
// dir; a checksum mismatch fails the restore (the caller removes dir).
func downloadBase(ctx context.Context, s Store, m *Manifest, dir string, cred *syscall.Credential) error {
	rc, err := s.Get(ctx, m.dataKey())
	if err != nil {
		return fmt.Errorf("reading base backup %s: %w", m.ID, err)
	}
	defer rc.Close()
	hash := sha256.New()
	counted := &countingReader{r: io.TeeReader(ctxReader{ctx, rc}, hash)}
	plain, err := m.opened(counted)
	if err != nil {
		return err
	}
	dec, err := zstd.NewReader(plain, zstd.WithDecoderConcurrency(2))
	if err != nil {
		return err
	}
	defer dec.Close()
	if err := extractTar(dec, dir, cred); err != nil {
		return fmt.Errorf("restoring base backup %s: %w", m.ID, err)
	}
	// the tar ends before the stream does: read the rest for the checksum
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return err
	}
	if got := hex.EncodeToString(hash.Sum(nil)); counted.n != m.Size || got != m.SHA256 {
		return fmt.Errorf("base backup %s is damaged: %d bytes with sha256 %s, the manifest says %d bytes with %s", m.ID, counted.n, got[:12], m.Size, m.SHA256[:12])
	}
	return nil
}

// extractTar writes a pg_basebackup tar into dir, owned by cred's user.
// Names that would leave dir are refused.
func extractTar(r io.Reader, dir string, cred *syscall.Credential) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(h.Name))
		if name == "." {
			continue
		}
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("unsafe path %q in the base backup", h.Name)
		}
		path := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			return fmt.Errorf("the base backup has a symbolic link %s → %s (a tablespace): not supported", h.Name, h.Linkname)
		default:
			continue
		}
		if cred != nil {
			if err := os.Lchown(path, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
	}
}

func writeOwned(path string, b []byte, cred *syscall.Credential) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return err
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}

// appendAutoConf adds settings to postgresql.auto.conf.
func appendAutoConf(dir string, settings map[string]string, cred *syscall.Credential) error {
	path := filepath.Join(dir, "postgresql.auto.conf")
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var b strings.Builder
	b.Write(old)
	b.WriteString("# written by spiredb backup restore --physical (archive_mode: ALTER SYSTEM RESET archive_mode once this server is the primary)\n")
	for _, k := range sortedKeys(settings) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	return writeOwned(path, []byte(b.String()), cred)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// recovery runs a private postmaster on a restored data directory: no TCP,
// a Unix socket in a directory only it can reach, trust for local
// connections there only, no archiving (a restored cluster must not push
// its new timeline into the store it came from while spiredb recovers it).
type recovery struct {
	postgres, dataDir string
	cred              *syscall.Credential
	role, database    string
	logger            *slog.Logger
}

// ShortOfArchiveError is returned when a recovery to the archive's end
// (--latest, or a target after the archive's last commit) stopped before
// an archived segment of the timeline it was on: PostgreSQL takes a segment restore_command
// cannot deliver (damaged, deleted meanwhile, the store unreachable) for
// the archive's end, so the restored state would silently lack every
// transaction after it.
type ShortOfArchiveError struct {
	Target  string
	Reached LSN
	// Segment is the first segment recovery did not replay.
	Segment string
	LastWAL string
}

func (e *ShortOfArchiveError) Error() string {
	return fmt.Sprintf("restore to %s stopped at %s, short of the archive's end (%s): segment %s could not be fetched (check it with spiredb backup verify --level pitr and the wal fetch lines of the server log); the restored directory was removed",
		e.Target, e.Reached, e.LastWAL, e.Segment)
}

// reachedArchiveEnd checks that a recovery to the archive's end replayed
// every archived segment of the timeline it ended on: when the archive
// holds that timeline's segment after the point reached (the one starting
// there, at a segment boundary), recovery stopped because restore_command
// could not deliver it. The timeline is the new one's parent, from the
// history file the promotion wrote; segments of a timeline recovery did not
// follow (an old primary's, archived after a failover) do not count.
func reachedArchiveEnd(ctx context.Context, s Store, res *PhysicalRestoreResult, segSize int64, t Target) error {
	parent, ok := parentTimeline(res.DataDir, res.Timeline)
	if !ok {
		return nil
	}
	files, _, err := ListWAL(ctx, s)
	if err != nil {
		return err
	}
	next := res.ReachedLSN.SegNo(segSize)
	if uint64(res.ReachedLSN)%uint64(segSize) != 0 {
		next++ // the segment the point reached is in was replayed
	}
	var missing WALFile
	var last WALFile
	for _, f := range files {
		if f.Kind != WALSegment || f.TLI != parent {
			continue
		}
		if n := f.SegNo(segSize); n >= next {
			if missing.Name == "" || n < missing.SegNo(segSize) {
				missing = f
			}
			if n > last.SegNo(segSize) || last.Name == "" {
				last = f
			}
		}
	}
	if missing.Name == "" {
		return nil
	}
	return &ShortOfArchiveError{Target: t.String(), Reached: res.ReachedLSN, LastWAL: last.Name, Segment: missing.Name}
}

// parentTimeline reads, from the history file a promotion to timeline tli
// wrote in dataDir's pg_wal, the timeline it branched from.
func parentTimeline(dataDir string, tli uint32) (uint32, bool) {
	b, err := os.ReadFile(filepath.Join(dataDir, "pg_wal", fmt.Sprintf("%08X.history", tli)))
	if err != nil {
		return 0, false
	}
	var parent uint32
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if v, err := strconv.ParseUint(fields[0], 10, 32); err == nil {
			parent, found = uint32(v), true
		}
	}
	return parent, found
}

const endedBeforeTarget = "recovery ended before configured recovery target was reached"

func (r *recovery) run(ctx context.Context, settings map[string]string, t Target, w Window, res *PhysicalRestoreResult, whileRunning func(context.Context, pg.Options) error) error {
	sock, err := os.MkdirTemp("", "spiredb-recovery-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sock)
	if r.cred != nil {
		if err := os.Chown(sock, int(r.cred.Uid), int(r.cred.Gid)); err != nil {
			return err
		}
	}
	hba := filepath.Join(sock, "pg_hba.conf")
	if err := writeOwned(hba, []byte("local all all trust\n"), r.cred); err != nil {
		return err
	}
	if err := writeOwned(filepath.Join(sock, "pg_ident.conf"), nil, r.cred); err != nil {
		return err
	}
	logPath := filepath.Join(sock, "postgres.log")
	for attempt := 0; ; attempt++ {
		err := r.once(ctx, sock, hba, logPath, settings, res, whileRunning)
		if err == nil {
			return nil
		}
		log, _ := os.ReadFile(logPath)
		// the archive holds no commit after the target: replaying to its
		// end yields the target's state (the window said the target is
		// before the last segment was complete)
		if attempt == 0 && !t.Latest && strings.Contains(string(log), endedBeforeTarget) {
			r.logger.Info("no transaction after the target was archived: recovering to the archive's end, the same state", "target", t.String())
			for _, k := range []string{"recovery_target_time", "recovery_target_lsn", "recovery_target_action"} {
				delete(settings, k)
			}
			res.EndOfArchive = true
			continue
		}
		return fmt.Errorf("%w; server log: %s", err, lastLogLines(string(log), 4))
	}
}

// lastLogLines picks the server log lines that say why it stopped: its
// FATAL and PANIC lines when there are any, else the last n.
func lastLogLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var fatal []string
	for _, l := range lines {
		if strings.Contains(l, "FATAL:") || strings.Contains(l, "PANIC:") {
			fatal = append(fatal, strings.TrimSpace(l))
		}
	}
	if len(fatal) > 0 {
		lines = fatal
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// once starts the server, waits for the target, ends recovery, runs
// whileRunning and shuts the server down cleanly.
func (r *recovery) once(ctx context.Context, sock, hba, logPath string, settings map[string]string, res *PhysicalRestoreResult, whileRunning func(context.Context, pg.Options) error) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"-D", r.dataDir,
		"-c", "listen_addresses=", "-c", "unix_socket_directories=" + sock, "-c", "port=5432",
		"-c", "hba_file=" + hba, "-c", "ident_file=" + filepath.Join(sock, "pg_ident.conf"), "-c", "ssl=off", "-c", "archive_mode=off", "-c", "hot_standby=on",
		"-c", "shared_preload_libraries=", "-c", "logging_collector=off", "-c", "log_destination=stderr",
		"-c", "cluster_name=spiredb-recovery"}
	for _, k := range sortedKeys(settings) {
		args = append(args, "-c", k+"="+settings[k])
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := pgprog.Command(runCtx, r.postgres, nil, r.cred, nil, args...)
	cmd.Stderr = logf
	cmd.Stdout = logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = time.Minute
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown: a clean checkpoint
		select {
		case err := <-exited:
			return err
		case <-time.After(5 * time.Minute):
			_ = cmd.Process.Kill()
			return errors.New("postgres did not shut down in 5 minutes")
		}
	}
	opts := pg.Options{DSN: fmt.Sprintf("host=%s port=5432 user=%s dbname=%s connect_timeout=5", sock, quoteKV(r.role), quoteKV(r.database))}
	conn, err := r.waitDone(ctx, opts, exited, res)
	if err != nil {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
		select {
		case werr := <-exited:
			_ = werr // it exited on its own: waitDone's error says so
		default:
			_ = stop()
		}
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if whileRunning != nil {
		if err := whileRunning(ctx, opts); err != nil {
			_ = stop()
			return err
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		_ = stop()
		return fmt.Errorf("checkpoint after recovery: %w", err)
	}
	conn.Close(ctx)
	if err := stop(); err != nil {
		return fmt.Errorf("shutting down the recovered server: %w", err)
	}
	return nil
}

func quoteKV(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// waitDone waits until recovery pauses at the target (then reads the point
// reached and resumes, which ends recovery) or ends on its own, and the
// server runs as a primary.
func (r *recovery) waitDone(ctx context.Context, opts pg.Options, exited chan error, res *PhysicalRestoreResult) (*pgx.Conn, error) {
	var conn *pgx.Conn
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		select {
		case err := <-exited:
			exited <- err
			return conn, fmt.Errorf("postgres exited during recovery (%w)", err)
		case <-ctx.Done():
			return conn, ctx.Err()
		case <-tick.C:
		}
		if conn == nil {
			c, err := pg.Connect(ctx, opts)
			if err != nil {
				continue // starting up, not yet consistent
			}
			conn = c
		}
		var inRecovery, paused bool
		var lsn *string
		var ts *time.Time
		err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_is_in_recovery() AND pg_catalog.pg_is_wal_replay_paused(),
			pg_catalog.pg_last_wal_replay_lsn()::text, pg_catalog.pg_last_xact_replay_timestamp()`).Scan(&inRecovery, &paused, &lsn, &ts)
		if err != nil {
			conn.Close(ctx)
			conn = nil
			continue
		}
		if lsn != nil {
			res.ReachedLSN, _ = ParseLSN(*lsn)
		}
		if ts != nil {
			t := ts.UTC()
			res.ReachedTime = &t
		}
		switch {
		case paused:
			r.logger.Info("recovery reached the target; ending recovery", "lsn", res.ReachedLSN)
			if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_wal_replay_resume()"); err != nil {
				return conn, fmt.Errorf("ending recovery: %w", err)
			}
		case !inRecovery:
			var tli int64
			if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()").Scan(&tli); err == nil {
				res.Timeline = uint32(tli)
			}
			// the checkpoint's timeline can lag the promotion: read the
			// current WAL file's
			var walFile string
			if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())").Scan(&walFile); err == nil {
				if w, ok := ParseWALName(walFile); ok {
					res.Timeline = w.TLI
				}
			}
			return conn, nil
		default:
			if time.Since(lastLog) > 10*time.Second {
				r.logger.Info("recovering", "replayed_lsn", res.ReachedLSN)
				lastLog = time.Now()
			}
		}
	}
}
