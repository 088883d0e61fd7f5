package main

import (
	"errors"
	"fmt"

	"github.com/spiredb/spiredb/backup"
	"github.com/spiredb/spiredb/pg"
)

// Exit codes; documented in `spiredb --help`.
const (
	exitOK          = 0
	exitFailure     = 1 // the command failed, or found problems that need action
	exitUsage       = 2 // bad flags, arguments or configuration
	exitUnreachable = 3 // could not connect to PostgreSQL or the store
	exitWarning     = 4 // doctor and checks: only warnings found
	// wal fetch: the file is in the store but cannot be opened (no or a
	// wrong --identity); above 125, so that PostgreSQL's restore_command
	// aborts the recovery rather than take the file for missing
	exitAbortRecovery = 126
)

const exitCodesHelp = `Exit codes:
  0  success
  1  the command failed, or found problems that need action (doctor: an error finding)
  2  usage error: bad flags, arguments or configuration
  3  could not connect to PostgreSQL (or to the backup store)
  4  doctor and checks: warnings only
  126 wal fetch: the archived file is there but cannot be decrypted (PostgreSQL then aborts the recovery)`

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// silentExit ends the command with code and no message (the output already
// said everything).
func silentExit(code int) error { return &exitError{code: code} }

func exitCodeOf(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, pg.ErrTransactionPooler) {
		return exitUsage // the fix is another --dsn
	}
	if errors.Is(err, backup.ErrNoIdentity) || errors.Is(err, backup.ErrWrongIdentity) {
		return exitUsage // the fix is another --identity
	}
	var ae *backup.AmbiguousLatestError
	if errors.As(err, &ae) {
		return exitUsage // the fix is --id
	}
	var ce *pg.ConnectError
	var se *backup.StoreError
	if errors.As(err, &ce) || errors.As(err, &se) {
		return exitUnreachable
	}
	return exitFailure
}
