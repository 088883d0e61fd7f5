package backup

import (
	"errors"
	"fmt"
)

// Validate reports options Run cannot work with, in one line.
func (o RunOptions) Validate() error {
	if o.Store == nil {
		return errors.New("backup: no store")
	}
	if o.Compress < -1 || o.Compress > 9 {
		return fmt.Errorf("invalid compression %d: want 0-9", o.Compress)
	}
	switch o.codec() {
	case CodecZstd:
		if o.Compress > 0 {
			return fmt.Errorf("compression level %d is pg_dump's: with the zstd codec pg_dump writes uncompressed (use the pg_dump codec for -Z %d)", o.Compress, o.Compress)
		}
	case CodecPgDump:
	default:
		return fmt.Errorf("invalid codec %q: want zstd or pg_dump", o.Codec)
	}
	return o.Conn.Validate()
}

// Validate reports options Restore cannot work with, in one line.
func (o RestoreOptions) Validate() error {
	if o.Store == nil {
		return errors.New("restore: no store")
	}
	if (o.ID == "") == !o.Latest {
		return errors.New("name a backup with --id ID or --latest (one of them)")
	}
	if o.Jobs < 0 {
		return fmt.Errorf("restore: invalid jobs %d", o.Jobs)
	}
	return o.Target.Validate()
}

// Validate reports options Diff cannot work with, in one line.
func (o DiffOptions) Validate() error {
	if o.Store == nil {
		return errors.New("diff: no store")
	}
	if (o.ID == "") == !o.Latest {
		return errors.New("name a backup with --id ID or --latest (one of them)")
	}
	if err := o.Live.Validate(); err != nil {
		return err
	}
	return o.Scratch.Validate()
}

// Validate reports options Verify cannot work with, in one line.
func (o VerifyOptions) Validate() error {
	if o.Store == nil {
		return errors.New("verify: no store")
	}
	if (o.ID == "") == !o.Latest {
		return errors.New("name a backup with --id ID or --latest (one of them)")
	}
	switch o.Level {
	case "", LevelChecksum, LevelTOC, LevelRestore:
	case LevelPITR:
		if o.FetchCommand == "" {
			return errors.New("verify --level pitr: no restore_command (FetchCommand)")
		}
		return nil
	default:
		return fmt.Errorf("invalid level %q: want checksum, toc, restore or pitr", o.Level)
	}
	if o.Jobs < 0 {
		return fmt.Errorf("verify: invalid jobs %d", o.Jobs)
	}
	return o.Scratch.Validate()
}
