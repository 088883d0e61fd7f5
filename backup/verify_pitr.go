package backup

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgprog"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// verifyPITR restores the base and every archived segment after it into a
// scratch data directory, recovers to the archive's end, and checks WAL
// continuity, the point reached, the indexes (amcheck) and SPIRE's rows.
func verifyPITR(ctx context.Context, o VerifyOptions, m *Manifest, res *VerifyResult, logger *slog.Logger) error {
	// no server to recover with is this machine's lack, not the backup's:
	// an error, never a failed verification recorded against the base
	major := m.ServerVersionNum / 10000
	if _, err := pgprog.Find(ctx, pgprog.Request{Name: "postgres", BinDir: o.Tools.BinDir, Major: major, Match: pgprog.Exact}); err != nil {
		return fmt.Errorf("verify --level pitr recovers the base with the PostgreSQL %d server: %w", major, err)
	}
	if err := verifyChecksum(ctx, o, m, res, nil); err != nil {
		return err
	}
	if res.Failed() != nil {
		return nil
	}
	files, _, err := ListWAL(ctx, o.Store)
	if err != nil {
		return err
	}
	first, last, missing := continuity(m, files)
	if len(missing) > 0 {
		shown := missing
		if len(shown) > 5 {
			shown = append(shown[:5:5], fmt.Sprintf("… %d in all", len(missing)))
		}
		res.add("wal-continuity", false, "the archive lacks %s between %s and %s: no restore can pass the gap", strings.Join(shown, ", "), first, last)
		return nil
	}
	res.add("wal-continuity", true, "every segment from %s to %s is archived", first, last)

	scratch, err := os.MkdirTemp(o.TempDir, "spiredb-verify-pitr-")
	if err != nil {
		return fmt.Errorf("creating the scratch data directory: %w", err)
	}
	defer os.RemoveAll(scratch)
	if err := os.Chmod(scratch, 0o711); err != nil {
		return err
	}
	lastSeg, _ := ParseWALName(last)
	r, err := RestorePhysical(ctx, PhysicalRestoreOptions{
		Store: o.Store, ID: m.ID, Target: Target{Latest: true}, DataDir: filepath.Join(scratch, "data"),
		FetchCommand: o.FetchCommand, Tools: o.Tools, Logger: logger, Keys: o.Keys,
		whileRunning: func(ctx context.Context, conn pg.Options) error {
			if err := checkIndexes(ctx, conn, o.Jobs, res, logger); err != nil {
				return err
			}
			return pg.WithConn(ctx, conn, func(c *pgx.Conn) error {
				checkSPIRERows(ctx, c, m, res)
				return nil
			})
		},
	})
	if err != nil {
		res.add("recovery", false, "%v", err)
		return nil
	}
	reached := r.ReachedLSN.SegNo(m.Physical.SegmentSize)
	ok := reached >= lastSeg.SegNo(m.Physical.SegmentSize)
	when := "no transaction replayed"
	if r.ReachedTime != nil {
		when = "last transaction " + r.ReachedTime.Format("2006-01-02T15:04:05.000Z07:00")
	}
	res.add("recovery", ok, "recovered to %s (%s) through %s, in %s", r.ReachedLSN, when, last, r.Duration.Round(1e6))
	return nil
}

// checkSPIRERows reads SPIRE's schema and rows on the recovered server. The
// rows legitimately differ from the manifest (it counted them when the base
// started; the WAL after it changed them), so they are reported; the
// schema must still be SPIRE's, at the base's version or newer.
func checkSPIRERows(ctx context.Context, conn *pgx.Conn, m *Manifest, res *VerifyResult) {
	s, err := spire.ReadSchema(ctx, conn)
	if err != nil {
		res.add("spire", false, "reading SPIRE's schema: %v", err)
		return
	}
	if m.SPIRE != nil && (!s.Present || s.Version < m.SPIRE.SchemaVersion) {
		res.add("spire", false, "SPIRE schema version %d at the base, %d (present: %t) after recovery", m.SPIRE.SchemaVersion, s.Version, s.Present)
		return
	}
	counts, err := spire.CountRows(ctx, conn, s.Schema)
	if err != nil {
		res.add("spire", false, "counting SPIRE's rows: %v", err)
		return
	}
	if !s.Present {
		res.add("spire", true, "no SPIRE schema (none at the base either)")
		return
	}
	res.add("spire", true, "SPIRE schema version %d; registered_entries %d, attested_node_entries %d, bundles %d (base start: %d entries)",
		s.Version, counts["registered_entries"], counts["attested_node_entries"], counts["bundles"], m.RowCounts["registered_entries"])
}
