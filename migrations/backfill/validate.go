package backfill

import (
	"errors"
	"fmt"
)

// Validate reports options Start and Resume cannot work with, in one line.
func (o Options) Validate() error {
	if o.BatchSize < 0 {
		return fmt.Errorf("invalid batch size %d", o.BatchSize)
	}
	if o.TargetBatchDuration < 0 {
		return errors.New("backfill: negative target batch duration")
	}
	if o.Rest < 0 {
		return fmt.Errorf("invalid rest %g: a fraction of the batch's duration, 0 or more", o.Rest)
	}
	if err := o.MaxReplicaLag.Validate(); err != nil {
		return fmt.Errorf("backfill: --max-replica-lag: %w", err)
	}
	return o.Retry.Validate()
}
