package backup

import (
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/spiredb/spiredb/internal/pgarchive"
)

// setDataOffsets writes into a downloaded dump where each table's data
// starts. pg_dump streamed it to spiredb and could not record that, and
// pg_restore --jobs then scans the archive from its start for every table
// in every worker (35–50% slower at 800k SPIRE entries). It is the copy on
// this machine that changes, after its checksum was checked; a dump it
// cannot read is restored as it is.
func setDataOffsets(path string, logger *slog.Logger) {
	began := time.Now()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		logger.Warn("restoring without data offsets", "err", err)
		return
	}
	res, err := pgarchive.SetDataOffsets(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case errors.Is(err, pgarchive.ErrUnsupported):
		logger.Debug("restoring without data offsets", "err", err)
	case err != nil:
		logger.Warn("restoring without data offsets: pg_restore scans the dump for each table instead", "err", err)
	default:
		logger.Debug("data offsets set", "archive_version", res.Version, "blocks", res.Blocks, "set", res.Set,
			"took", time.Since(began).Round(time.Millisecond))
	}
}
