package agent

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tenantvault/tenantvault"
)

// fakeClock moves only when told to; waiters tells how many timers are
// pending, so a test knows the code under test is waiting.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t.ch, func() {}
	}
	c.timers = append(c.timers, t)
	return t.ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.timers {
			if x == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return
			}
		}
	}
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			keep = append(keep, t)
		}
	}
	c.timers = keep
}

// WaitTimers waits (in real time, briefly) until n timers are pending.
func (c *fakeClock) WaitTimers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		k := len(c.timers)
		c.mu.Unlock()
		if k >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no %d pending timer(s)", n)
}

// NextTimer is how far away the earliest pending timer is.
func (c *fakeClock) NextTimer() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ds []time.Duration
	for _, t := range c.timers {
		ds = append(ds, t.at.Sub(c.now))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	if len(ds) == 0 {
		return -1
	}
	return ds[0]
}

func testAgent(t *testing.T, yaml string, c Clock, attempt func(context.Context, *sourceJob, *slog.Logger) error) *Agent {
	t.Helper()
	cfg, err := Load([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := New(cfg, Options{Clock: c, attempt: attempt})
	a.schedCtx, a.stopSched = context.WithCancel(context.Background())
	a.jobCtx, a.cancelJobs = context.WithCancel(context.Background())
	t.Cleanup(func() { a.stopSched(); a.cancelJobs() })
	return a
}

const schedYAML = `
repository: file:///tmp/unused
sources:
  - name: main
    url: postgres://u@127.0.0.1:1/db
    schedule: "@every 10m"
    retries: 3
    retry_backoff: 10s
`

// TestRetryBackoff: failures retry after 10s, 20s, 40s (plus up to a
// quarter of jitter), but never past the next slot, and not at all for
// errors retrying cannot fix.
func TestRetryBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		next     time.Duration
		err      error
		attempts int
	}{
		{"all retries", time.Hour, errors.New("connection refused"), 4},
		{"stops before the next slot", time.Minute, errors.New("connection refused"), 3},
		{"permanent error", time.Hour, tenantvault.Inputf("bad password"), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeClock()
			var mu sync.Mutex
			var at []time.Time
			a := testAgent(t, schedYAML, c, func(context.Context, *sourceJob, *slog.Logger) error {
				mu.Lock()
				at = append(at, c.Now())
				mu.Unlock()
				return tc.err
			})
			start := c.Now()
			done := make(chan struct{})
			go func() { a.runJob(a.sources[0], start, start.Add(tc.next)); close(done) }()
			for {
				select {
				case <-done:
				case <-time.After(time.Millisecond):
					if d := c.NextTimer(); d > 0 {
						c.Advance(d)
					}
					continue
				}
				break
			}
			if len(at) != tc.attempts {
				t.Fatalf("%d attempts at %v, want %d", len(at), at, tc.attempts)
			}
			for i := 1; i < len(at); i++ {
				gap, min := at[i].Sub(at[i-1]), 10*time.Second<<(i-1)
				if gap < min || gap > min*5/4 {
					t.Fatalf("attempt %d came %s after the previous, want %s..%s", i+1, gap, min, min*5/4)
				}
			}
			if got := testutil.ToFloat64(a.m.failures.WithLabelValues("main")); got != float64(tc.attempts) {
				t.Fatalf("failures_total %v", got)
			}
		})
	}
}

// TestOverrunSkipped: a slot that finds the previous run still going is
// skipped and counted, and the job is never started twice.
func TestOverrunSkipped(t *testing.T) {
	c := newFakeClock()
	release := make(chan struct{})
	var mu sync.Mutex
	running, maxRunning, runs := 0, 0, 0
	a := testAgent(t, schedYAML, c, func(ctx context.Context, _ *sourceJob, _ *slog.Logger) error {
		mu.Lock()
		running++
		runs++
		maxRunning = max(maxRunning, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	})
	a.loops.Add(1)
	go a.scheduleLoop(a.sources[0])
	c.WaitTimers(t, 1)
	c.Advance(10 * time.Minute) // first slot: the job starts and blocks
	for range 3 {               // three more slots while it runs
		c.WaitTimers(t, 1)
		c.Advance(10 * time.Minute)
	}
	c.WaitTimers(t, 1)
	if got := testutil.ToFloat64(a.m.skipped.WithLabelValues("main", "overrun")); got != 3 {
		t.Fatalf("skipped overrun %v, want 3", got)
	}
	close(release)
	a.jobs.Wait()
	a.stopSched()
	a.loops.Wait()
	if runs != 1 || maxRunning != 1 {
		t.Fatalf("runs %d, at most %d at once", runs, maxRunning)
	}
}
