package agent

import (
	"context"
	"time"
)

// Clock is where the agent's scheduling reads the time and waits, so tests
// can run schedules, backoffs and deadlines without sleeping.
type Clock interface {
	Now() time.Time
	// After is like time.After, but the returned stop func releases the
	// timer early.
	After(d time.Duration) (<-chan time.Time, func())
}

// RealClock is the wall clock.
type RealClock struct{}

// Now implements Clock.
func (RealClock) Now() time.Time { return time.Now() }

// After implements Clock.
func (RealClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// sleep waits for d on clock c; it returns false when ctx ends first.
func sleep(ctx context.Context, c Clock, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	ch, stop := c.After(d)
	defer stop()
	select {
	case <-ctx.Done():
		return false
	case <-ch:
		return true
	}
}
