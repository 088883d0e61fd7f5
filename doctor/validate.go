package doctor

import "errors"

// Validate reports options Check cannot work with, in one line.
func (o Options) Validate() error {
	if o.MaxBackupAge < 0 || o.MaxUnverifiedAge < 0 {
		return errors.New("doctor: negative age limit")
	}
	if o.Store != nil && o.StoreURL == "" {
		return errors.New("doctor: a store needs its URL (StoreURL) for the fix commands")
	}
	for _, r := range o.Replicas {
		if err := r.Validate(); err != nil {
			return err
		}
	}
	return o.Conn.Validate()
}
