package backup

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/internal/version"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// physicalLockName is the advisory lock a base backup holds: one base
// backup of a cluster at a time, next to logical ones.
const physicalLockName = "backup-physical"

// PhysicalInfo is what a base backup needs for point-in-time recovery.
type PhysicalInfo struct {
	// StartLSN and StopLSN bound the WAL the base needs to be consistent;
	// it can be restored to StopLSN or any later point the archive holds.
	StartLSN LSN    `json:"start_lsn"`
	StopLSN  LSN    `json:"stop_lsn"`
	Timeline uint32 `json:"timeline"`
	// StartWAL and StopWAL are the segments holding StartLSN and StopLSN.
	StartWAL string `json:"start_wal"`
	StopWAL  string `json:"stop_wal"`
	// SegmentSize is the cluster's wal_segment_size in bytes.
	SegmentSize int64 `json:"segment_size"`
	// SystemIdentifier tells clusters apart: WAL of another cluster cannot
	// be replayed on this base.
	SystemIdentifier string `json:"system_identifier"`
	// BootstrapRole is the superuser initdb created (the role a scratch
	// recovery connects as).
	BootstrapRole string `json:"bootstrap_role"`
	// BasebackupVersion is the pg_basebackup that took it.
	BasebackupVersion string `json:"pg_basebackup_version"`
	// Uncompressed is the size of the tar stream.
	Uncompressed int64 `json:"uncompressed"`
}

// PhysicalOptions configure RunPhysical.
type PhysicalOptions struct {
	Conn  pg.Options
	Store Store
	Label string
	// Keys.Recipients, when set, encrypt the base (age envelope). The WAL
	// is encrypted by wal push.
	Keys Keys
	// SpreadCheckpoint waits for the server's next spread checkpoint instead
	// of asking for an immediate one (pg_basebackup -c spread): gentler on a
	// busy server, up to checkpoint_timeout slower to start.
	SpreadCheckpoint bool
	// MaxRate throttles the transfer (pg_basebackup --max-rate, e.g. 50M).
	MaxRate  string
	Tools    Tools
	Logger   *slog.Logger
	Progress Progress
}

// RunPhysical takes a base backup for point-in-time recovery: pg_basebackup
// in tar format to a stream, compressed with zstd into the store (no local
// copy), the WAL it needs left to the archive (wal push). The manifest is
// written last, and only once the archive holds the WAL from the start to
// the stop segment: a base the archive cannot complete is never listed.
func RunPhysical(ctx context.Context, o PhysicalOptions) (*Manifest, error) {
	logger := orDiscard(o.Logger)
	if o.Store == nil {
		return nil, errors.New("backup: no store")
	}
	if err := o.Conn.Validate(); err != nil {
		return nil, err
	}
	conn, release, err := lockedSession(ctx, o.Store, o.Conn, physicalLockName)
	if err != nil {
		return nil, err
	}
	defer release()

	m := &Manifest{Kind: KindPhysical, Label: o.Label, Format: "tar", SpiredbVersion: version.String(), Physical: &PhysicalInfo{}}
	p := m.Physical
	var archiveMode, archiveCommand string
	var dbBytes int64
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.current_database(), pg_catalog.current_setting('server_version'),
		pg_catalog.current_setting('server_version_num')::int,
		(SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'),
		pg_catalog.current_setting('archive_mode'), pg_catalog.current_setting('archive_command'),
		(SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
		(SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 10),
		(SELECT pg_catalog.sum(pg_catalog.pg_database_size(oid))::bigint FROM pg_catalog.pg_database
		  WHERE pg_catalog.has_database_privilege(oid, 'CONNECT'))`).
		Scan(&m.Database, &m.ServerVersion, &m.ServerVersionNum, &p.SegmentSize, &archiveMode, &archiveCommand,
			&p.SystemIdentifier, &p.BootstrapRole, &dbBytes); err != nil {
		return nil, fmt.Errorf("reading the server's settings: %w", err)
	}
	if archiveMode == "off" {
		return nil, errors.New("archive_mode is off: a base backup cannot be restored without the WAL after it; set archive_mode = on and archive_command = 'spiredb wal push %p --store ...' (restart needed), see tune recommend")
	}
	// SPIRE's schema and rows when the backup starts (the base itself is
	// consistent only at its stop point)
	if err := readSPIRE(ctx, conn, m); err != nil && !unreadSPIRE(err, logger) {
		return nil, err
	}

	basebackup, err := pgprog.Find(ctx, pgprog.Request{Name: "pg_basebackup", BinDir: o.Tools.BinDir, Major: m.ServerVersionNum / 10000, Match: pgprog.AtLeast})
	if err != nil {
		return nil, err
	}
	if p.BasebackupVersion, _, err = pgprog.FullVersion(ctx, basebackup.Path); err != nil {
		return nil, err
	}
	lp, err := pgprog.NewLibpq(o.Conn, "spiredb-basebackup")
	if err != nil {
		return nil, err
	}
	defer lp.Close()
	checkpoint := "fast"
	if o.SpreadCheckpoint {
		checkpoint = "spread"
	}
	// -X none: the archive holds the WAL; the server waits until the WAL
	// the backup needs is archived before pg_basebackup ends
	args := []string{"-D", "-", "-F", "tar", "-X", "none", "-c", checkpoint, "--no-password"}
	if o.MaxRate != "" {
		args = append(args, "--max-rate="+o.MaxRate)
	}
	if lp.Conninfo != "" {
		args = append(args, "-d", lp.Conninfo)
	}

	m.StartedAt = time.Now().UTC()
	m.ID = newID(m.StartedAt)
	logger.Info("base backup started", "id", m.ID, "store", o.Store.String())
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stderr := pgprog.NewOutput(logger, "pg_basebackup")
	stderr.Level = slog.LevelInfo // its NOTICEs say how the archiving went
	cmd := pgprog.Command(runCtx, basebackup.Path, lp.Env, nil, stderr, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_basebackup: %w", err)
	}
	src := &dumpReader{r: stdout, cmd: cmd, stderr: stderr, start: time.Now(), progress: o.Progress, what: "pg_basebackup"}

	// the tar stream goes to a reader that keeps backup_label and
	// backup_manifest, and to zstd → sha256 → the store
	tarR, tarW := io.Pipe()
	labels := make(chan tarInfo, 1)
	go func() { labels <- readTarInfo(tarR) }()
	compR, compW := io.Pipe()
	hash := sha256.New()
	encrypted := make(chan *Encryption, 1)
	go func() {
		enc, wrapped, err := encodingWriter(io.MultiWriter(compW, hash), func(w io.Writer) (io.WriteCloser, error) {
			return zstdWriter(w, levelBase, threadsBase)
		}, o.Keys.Recipients)
		encrypted <- wrapped
		if err == nil {
			_, err = io.Copy(enc, io.TeeReader(src, tarW))
			if cerr := enc.Close(); err == nil {
				err = cerr
			}
		}
		tarW.CloseWithError(err)
		compW.CloseWithError(err)
	}()
	store := o.Store
	if s, ok := store.(sizer); ok {
		// the databases this role can see, doubled for the ones it cannot
		// (the cluster is mostly SPIRE's): bounds the upload's part count
		store = s.ForSize(max(2*dbBytes, 1<<30))
	}
	size, err := store.Put(ctx, m.dataKey(), compR)
	_ = compR.CloseWithError(errors.New("upload ended"))
	info := <-labels
	if err != nil {
		cancel()
		if src.failed {
			return nil, src.dumpErr()
		}
		src.wait()
		return nil, fmt.Errorf("writing base backup %s: %w", m.ID, err)
	}
	if derr := src.dumpErr(); derr != nil {
		return nil, derr
	}
	if info.err != nil {
		return nil, fmt.Errorf("base backup %s: %w", m.ID, info.err)
	}
	p.StartLSN, p.StopLSN, p.Timeline = info.start, info.stop, info.timeline
	p.StartWAL = SegmentName(p.Timeline, p.StartLSN.SegNo(p.SegmentSize), p.SegmentSize)
	p.StopWAL = SegmentName(p.Timeline, p.StopLSN.SegNo(p.SegmentSize), p.SegmentSize)
	p.Uncompressed = src.n
	m.Size = size
	m.SHA256 = hex.EncodeToString(hash.Sum(nil))
	m.Encryption = <-encrypted

	// the server has waited for the archiver; the archive must be this
	// store, or the base is useless here
	if err := waitArchived(ctx, o.Store, p, 30*time.Second); err != nil {
		return nil, fmt.Errorf("base backup %s is not restorable from %s: %w (archive_command = %q); the data is left for prune", m.ID, o.Store, err, archiveCommand)
	}
	m.FinishedAt = time.Now().UTC()
	if err := putJSON(ctx, o.Store, manifestKey(m.ID), m); err != nil {
		return nil, fmt.Errorf("writing manifest of %s (the data is stored but the backup does not count until prune removes it): %w", m.ID, err)
	}
	logger.Info("base backup done", "id", m.ID, "bytes", m.Size, "start_lsn", p.StartLSN, "stop_lsn", p.StopLSN,
		"duration", m.FinishedAt.Sub(m.StartedAt).Round(time.Millisecond))
	return m, nil
}

// readSPIRE fills the manifest's SPIRE schema and row counts.
func readSPIRE(ctx context.Context, conn spire.Querier, m *Manifest) error {
	schema, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		return err
	}
	if schema.Present {
		m.SPIRE = &SPIREInfo{SchemaVersion: schema.Version, CodeVersion: schema.CodeVersion, Schema: schema.Schema}
	}
	m.RowCounts, err = spire.CountRows(ctx, conn, schema.Schema)
	return err
}

// waitArchived waits until the store holds every segment from the base's
// start to its stop segment.
func waitArchived(ctx context.Context, s Store, p *PhysicalInfo, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		files, _, err := ListWAL(ctx, s)
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, f := range files {
			have[f.Name] = true
		}
		var missing []string
		for seg := p.StartLSN.SegNo(p.SegmentSize); seg <= p.StopLSN.SegNo(p.SegmentSize); seg++ {
			if name := SegmentName(p.Timeline, seg, p.SegmentSize); !have[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the archive lacks WAL %s", strings.Join(missing, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// tarInfo is what the base's tar stream says about its WAL range.
type tarInfo struct {
	start, stop LSN
	timeline    uint32
	err         error
}

// readTarInfo reads the whole tar stream, keeping backup_label's start
// point and backup_manifest's WAL range.
func readTarInfo(r *io.PipeReader) (info tarInfo) {
	defer func() {
		// drain: the writer must never block on us
		_, _ = io.Copy(io.Discard, r)
	}()
	tr := tar.NewReader(r)
	sawManifest := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			info.err = fmt.Errorf("reading pg_basebackup's tar stream: %w", err)
			return info
		}
		switch h.Name {
		case "backup_label":
			sc := bufio.NewScanner(io.LimitReader(tr, 1<<20))
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), ": ")
				switch k {
				case "START WAL LOCATION":
					info.start, _ = ParseLSN(strings.Fields(v)[0])
				case "START TIMELINE":
					tli, _ := strconv.ParseUint(v, 10, 32)
					info.timeline = uint32(tli)
				}
			}
		case "backup_manifest":
			var bm struct {
				WALRanges []struct {
					Timeline uint32 `json:"Timeline"`
					StartLSN string `json:"Start-LSN"`
					EndLSN   string `json:"End-LSN"`
				} `json:"WAL-Ranges"`
			}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<30)).Decode(&bm); err != nil {
				info.err = fmt.Errorf("reading backup_manifest: %w", err)
				return info
			}
			if n := len(bm.WALRanges); n > 0 {
				info.stop, _ = ParseLSN(bm.WALRanges[n-1].EndLSN)
				sawManifest = true
			}
		}
	}
	switch {
	case info.start == 0 || info.timeline == 0:
		info.err = errors.New("the tar stream has no readable backup_label")
	case !sawManifest || info.stop < info.start:
		info.err = errors.New("the tar stream has no backup_manifest with a WAL range (pg_basebackup 13 or newer writes it)")
	}
	return info
}
