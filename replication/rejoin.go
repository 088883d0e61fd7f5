package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// RejoinOptions configure Rejoin.
type RejoinOptions struct {
	// Old reaches the old primary when it still runs (its SPIRE database,
	// which must be fenced); zero when it is down.
	Old pg.Options
	// Primary is the new primary, which the old one will follow.
	Primary pg.Options
	// DataDir is the old primary's data directory.
	DataDir string
	// Slot on the new primary (default: spiredb_ + the data directory's
	// base name); an inactive slot of that name is reused.
	Slot string
	// StandbyPassfile: as for Bootstrap.
	StandbyPassfile string
	// Start starts the standby on Port and waits until it streams.
	Start bool
	Port  int
	// BinDir holds pg_rewind and pg_ctl of the data directory's major.
	BinDir string
	// RecloneOnFailure copies the new primary afresh (Bootstrap) when
	// pg_rewind cannot be used or fails; the old data directory is moved
	// aside (DataDir.spiredb-old-TIME), never deleted.
	RecloneOnFailure bool
	StartTimeout     time.Duration
	// ArchivedTimelines, when set, lists the timelines whose history the
	// cluster's WAL archive holds: a new primary on an older timeline was
	// itself replaced, and following it is refused before anything is
	// stopped or rewound (*PromotedElsewhereError). See PromoteOptions.
	ArchivedTimelines func(context.Context) ([]uint32, error)
	Logger            *slog.Logger
	// Progress reports pg_rewind's or the reclone's bytes copied.
	Progress func(done, total int64)
}

// RejoinResult says what Rejoin did.
type RejoinResult struct {
	// Method is "rewind", "reclone", or "none" (it already follows the
	// new primary).
	Method string `json:"method"`
	// Why the rewind was not used, with reclone.
	Why        string        `json:"why,omitempty"`
	MovedAside string        `json:"moved_aside,omitempty"`
	DataDir    string        `json:"data_dir"`
	Slot       string        `json:"slot"`
	SlotReused bool          `json:"slot_reused,omitempty"`
	Stopped    bool          `json:"stopped_old_primary"`
	Bytes      int64         `json:"bytes_copied"`
	Duration   time.Duration `json:"duration_ns"`
	Started    bool          `json:"started"`
	Port       int           `json:"port,omitempty"`
	Streaming  bool          `json:"streaming"`
	// LeftoverSlots are replication slots the old primary kept in its data
	// directory; as a standby it retains WAL for them until dropped.
	LeftoverSlots []string `json:"leftover_slots,omitempty"`
}

// ErrCannotRewind is wrapped when pg_rewind cannot be used on the data
// directory.
var ErrCannotRewind = errors.New("pg_rewind cannot be used")

// Rejoin turns a fenced or stopped old primary into a streaming standby
// of the new primary: checks first (same cluster, same major, the old
// primary fenced or down, wal_log_hints or data checksums), stops it,
// rewinds it with pg_rewind onto the new timeline, writes standby.signal,
// primary_conninfo (no password) and primary_slot_name, and with Start
// starts it and waits until it streams. When pg_rewind cannot be used or
// fails, RecloneOnFailure moves the directory aside and bootstraps afresh.
func Rejoin(ctx context.Context, o RejoinOptions) (*RejoinResult, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	if o.StandbyPassfile, err = absPassfile(o.StandbyPassfile); err != nil {
		return nil, err
	}
	if o.Slot == "" {
		o.Slot = defaultSlot(dir)
	}
	if !slotRE.MatchString(o.Slot) {
		return nil, fmt.Errorf("invalid slot name %q: lower-case letters, digits and _ only, at most 63", o.Slot)
	}
	major, err := pgprog.DataDirMajor(dir)
	if err != nil {
		return nil, err
	}
	sysid, err := controlSystemID(dir)
	if err != nil {
		return nil, err
	}
	cred, err := pgprog.Credential(dir)
	if err != nil {
		return nil, err
	}
	res := &RejoinResult{DataDir: dir, Slot: o.Slot}

	pconn, err := pg.Connect(ctx, o.Primary)
	if err != nil {
		return nil, fmt.Errorf("new primary: %w", err)
	}
	defer pconn.Close(context.WithoutCancel(ctx))
	var pRecovery bool
	var pSys int64
	var pMajor int
	var fpw string
	if err := pconn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.pg_is_in_recovery(), (SELECT system_identifier FROM pg_catalog.pg_control_system()),
		pg_catalog.current_setting('server_version_num')::int / 10000, pg_catalog.current_setting('full_page_writes')`).Scan(&pRecovery, &pSys, &pMajor, &fpw); err != nil {
		return nil, fmt.Errorf("checking the new primary: %w", err)
	}
	switch {
	case pRecovery:
		return nil, errors.New("--primary-dsn is a standby (in recovery): give the new primary")
	case uint64(pSys) != sysid:
		return nil, fmt.Errorf("%s is not a copy of the new primary's cluster (system identifier %d, the new primary's is %d): bootstrap a standby instead", dir, sysid, uint64(pSys))
	case pMajor != major:
		return nil, fmt.Errorf("%s is PostgreSQL %d, the new primary %d: bootstrap a standby instead", dir, major, pMajor)
	}
	// a "new" primary that a switchover or a failover replaced in turn
	if err := refuseReplaced(ctx, pconn, o.ArchivedTimelines, logger); err != nil {
		return nil, err
	}
	newTLI, err := currentTimeline(ctx, pconn)
	if err != nil {
		return nil, err
	}

	running := postmasterRunning(dir)
	canRewind, why := true, ""
	if o.Old.DSN != "" {
		state, err := inspectOld(ctx, o.Old, dir, newTLI)
		switch {
		case err != nil && running:
			return nil, fmt.Errorf("a server runs in %s but --dsn does not reach it (%w): fix --dsn or stop it", dir, err)
		case err != nil:
			logger.Info("the old primary is not reachable; its data directory is not in use", "err", dsn.RedactText(err.Error()))
		case state.following:
			res.Method, res.Duration = "none", time.Since(start)
			res.Started, res.Streaming = true, true
			logger.Info("the old primary already streams from the new primary: nothing to do")
			return res, nil
		case state.standby:
			return nil, errors.New("--dsn is a standby that does not stream from the new primary on its timeline: stop it, then rejoin")
		case !state.fenced:
			return nil, fmt.Errorf("the old primary is running and its database %s is not fenced: SPIRE may still write there; run spiredb replica fence --dsn OLD first (or stop it)", state.database)
		default:
			canRewind, why = state.canRewind, state.why
		}
	} else if running {
		return nil, fmt.Errorf("a server runs in %s: pass --dsn (its fenced SPIRE database) so spiredb can check it, or stop it", dir)
	}
	if fpw != "on" {
		canRewind, why = false, "full_page_writes is off on the new primary (pg_rewind needs it on; it is on by default)"
	}
	if !canRewind && !o.RecloneOnFailure {
		return nil, fmt.Errorf("%w on %s: %s; pass --reclone-on-failure to copy the new primary afresh", ErrCannotRewind, dir, why)
	}

	if running {
		pgctl, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_ctl", BinDir: o.BinDir, Major: major, Match: pgprog.Exact})
		if err != nil {
			return nil, fmt.Errorf("stopping the old primary: %w (or stop it yourself)", err)
		}
		if err := pgprog.PgCtl(ctx, pgctl.Path, cred, "-D", dir, "-m", "fast", "-w", "-t", "120", "stop"); err != nil {
			return nil, fmt.Errorf("stopping the old primary: %w", err)
		}
		res.Stopped = true
		logger.Info("old primary stopped", "dir", dir)
	}

	if canRewind {
		err := rewind(ctx, o, pconn, dir, major, cred, res, logger)
		if err == nil {
			return finishRejoin(ctx, o, pconn, dir, major, cred, res, start)
		}
		if !o.RecloneOnFailure {
			if !res.SlotReused {
				// a slot nobody uses would keep WAL on the new primary forever
				_ = DropSlot(context.WithoutCancel(ctx), o.Primary, o.Slot)
			}
			return nil, err
		}
		why = err.Error()
	}
	res.Method, res.Why = "reclone", why
	logger.Warn("copying the new primary afresh", "why", why)
	return reclone(ctx, o, pconn, dir, cred, res, start)
}

type oldState struct {
	standby, following, fenced, canRewind bool
	database, why                         string
}

// inspectOld reads the running old primary: its role, whether its SPIRE
// database is fenced, whether pg_rewind can be used on it, and that it
// runs on dir.
func inspectOld(ctx context.Context, o pg.Options, dir string, newTLI int32) (*oldState, error) {
	conn, target, err := connectMaintenance(ctx, o)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st := &oldState{database: target}
	var dataDir, hints, checksums string
	var allow *bool
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.pg_is_in_recovery(), coalesce(pg_catalog.current_setting('data_directory', true), ''),
		pg_catalog.current_setting('wal_log_hints'), pg_catalog.current_setting('data_checksums'),
		(SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1)`, target).Scan(&st.standby, &dataDir, &hints, &checksums, &allow); err != nil {
		return nil, fmt.Errorf("checking the old primary: %w", err)
	}
	if dataDir != "" && !sameDir(dataDir, dir) {
		return nil, fmt.Errorf("--dsn runs on %s, not %s", dataDir, dir)
	}
	st.fenced = allow != nil && !*allow
	st.canRewind = hints == "on" || checksums == "on"
	if !st.canRewind {
		st.why = "it has neither wal_log_hints = on nor data checksums (pg_rewind needs one of them from before the switchover: set wal_log_hints = on, restart, and rejoin after the next switchover)"
	}
	if st.standby {
		var status string
		var tli int32
		err := conn.QueryRow(ctx, pg.Marker+"SELECT coalesce(status, ''), coalesce(received_tli, 0) FROM pg_catalog.pg_stat_wal_receiver").Scan(&status, &tli)
		st.following = err == nil && status == "streaming" && tli == newTLI
	}
	return st, nil
}

// rewind runs pg_rewind from the new primary onto dir and writes the
// standby configuration.
func rewind(ctx context.Context, o RejoinOptions, pconn *pgx.Conn, dir string, major int, cred *syscall.Credential, res *RejoinResult, logger *slog.Logger) error {
	prog, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_rewind", BinDir: o.BinDir, Major: major, Match: pgprog.Exact})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCannotRewind, err)
	}
	// the new timeline must be in the new primary's control file
	if _, err := pconn.Exec(ctx, pg.Marker+"CHECKPOINT"); err != nil {
		logger.Warn("CHECKPOINT on the new primary failed; pg_rewind may see the old timeline", "err", err)
	}
	if err := ensureSlot(ctx, pconn, o.Slot, res); err != nil {
		return err
	}
	lp, env, cleanup, err := libpqWithPassfile(o.Primary, o.Slot, cred)
	if err != nil {
		return err
	}
	defer cleanup()
	args := []string{"--target-pgdata=" + dir, "--progress"}
	conninfo := lp.Params.WithoutSecrets()
	conninfo["dbname"] = "postgres"
	args = append(args, "--source-server="+conninfo.String())
	out := &pgprog.Output{Logger: logger, Program: "pg_rewind", Level: slog.LevelInfo, Progress: o.Progress}
	werr := pgprog.Command(ctx, prog.Path, env, cred, out, args...).Run()
	res.Bytes = out.Done()
	if werr != nil {
		msg := out.Tail()
		if strings.Contains(msg, "wal_log_hints") || strings.Contains(msg, "data checksums") {
			return fmt.Errorf("%w: %s", ErrCannotRewind, msg)
		}
		if strings.Contains(msg, "could not find previous WAL record") || strings.Contains(msg, "could not open file") && strings.Contains(msg, "pg_wal") {
			return fmt.Errorf("%w: the old primary no longer has the WAL from its last checkpoint before the switch (replica switchover keeps it; after a failover raise wal_keep_size or archive WAL): %s", ErrCannotRewind, msg)
		}
		return fmt.Errorf("pg_rewind failed (%w): %s", werr, msg)
	}
	res.Method = "rewind"
	logger.Info("rewound onto the new primary's timeline", "dir", dir)
	// the slot Switchover made to keep this WAL has done its work; a slot
	// lives in memory and in this directory only, and the server is stopped
	if err := os.RemoveAll(filepath.Join(dir, "pg_replslot", RewindSlot)); err != nil {
		logger.Warn("could not remove the rewind slot; drop it on the standby", "slot", RewindSlot, "err", err)
	}
	return writeStandbyConf(dir, lp.Params, o.Slot, o.StandbyPassfile, cred)
}

func finishRejoin(ctx context.Context, o RejoinOptions, pconn *pgx.Conn, dir string, major int, cred *syscall.Credential, res *RejoinResult, start time.Time) (*RejoinResult, error) {
	res.LeftoverSlots = diskSlots(dir)
	if o.Start {
		pgctl, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_ctl", BinDir: o.BinDir, Major: major, Match: pgprog.Exact})
		if err != nil {
			return res, err
		}
		if err := startStandby(ctx, pgctl.Path, dir, o.Port, cred); err != nil {
			return res, err
		}
		res.Started, res.Port = true, o.Port
		timeout := o.StartTimeout
		if timeout <= 0 {
			timeout = 2 * time.Minute
		}
		if err := waitStreaming(ctx, pconn, o.Slot, timeout); err != nil {
			return res, err
		}
		res.Streaming = true
	}
	res.Duration = time.Since(start)
	return res, nil
}

// reclone moves dir aside and bootstraps a fresh standby there.
func reclone(ctx context.Context, o RejoinOptions, pconn *pgx.Conn, dir string, cred *syscall.Credential, res *RejoinResult, start time.Time) (*RejoinResult, error) {
	var active *bool
	var kind string
	if err := pconn.QueryRow(ctx, pg.Marker+`SELECT (SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
		coalesce((SELECT slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), '')`, o.Slot).Scan(&active, &kind); err != nil {
		return nil, err
	}
	if kind == "logical" {
		// another consumer's (a CDC tool's, a subscription's): dropping it
		// loses its place in the WAL for good
		return nil, fmt.Errorf("slot %q on the new primary is a logical slot, another consumer's: pick another --slot; nothing was changed", o.Slot)
	}
	if active != nil && *active {
		return nil, fmt.Errorf("slot %q on the new primary is in use by another standby: pick another --slot", o.Slot)
	}
	if active != nil {
		if _, err := pconn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_drop_replication_slot($1)", o.Slot); err != nil {
			return nil, fmt.Errorf("dropping the unused slot %s before the copy: %w", o.Slot, err)
		}
	}
	aside := dir + ".spiredb-old-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(dir, aside); err != nil {
		return nil, fmt.Errorf("moving %s aside before the copy: %w (remove or move it yourself, then run replica bootstrap)", dir, err)
	}
	res.MovedAside = aside
	if err := os.Mkdir(dir, 0o700); err != nil {
		return res, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return res, err
		}
	}
	br, err := Bootstrap(ctx, BootstrapOptions{Primary: o.Primary, DataDir: dir, Slot: o.Slot, Start: o.Start, Port: o.Port, BinDir: o.BinDir,
		StartTimeout: o.StartTimeout, StandbyPassfile: o.StandbyPassfile, Logger: o.Logger, Progress: o.Progress})
	if br != nil {
		res.Bytes, res.Started, res.Port, res.Streaming = br.Bytes, br.Started, br.Port, br.Streaming
	}
	res.Duration = time.Since(start)
	return res, err
}

// ensureSlot creates the physical slot on the new primary, or reuses an
// inactive one of that name.
func ensureSlot(ctx context.Context, conn *pgx.Conn, slot string, res *RejoinResult) error {
	var active *bool
	if err := conn.QueryRow(ctx, pg.Marker+"SELECT (SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical')", slot).Scan(&active); err != nil {
		return err
	}
	if active != nil && *active {
		return fmt.Errorf("slot %q on the new primary is in use by another standby: pick another --slot", slot)
	}
	if active != nil {
		res.SlotReused = true
		return nil
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", slot); err != nil {
		return fmt.Errorf("creating slot %s: %w", slot, err)
	}
	return nil
}

// libpqWithPassfile is how pg_basebackup and pg_rewind reach a primary:
// the password in a private passfile (never argv or a file it would copy),
// readable by cred. cleanup removes it.
func libpqWithPassfile(o pg.Options, appName string, cred *syscall.Credential) (*pgprog.Libpq, []string, func(), error) {
	cfg, err := pg.ParseConfig(o)
	if err != nil {
		return nil, nil, nil, err
	}
	lp, err := pgprog.NewLibpq(o, appName)
	if err != nil {
		return nil, nil, nil, err
	}
	// pgx found the password where libpq would (the DSN, PGPASSWORD, a
	// passfile)
	if cfg.Password != "" {
		lp.Params["password"] = cfg.Password
	}
	env := slices.DeleteFunc(slices.Clone(lp.Env), func(e string) bool { return strings.HasPrefix(e, "PGPASSWORD=") })
	passDir, err := os.MkdirTemp("", "spiredb-libpq-pass-")
	if err != nil {
		lp.Close()
		return nil, nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(passDir); lp.Close() }
	tmpPass := filepath.Join(passDir, "pgpass")
	if err := writePassfile(tmpPass, lp.Params["password"], cred); err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	if cred != nil {
		_ = os.Chown(passDir, int(cred.Uid), int(cred.Gid))
		if err := lp.Chown(int(cred.Uid), int(cred.Gid)); err != nil {
			cleanup()
			return nil, nil, nil, err
		}
	}
	return lp, append(env, "PGPASSFILE="+tmpPass), cleanup, nil
}

// writeStandbyConf makes dir a standby of the server params reach:
// standby.signal, and in postgresql.auto.conf one primary_conninfo (no
// secret; the standby's own passfile or none) and primary_slot_name,
// replacing whatever the rewind copied from the new primary.
func writeStandbyConf(dir string, params dsn.Params, slot, standbyPassfile string, cred *syscall.Credential) error {
	conninfo := params.WithoutSecrets()
	for _, k := range []string{"dbname", "passfile", "service", "target_session_attrs"} {
		delete(conninfo, k)
	}
	conninfo["application_name"] = slot
	if standbyPassfile != "" {
		if err := writePassfile(standbyPassfile, params["password"], cred); err != nil {
			return err
		}
		conninfo["passfile"] = standbyPassfile
	}
	path := filepath.Join(dir, "postgresql.auto.conf")
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var kept []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		name, _, _ := strings.Cut(l, "=")
		switch strings.TrimSpace(name) {
		case "primary_conninfo", "primary_slot_name", supersededGUC:
			continue
		}
		kept = append(kept, l)
	}
	kept = append(kept, "primary_conninfo = "+quoteGUC(conninfo.String()), "primary_slot_name = "+quoteGUC(slot))
	if err := writeOwned(path, []byte(strings.Join(kept, "\n")+"\n"), cred); err != nil {
		return err
	}
	return writeOwned(filepath.Join(dir, "standby.signal"), nil, cred)
}

func writeOwned(path string, b []byte, cred *syscall.Credential) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}

// controlSystemID reads the system identifier, the first 8 bytes of
// global/pg_control (native byte order; spiredb runs on the server's
// architecture).
func controlSystemID(dir string) (uint64, error) {
	f, err := os.Open(filepath.Join(dir, "global", "pg_control"))
	if err != nil {
		return 0, fmt.Errorf("%s is not a PostgreSQL data directory: %w", dir, err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("reading %s/global/pg_control: %w", dir, err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// postmasterRunning reports whether a server runs in dir: its
// postmaster.pid names a live postgres process.
func postmasterRunning(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		return strings.HasPrefix(strings.TrimSpace(string(comm)), "postgres")
	}
	return true
}

// diskSlots lists the replication slots kept in a stopped data directory.
func diskSlots(dir string) []string {
	entries, _ := os.ReadDir(filepath.Join(dir, "pg_replslot"))
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return ra == rb
}

func defaultSlot(dir string) string {
	s := "spiredb_" + strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, strings.ToLower(filepath.Base(dir)))
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}
