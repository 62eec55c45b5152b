package repo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/repo/repotest"
)

var errTransient = errors.New("transient trouble")

func newFile(t *testing.T) repo.Backend {
	t.Helper()
	b, err := file.New(t.TempDir(), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// clock records the waits of a Retry instead of waiting.
type clock struct {
	mu     sync.Mutex
	caps   []time.Duration // what Rand was asked for
	sleeps []time.Duration
}

func (c *clock) options(attempts int) repo.RetryOptions {
	return repo.RetryOptions{
		Attempts: attempts,
		Base:     100 * time.Millisecond,
		Max:      time.Second,
		Logger:   slog.New(slog.DiscardHandler),
		Rand: func(n time.Duration) time.Duration {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.caps = append(c.caps, n)
			return n / 2
		},
		Sleep: func(ctx context.Context, d time.Duration) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.sleeps = append(c.sleeps, d)
			return ctx.Err()
		},
	}
}

func TestRetryBackoff(t *testing.T) {
	ctx := context.Background()
	f := repo.NewFaulty(newFile(t))
	f.Inject(repo.Fault{Op: repo.OpStat, Err: errTransient})
	var c clock
	_, err := repo.Retry(f, c.options(7)).Stat(ctx, "x")
	if !errors.Is(err, errTransient) || repo.IsPermanent(err) {
		t.Fatalf("stat: %v, want the transient error", err)
	}
	if !strings.HasPrefix(err.Error(), "gave up after 7 attempts: ") {
		t.Errorf("error %q does not say how often it tried", err)
	}
	if n := f.Calls(repo.OpStat); n != 7 {
		t.Errorf("%d calls, want 7", n)
	}
	// Exponential up to Max, with full jitter: the wait is drawn from
	// [0, cap], here always half of it.
	wantCaps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i := range wantCaps {
		wantCaps[i] *= time.Millisecond
	}
	if !slices.Equal(c.caps, wantCaps) {
		t.Errorf("backoff caps %v, want %v", c.caps, wantCaps)
	}
	for i, d := range c.sleeps {
		if d != wantCaps[i]/2 {
			t.Errorf("sleep %d: %v, want %v", i, d, wantCaps[i]/2)
		}
	}
}

func TestRetryDefaultJitter(t *testing.T) {
	var slept []time.Duration
	f := repo.NewFaulty(newFile(t))
	f.Inject(repo.Fault{Op: repo.OpDelete, Times: 50, Err: errTransient})
	r := repo.Retry(f, repo.RetryOptions{
		Attempts: 51, Base: time.Second, Max: 4 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil },
	})
	if err := r.Delete(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if len(slept) != 50 {
		t.Fatalf("%d sleeps, want 50", len(slept))
	}
	distinct := map[time.Duration]bool{}
	for i, d := range slept {
		limit := 4 * time.Second
		if i < 2 {
			limit = time.Second << i
		}
		if d < 0 || d > limit {
			t.Errorf("sleep %d: %v, outside [0, %v]", i, d, limit)
		}
		distinct[d] = true
	}
	if len(distinct) < 40 {
		t.Errorf("only %d distinct waits out of 50: no jitter?", len(distinct))
	}
}

func TestRetryPermanentNotRetried(t *testing.T) {
	ctx := context.Background()
	denied := errors.New("access denied")
	for _, err := range []error{repo.Permanent(denied), repo.ErrNotFound, context.Canceled, repo.ErrBucketNotFound} {
		f := repo.NewFaulty(newFile(t))
		f.Inject(repo.Fault{Err: err})
		var c clock
		r := repo.Retry(f, c.options(5))
		if _, got := r.Stat(ctx, "x"); !errors.Is(got, err) {
			t.Errorf("stat failing with %v: %v", err, got)
		}
		if got := r.Delete(ctx, "x"); !errors.Is(got, err) {
			t.Errorf("delete failing with %v: %v", err, got)
		}
		if f.Calls(repo.OpStat) != 1 || f.Calls(repo.OpDelete) != 1 || len(c.sleeps) != 0 {
			t.Errorf("%v was retried", err)
		}
	}
}

func TestRetryStopsWithContext(t *testing.T) {
	f := repo.NewFaulty(newFile(t))
	f.Inject(repo.Fault{Err: errTransient})

	// Cancelled while waiting: the real timer gives way at once.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	r := repo.Retry(f, repo.RetryOptions{Base: time.Hour, Max: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Rand: func(n time.Duration) time.Duration { return n }})
	_, err := r.Stat(ctx, "x")
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
		t.Errorf("stat cancelled while waiting: %v, want context.Canceled and the last error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled wait took %v", d)
	}

	// A deadline before the next try: give up without waiting.
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var c clock
	opts := c.options(5)
	opts.Base, opts.Max = time.Hour, time.Hour
	opts.Rand = func(n time.Duration) time.Duration { return n }
	_, err = repo.Retry(f, opts).Stat(ctx, "x")
	if !errors.Is(err, errTransient) || len(c.sleeps) != 0 {
		t.Errorf("stat with a near deadline: %v after %d sleeps, want the last error and no sleep", err, len(c.sleeps))
	}
}

func TestRetryLogs(t *testing.T) {
	var buf bytes.Buffer
	f := repo.NewFaulty(newFile(t))
	f.Inject(repo.Fault{Op: repo.OpStat, Times: 2, Err: errTransient})
	var c clock
	opts := c.options(5)
	opts.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	if _, err := repo.Retry(f, opts).Stat(context.Background(), "some/key"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("stat: %v, want not found after two retries", err)
	}
	var records []map[string]any
	for line := range strings.Lines(buf.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		records = append(records, rec)
	}
	if len(records) != 2 {
		t.Fatalf("%d log records, want 2:\n%s", len(records), buf.String())
	}
	for i, rec := range records {
		if rec["level"] != "WARN" || rec["op"] != "stat" || rec["key"] != "some/key" ||
			rec["attempt"] != float64(i+1) || rec["error"] != errTransient.Error() {
			t.Errorf("log record %d: %v", i, rec)
		}
	}
}

func TestRetryPut(t *testing.T) {
	ctx := context.Background()
	data := repotest.Data(1, 100_000)

	t.Run("Rewound", func(t *testing.T) {
		b := newFile(t)
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpPut, Times: 2, Err: errTransient})
		var c clock
		// Put sends from where the reader stands, and so does every retry.
		r := bytes.NewReader(data)
		r.Seek(10, io.SeekStart)
		if err := repo.Retry(f, c.options(5)).Put(ctx, "k", r, int64(len(data)-10)); err != nil {
			t.Fatal(err)
		}
		got, err := repo.ReadAll(ctx, b, "k")
		if err != nil || !bytes.Equal(got, data[10:]) {
			t.Fatalf("stored %d bytes, %v; want the data from offset 10", len(got), err)
		}
	})
	t.Run("RewoundAfterPartialRead", func(t *testing.T) {
		b := newFile(t)
		var c clock
		fb := &failOnce{Backend: b}
		if err := repo.Retry(fb, c.options(5)).Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		got, err := repo.ReadAll(ctx, b, "k")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored %d bytes, %v; want all the data", len(got), err)
		}
	})
	t.Run("StreamNotRetried", func(t *testing.T) {
		f := repo.NewFaulty(newFile(t))
		f.Inject(repo.Fault{Op: repo.OpPut, Times: 1, Err: errTransient})
		var c clock
		err := repo.Retry(f, c.options(5)).Put(ctx, "k", io.MultiReader(bytes.NewReader(data)), -1)
		if !errors.Is(err, errTransient) || f.Calls(repo.OpPut) != 1 {
			t.Errorf("put of a stream: %v after %d calls, want one call", err, f.Calls(repo.OpPut))
		}
	})
	t.Run("SourceErrorNotRetried", func(t *testing.T) {
		f := repo.NewFaulty(newFile(t))
		var c clock
		src := &seekableFailing{Reader: bytes.NewReader(data)}
		err := repo.Retry(f, c.options(5)).Put(ctx, "k", src, int64(len(data)))
		if !errors.Is(err, errDisk) || f.Calls(repo.OpPut) != 1 {
			t.Errorf("put from a failing source: %v after %d calls, want one call", err, f.Calls(repo.OpPut))
		}
	})
}

// failOnce fails the first Put after reading half of the data, as a
// connection dropped during an upload would.
type failOnce struct {
	repo.Backend
	failed bool
}

func (f *failOnce) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if !f.failed {
		f.failed = true
		io.CopyN(io.Discard, r, size/2)
		return errTransient
	}
	return f.Backend.Put(ctx, key, r, size)
}

var errDisk = errors.New("disk read error")

type seekableFailing struct{ *bytes.Reader }

func (s *seekableFailing) Read(p []byte) (int, error) { return 0, errDisk }

// listFailing makes its first fails Lists fail after delivering n keys.
type listFailing struct {
	repo.Backend
	n     int
	fails int
}

func (l *listFailing) List(ctx context.Context, prefix string, fn func(repo.ObjectInfo) error) error {
	if l.fails == 0 {
		return l.Backend.List(ctx, prefix, fn)
	}
	l.fails--
	delivered := 0
	err := l.Backend.List(ctx, prefix, func(info repo.ObjectInfo) error {
		if delivered == l.n {
			return errTransient
		}
		delivered++
		return fn(info)
	})
	return err
}

func TestRetryList(t *testing.T) {
	ctx := context.Background()
	b := newFile(t)
	var keys []string
	for _, k := range []string{"a", "b/1", "b/2", "c", "d"} {
		if err := b.Put(ctx, k, strings.NewReader(k), int64(len(k))); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	var c clock
	lf := &listFailing{Backend: b, n: 2, fails: 2}
	var got []string
	if err := repo.Retry(lf, c.options(5)).List(ctx, "", func(info repo.ObjectInfo) error {
		got = append(got, info.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, keys) {
		t.Errorf("listed %q, want each key once: %q", got, keys)
	}

	// An error from fn is the caller's: returned at once.
	stop := errors.New("stop")
	calls := 0
	f := repo.NewFaulty(b)
	err := repo.Retry(f, c.options(5)).List(ctx, "", func(repo.ObjectInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 || f.Calls(repo.OpList) != 1 {
		t.Errorf("list with failing fn: %v, %d calls of fn, %d of List", err, calls, f.Calls(repo.OpList))
	}
}

func TestRetryGetResume(t *testing.T) {
	ctx := context.Background()
	b := newFile(t)
	data := repotest.Data(2, 1<<20)
	if err := b.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rec := &getRecorder{Backend: b}
	f := repo.NewFaulty(rec)
	f.Inject(repo.Fault{Op: repo.OpGet, Times: 3, Read: repo.FailReadAfter(1000)})
	var c clock
	opts := c.options(5)
	opts.Resumes = 3
	rc, err := repo.Retry(f, opts).Get(ctx, "k", 100, 500_000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[100:500_100]) {
		t.Fatalf("read %d bytes, %v; want the range", len(got), err)
	}
	want := [][2]int64{{100, 500_000}, {1100, 499_000}, {2100, 498_000}, {3100, 497_000}}
	if !slices.Equal(rec.calls, want) {
		t.Errorf("Get calls (offset, length) %v, want %v", rec.calls, want)
	}

	// Once the resumes are spent, the error reaches the reader.
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.FailReadAfter(1000)})
	rc, err = repo.Retry(f, opts).Get(ctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, repo.ErrInjected) || len(got) != 4000 {
		t.Errorf("read with a reset every 1000 bytes: %d bytes, %v; want 4000 bytes and the reset", len(got), err)
	}
}

type getRecorder struct {
	repo.Backend
	calls [][2]int64
}

func (g *getRecorder) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	g.calls = append(g.calls, [2]int64{offset, length})
	return g.Backend.Get(ctx, key, offset, length)
}
