package indexes

import (
	"errors"
	"fmt"
)

// Validate reports options Advise cannot work with, in one line.
func (o AdviseOptions) Validate() error {
	if o.MinGain < 0 || o.MinGain >= 1 {
		return fmt.Errorf("advise: min gain %g must be in [0, 1)", o.MinGain)
	}
	if o.Statements < 0 {
		return errors.New("advise: negative statement count")
	}
	return nil
}

// Validate reports options Check cannot work with, in one line.
func (o CheckOptions) Validate() error {
	if o.MinBloatBytes < 0 || o.MinUnusedBytes < 0 {
		return errors.New("check: negative size threshold")
	}
	if o.MinBloatRatio != 0 && o.MinBloatRatio < 1 {
		return fmt.Errorf("check: bloat ratio %g must be at least 1", o.MinBloatRatio)
	}
	return nil
}

// Validate reports options Apply cannot work with, in one line: every
// name in Only must be one of the set's indexes (*UnknownIndexError).
func (o ApplyOptions) Validate() error {
	for _, name := range o.Only {
		if _, ok := Lookup(name); !ok {
			return &UnknownIndexError{Name: name}
		}
	}
	return o.Retry.Validate()
}
