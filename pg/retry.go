package pg

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// SQLSTATEs that mean "try again": another session held what we needed.
const (
	LockNotAvailable = "55P03" // lock_timeout expired
	DeadlockDetected = "40P01"
)

// RetryPolicy bounds Retry. The zero value means 5 attempts, 100ms first
// delay doubling up to 5s, with jitter.
type RetryPolicy struct {
	Attempts int
	Initial  time.Duration
	Max      time.Duration
	// OnRetry, when set, is told about each failed attempt before the wait.
	OnRetry func(attempt int, wait time.Duration, err error)
}

// Retryable reports whether err is a lock timeout or a deadlock.
func Retryable(err error) bool {
	switch SQLState(err) {
	case LockNotAvailable, DeadlockDetected:
		return true
	}
	return false
}

// Retry runs fn until it succeeds, fails with an error that is not
// Retryable, runs out of attempts or ctx ends. It returns fn's last error, or
// ctx's error when the context ended during a wait.
func Retry(ctx context.Context, p RetryPolicy, fn func(context.Context) error) error {
	attempts := p.Attempts
	if attempts <= 0 {
		attempts = 5
	}
	wait := p.Initial
	if wait <= 0 {
		wait = 100 * time.Millisecond
	}
	maxWait := p.Max
	if maxWait <= 0 {
		maxWait = 5 * time.Second
	}
	var err error
	for attempt := 1; ; attempt++ {
		if err = ctx.Err(); err != nil {
			return err
		}
		err = fn(ctx)
		if err == nil || !Retryable(err) || attempt >= attempts {
			return err
		}
		// full jitter in [wait/2, wait]
		d := wait/2 + time.Duration(rand.Int64N(int64(wait/2)+1))
		if p.OnRetry != nil {
			p.OnRetry(attempt, d, err)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, maxWait)
	}
}

// Validate reports a policy Retry cannot follow, in one line.
func (p RetryPolicy) Validate() error {
	if p.Attempts < 0 || p.Initial < 0 || p.Max < 0 {
		return errors.New("retry policy: negative attempts or delays")
	}
	return nil
}
