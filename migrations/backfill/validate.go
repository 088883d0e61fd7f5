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
	if o.MaxImpact < 0 || o.MaxImpact > 10 {
		return fmt.Errorf("invalid max impact %g: how much slower the live workload may get, e.g. 0.3 (30%%)", o.MaxImpact)
	}
	if o.MaxImpact > 0 && o.BatchSize > 0 {
		return errors.New("backfill: a fixed batch size and a max impact exclude each other (the governor sizes batches)")
	}
	if err := o.MaxReplicaLag.Validate(); err != nil {
		return fmt.Errorf("backfill: --max-replica-lag: %w", err)
	}
	return o.Retry.Validate()
}
