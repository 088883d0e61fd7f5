package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
)

// BootstrapOptions configure Bootstrap.
type BootstrapOptions struct {
	Primary pg.Options
	// DataDir must be absent or empty.
	DataDir string
	// Slot is the physical slot to create (default: spiredb_ + the data
	// directory's base name).
	Slot string
	// Start starts the standby on Port and waits until the primary reports
	// it streaming.
	Start bool
	Port  int
	// BinDir holds pg_basebackup and pg_ctl (default: pg_config --bindir,
	// else the newest /usr/lib/postgresql/*/bin).
	BinDir string
	// MaxRate throttles the copy (pg_basebackup --max-rate, e.g. "50M")
	// to spare the primary's disks; empty is unthrottled.
	MaxRate string
	// StartTimeout bounds the wait for streaming (default 2m).
	StartTimeout time.Duration
	// StandbyPassfile, when set, is written (0600, owned by the server's
	// user) with the primary's password, and the standby's primary_conninfo
	// names it. Unset, the password is written nowhere: the standby needs
	// another way in (its user's ~/.pgpass, a certificate, pg_hba trust).
	StandbyPassfile string
	// ArchivedTimelines, when set, lists the timelines whose history the
	// cluster's WAL archive holds: a primary on an older timeline was
	// replaced, and a standby of it is refused before anything is copied
	// (*PromotedElsewhereError). See PromoteOptions.
	ArchivedTimelines func(context.Context) ([]uint32, error)
	Logger            *slog.Logger
	// Progress reports bytes copied and the estimated total.
	Progress func(done, total int64)
}

// BootstrapResult says what Bootstrap did.
type BootstrapResult struct {
	Slot      string        `json:"slot"`
	DataDir   string        `json:"data_dir"`
	Bytes     int64         `json:"bytes"`
	Duration  time.Duration `json:"duration_ns"`
	Started   bool          `json:"started"`
	Port      int           `json:"port,omitempty"`
	Streaming bool          `json:"streaming"`
}

var slotRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Bootstrap makes a streaming standby of the primary in DataDir. When the
// copy fails it drops the slot it created and removes what it wrote.
func Bootstrap(ctx context.Context, o BootstrapOptions) (_ *BootstrapResult, err error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
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
	cred, err := pgprog.Credential(dir)
	if err != nil {
		return nil, err
	}

	conn, err := pg.Connect(ctx, o.Primary)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	major, err := preflight(ctx, conn, o.Slot, dir)
	if err != nil {
		return nil, err
	}
	if err := refuseReplaced(ctx, conn, o.ArchivedTimelines, logger); err != nil {
		return nil, err
	}
	basebackup, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_basebackup", BinDir: o.BinDir, Major: major, Match: pgprog.AtLeast})
	if err != nil {
		return nil, err
	}
	var pgctl *pgprog.Program
	if o.Start {
		// the standby is a copy of the primary: its server must be the same major
		if pgctl, err = pgprog.Find(ctx, pgprog.Request{Name: "pg_ctl", BinDir: o.BinDir, Major: major, Match: pgprog.Exact}); err != nil {
			return nil, err
		}
	}

	createdDir := false
	if _, statErr := os.Stat(dir); os.IsNotExist(statErr) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
		createdDir = true
	}
	// PostgreSQL refuses to start on a data directory others can read
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("making %s private (0700): %w", dir, err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", o.Slot); err != nil {
		return nil, fmt.Errorf("creating slot %s: %w", o.Slot, err)
	}
	logger.Info("slot created", "slot", o.Slot)
	// Until the copy is complete a failure undoes this run's work (the
	// slot, the files pg_basebackup wrote). After it the directory is a
	// standby: a later failure (start, streaming) leaves it and the slot
	// for the operator, and nothing is ever removed under a running server.
	copied := false
	defer func() {
		if err == nil || copied {
			return
		}
		cleanupFailed(context.WithoutCancel(ctx), o.Primary, o.Slot, dir, createdDir, logger)
	}()

	start := time.Now()
	res := &BootstrapResult{Slot: o.Slot, DataDir: dir}
	// pg_basebackup -R writes this connection's parameters into the
	// standby's primary_conninfo: the application_name it records is how
	// the primary will name the standby (pg_stat_replication,
	// synchronous_standby_names), so make it the slot name.
	// The password reaches pg_basebackup through a private passfile, never
	// PGPASSWORD: -R copies a password it was given into primary_conninfo,
	// in the standby's postgresql.auto.conf; a passfile it only names.
	lp, env, cleanup, err := libpqWithPassfile(o.Primary, o.Slot, cred)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	args := []string{"-D", dir, "-R", "-X", "stream", "-S", o.Slot, "-c", "fast", "-P", "-w"}
	if o.MaxRate != "" {
		args = append(args, "--max-rate="+o.MaxRate)
	}
	if lp.Conninfo != "" {
		args = append(args, "-d", lp.Conninfo)
	}
	out := &pgprog.Output{Logger: logger, Program: "pg_basebackup", Level: slog.LevelInfo, Progress: o.Progress}
	werr := pgprog.Command(ctx, basebackup.Path, env, cred, out, args...).Run()
	res.Bytes = out.Done()
	if werr != nil {
		return nil, fmt.Errorf("pg_basebackup failed (%w): %s", werr, out.Tail())
	}
	if err := fixPrimaryConninfo(dir, o.StandbyPassfile, lp.Params["password"], cred); err != nil {
		return nil, err
	}
	copied = true
	if lp.Params["password"] != "" && o.StandbyPassfile == "" {
		logger.Warn("the standby's primary_conninfo carries no password: give its server user a ~/.pgpass entry, or pass --standby-passfile PATH",
			"data_dir", dir)
	}
	res.Duration = time.Since(start)
	logger.Info("base backup done", "dir", dir, "bytes", res.Bytes, "duration", res.Duration.Round(time.Millisecond))

	if !o.Start {
		return res, nil
	}
	if err := startStandby(ctx, pgctl.Path, dir, o.Port, cred); err != nil {
		return nil, err
	}
	res.Started, res.Port = true, o.Port
	timeout := o.StartTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	if err := waitStreaming(ctx, conn, o.Slot, timeout); err != nil {
		return res, err
	}
	res.Streaming = true
	return res, nil
}

// preflight checks everything that can be checked before touching anything.
func preflight(ctx context.Context, conn *pgx.Conn, slot, dir string) (major int, err error) {
	var inRecovery, canReplicate, slotTaken bool
	var walLevel string
	var freeSenders int
	var dbBytes int64
	err = conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_setting('server_version_num')::int / 10000, pg_catalog.pg_is_in_recovery(),
		pg_catalog.current_setting('wal_level'),
		pg_catalog.current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_catalog.pg_stat_replication),
		(SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
		EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
		(SELECT sum(pg_catalog.pg_database_size(oid)) FROM pg_catalog.pg_database)::bigint`, slot).
		Scan(&major, &inRecovery, &walLevel, &freeSenders, &canReplicate, &slotTaken, &dbBytes)
	if err != nil {
		return 0, fmt.Errorf("checking the primary: %w", err)
	}
	switch {
	case inRecovery:
		return 0, errors.New("the --primary-dsn server is itself a standby; bootstrap from the primary")
	case walLevel != "replica" && walLevel != "logical":
		return 0, fmt.Errorf("wal_level is %q on the primary: set it to replica and restart", walLevel)
	case freeSenders < 2:
		return 0, fmt.Errorf("only %d free WAL sender(s) on the primary; pg_basebackup -X stream needs 2: raise max_wal_senders", freeSenders)
	case !canReplicate:
		return 0, errors.New("the primary role has neither REPLICATION nor SUPERUSER: ALTER ROLE ... REPLICATION")
	case slotTaken:
		return 0, fmt.Errorf("slot %q already exists on the primary: pick another --slot, or drop it (replica slots --drop %s)", slot, slot)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return 0, fmt.Errorf("data directory %s is not empty", dir)
	} else if err != nil && !os.IsNotExist(err) {
		return 0, fmt.Errorf("data directory %s: %w", dir, err)
	}
	parent := dir
	for {
		if _, err := os.Stat(parent); err == nil {
			break
		}
		parent = filepath.Dir(parent)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(parent, &fs); err == nil {
		free := int64(fs.Bavail) * fs.Bsize
		need := dbBytes + dbBytes/10 + 256<<20 // databases, 10%, WAL
		if free < need {
			return 0, fmt.Errorf("not enough disk for the standby under %s: %s free, about %s needed", parent, formatBytes(free), formatBytes(need))
		}
	}
	return major, nil
}

// cleanupFailed drops the slot (retrying while the primary comes back) and
// removes what the copy wrote: the directory when this run created it,
// else its contents (it was empty before). Never under a running server.
func cleanupFailed(ctx context.Context, primary pg.Options, slot, dir string, createdDir bool, logger *slog.Logger) {
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err == nil {
		logger.Error("bootstrap failed, but a server runs in the data directory: left as it is", "dir", dir)
	} else if createdDir {
		_ = os.RemoveAll(dir)
	} else if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := DropSlot(ctx, primary, slot)
		if err == nil || strings.Contains(err.Error(), "no replication slot") {
			logger.Info("bootstrap failed: slot dropped and data directory removed", "slot", slot, "dir", dir)
			return
		}
		if time.Now().After(deadline) {
			logger.Error("bootstrap failed and the slot could not be dropped: drop it by hand",
				"slot", slot, "command", "spiredb replica slots --drop "+slot, "err", err)
			return
		}
		time.Sleep(time.Second)
	}
}

func startStandby(ctx context.Context, pgctl, dir string, port int, cred *syscall.Credential) error {
	err := pgprog.PgCtl(ctx, pgctl, cred, "-D", dir, "-o", "-p "+strconv.Itoa(port),
		"-l", filepath.Join(dir, "startup.log"), "-w", "-t", "120", "start")
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "startup.log"))
		return fmt.Errorf("starting the standby: %w %s", err, lastLine(string(b)))
	}
	return nil
}

// StopStandby stops a standby started by Bootstrap (pg_ctl stop -m fast).
func StopStandby(ctx context.Context, binDir, dir string) error {
	major, err := pgprog.DataDirMajor(dir)
	if err != nil {
		return err
	}
	pgctl, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_ctl", BinDir: binDir, Major: major, Match: pgprog.Exact})
	if err != nil {
		return err
	}
	cred, err := pgprog.Credential(dir)
	if err != nil {
		return err
	}
	return pgprog.PgCtl(ctx, pgctl.Path, cred, "-D", dir, "-m", "fast", "-w", "stop")
}

func waitStreaming(ctx context.Context, conn *pgx.Conn, slot string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var state *string
		if err := conn.QueryRow(ctx, pg.Marker+`SELECT (SELECT r.state FROM pg_catalog.pg_replication_slots s
			JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1)`, slot).Scan(&state); err != nil {
			return fmt.Errorf("waiting for streaming: %w", err)
		}
		if state != nil && *state == "streaming" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the standby did not start streaming on slot %s within %s", slot, timeout)
}

// absPassfile: primary_conninfo names the passfile for a server whose
// working directory is its data directory, not spiredb's.
func absPassfile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	return filepath.Abs(path)
}

// passfileAny starts the one line of a passfile spiredb writes: every
// host, port, database and user.
const passfileAny = "*:*:*:*:"

// writePassfile replaces path with a libpq password file matching any
// server, database and user, readable by the server's OS user only: a new
// 0600 file renamed over it, so an existing file's looser mode never
// holds the password (validStandbyPassfile said it may be replaced).
func writePassfile(path, password string, cred *syscall.Credential) error {
	escaped := strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(strings.ReplaceAll(password, "\n", ""))
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("writing passfile %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(passfileAny + escaped + "\n")
	if err == nil && cred != nil {
		err = f.Chown(int(cred.Uid), int(cred.Gid))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing passfile %s: %w", path, err)
	}
	return nil
}

// fixPrimaryConninfo rewrites the primary_conninfo pg_basebackup -R wrote:
// no password or sslpassword, and the passfile is the standby's own
// (standbyPassfile, written here) or none, never the temporary one.
func fixPrimaryConninfo(dir, standbyPassfile, password string, cred *syscall.Credential) error {
	path := filepath.Join(dir, "postgresql.auto.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for i, l := range lines {
		name, value, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(name) != "primary_conninfo" {
			continue
		}
		params, err := dsn.Parse(unquoteGUC(strings.TrimSpace(value)))
		if err != nil {
			return fmt.Errorf("reading primary_conninfo in %s: %w", path, err)
		}
		params = params.WithoutSecrets()
		delete(params, "passfile")
		if standbyPassfile != "" {
			if err := writePassfile(standbyPassfile, password, cred); err != nil {
				return err
			}
			params["passfile"] = standbyPassfile
		}
		lines[i] = "primary_conninfo = " + quoteGUC(params.String())
		found = true
	}
	if !found {
		return fmt.Errorf("pg_basebackup -R wrote no primary_conninfo in %s", path)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// unquoteGUC reads a quoted configuration value: 'it”s', backslash
// escapes as PostgreSQL's GUC scanner reads them.
func unquoteGUC(v string) string {
	if len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
		return v
	}
	v = v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\'' && i+1 < len(v) && v[i+1] == '\'':
			b.WriteByte('\'')
			i++
		case v[i] == '\\' && i+1 < len(v):
			b.WriteByte(v[i+1])
			i++
		default:
			b.WriteByte(v[i])
		}
	}
	return b.String()
}

// quoteGUC quotes a configuration value as pg_basebackup does.
func quoteGUC(v string) string {
	return "'" + strings.NewReplacer(`'`, `''`, `\`, `\\`).Replace(v) + "'"
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// refuseReplaced refuses to make (Bootstrap) or point (Rejoin) a standby
// at a primary that was replaced: by a switchover (its mark) or, with
// archived, by a failover (an archived timeline newer than its own). Such
// a standby would follow a dead end.
func refuseReplaced(ctx context.Context, conn *pgx.Conn, archived func(context.Context) ([]uint32, error), logger *slog.Logger) error {
	by, err := readSuperseded(ctx, conn)
	if err != nil {
		return fmt.Errorf("checking the primary for a switchover: %w", err)
	}
	if by != "" {
		return fmt.Errorf("refusing to %s: a switchover made %s the primary in its place, and a standby of this one would follow a replaced primary; give --primary-dsn the new primary; nothing was copied, stopped or rewound", followOp, by)
	}
	if archived != nil {
		return promotedElsewhere(ctx, conn, archived, false, followOp, logger)
	}
	return nil
}
