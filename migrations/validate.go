package migrations

import (
	"errors"
	"fmt"
	"strings"
)

// Validate reports options Open cannot work with, in one line.
func (o Options) Validate() error {
	if len(o.Table) > 63 || strings.ContainsRune(o.Table, 0) {
		return fmt.Errorf("invalid version table %q: at most 63 bytes", o.Table)
	}
	if o.LockWait < 0 {
		return errors.New("migrations: negative lock wait")
	}
	return o.Retry.Validate()
}
