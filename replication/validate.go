package replication

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// validDataDir checks what bootstrap and rejoin need of their data
// directory options.
func validDataDir(dir, slot string, start bool, port int) error {
	if dir == "" {
		return errors.New("no data directory: pass --data-dir")
	}
	if slot != "" && !slotRE.MatchString(slot) {
		return fmt.Errorf("invalid slot name %q: lower-case letters, digits and _ only, at most 63", slot)
	}
	if start && port <= 0 {
		return errors.New("--start needs --port for the standby")
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("invalid port %d", port)
	}
	return nil
}

// validStandbyPassfile refuses a --standby-passfile spiredb must not
// write: anything but a regular file that is absent, empty or a passfile
// spiredb wrote (one "*:*:*:*:" line). Writing replaces the whole file, so
// the operator's own entries (a ~/.pgpass) would be lost.
func validStandbyPassfile(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("--standby-passfile: %w", err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("--standby-passfile %s is not a regular file (%s): name a file spiredb may write", path, fi.Mode().Type())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--standby-passfile: %w", err)
	}
	line, rest, _ := strings.Cut(string(b), "\n")
	if len(b) > 0 && (!strings.HasPrefix(line, passfileAny) || rest != "") {
		return fmt.Errorf("--standby-passfile %s holds other entries (spiredb writes the whole file, for the standby alone): name a new file", path)
	}
	return nil
}

// Validate reports options Bootstrap cannot work with, in one line.
func (o BootstrapOptions) Validate() error {
	if err := validDataDir(o.DataDir, o.Slot, o.Start, o.Port); err != nil {
		return err
	}
	if err := validStandbyPassfile(o.StandbyPassfile); err != nil {
		return err
	}
	return o.Primary.Validate()
}

// Validate reports options Rejoin cannot work with, in one line.
func (o RejoinOptions) Validate() error {
	if err := validDataDir(o.DataDir, o.Slot, o.Start, o.Port); err != nil {
		return err
	}
	if err := validStandbyPassfile(o.StandbyPassfile); err != nil {
		return err
	}
	if err := o.Old.Validate(); err != nil {
		return err
	}
	return o.Primary.Validate()
}

// Validate reports options Switchover cannot work with, in one line.
func (o SwitchoverOptions) Validate() error {
	if o.Wait < 0 {
		return errors.New("switchover: negative wait")
	}
	if err := o.MaxLag.Validate(); err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	if err := o.Primary.Validate(); err != nil {
		return err
	}
	return o.Standby.Validate()
}

// Validate reports options Fence cannot work with, in one line.
func (o FenceOptions) Validate() error {
	if o.Settle < 0 {
		return errors.New("fence: negative settle time")
	}
	for _, d := range o.Databases {
		if d == "" {
			return errors.New("fence: an empty database name")
		}
	}
	return o.Conn.Validate()
}

// Validate reports options Promote cannot work with, in one line.
func (o PromoteOptions) Validate() error {
	if o.Wait < 0 {
		return errors.New("promote: negative wait")
	}
	if err := o.MaxLag.Validate(); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	return o.Conn.Validate()
}
