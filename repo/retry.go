package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// RetryOptions tune Retry. The zero value gives the defaults.
type RetryOptions struct {
	// Attempts is how often one operation is tried, the first try included
	// (default 5).
	Attempts int
	// Base is the longest wait before the first retry; it doubles for each
	// further retry (default 200ms).
	Base time.Duration
	// Max caps the wait between two tries (default 10s).
	Max time.Duration
	// Resumes is how often one stream returned by Get is reopened at the
	// offset where it broke (default 10).
	Resumes int
	// Logger receives a Warn record for every retry; nil means
	// slog.Default() at the time of the retry.
	Logger *slog.Logger
	// Sleep waits for d or until ctx is done, returning ctx.Err() then; nil
	// means a timer. Tests replace it to run without waiting.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a random duration in [0, n]; nil means math/rand/v2.
	// Tests replace it to make the jitter predictable.
	Rand func(n time.Duration) time.Duration
}

// Retry returns a Backend that retries the operations of b that fail with an
// error that may be transient (one that IsPermanent rejects), waiting between
// tries with exponential backoff and full jitter: before retry n it waits a
// random time between 0 and min(Max, Base·2ⁿ⁻¹). It never waits past the end
// of the context: when the context's deadline comes before the next try, it
// gives up at once with the last error.
//
// What is retried:
//   - Put, only when the reader is an io.Seeker: it is rewound to the offset
//     it had when Put was called. Other readers cannot be replayed, so such a
//     Put is tried once. An error from the reader itself is not retried
//     either: the source, not the storage, failed.
//   - Get: opening the stream; and when the stream breaks while being read,
//     a ranged Get from the first byte not yet delivered continues it, up to
//     Resumes times. Objects are immutable, so the pieces fit together.
//   - List: the listing restarts and skips the keys already delivered, which
//     relies on the lexical order of the contract. An error from fn is
//     returned at once.
//   - Stat and Delete.
func Retry(b Backend, opts RetryOptions) Backend {
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.Base <= 0 {
		opts.Base = 200 * time.Millisecond
	}
	if opts.Max <= 0 {
		opts.Max = 10 * time.Second
	}
	if opts.Max < opts.Base {
		opts.Max = opts.Base
	}
	if opts.Resumes <= 0 {
		opts.Resumes = 10
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	if opts.Rand == nil {
		opts.Rand = jitter
	}
	return &retrying{b: b, o: opts}
}

type retrying struct {
	b Backend
	o RetryOptions
}

var _ Backend = (*retrying)(nil)

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func jitter(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(n) + 1))
}

// noRetry carries an error that must be returned as it is, whatever
// IsPermanent says about it.
type noRetry struct{ err error }

func (e noRetry) Error() string { return e.err.Error() }

// backoff returns the wait before retry n (n >= 1).
func (r *retrying) backoff(n int) time.Duration {
	d := r.o.Base
	for i := 1; i < n && d < r.o.Max; i++ {
		d *= 2
	}
	return r.o.Rand(min(d, r.o.Max))
}

// wait sleeps before retry n of op after cause, or explains why it will not.
func (r *retrying) wait(ctx context.Context, op Op, key string, n int, cause error, attrs ...slog.Attr) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w (while retrying after: %w)", err, cause)
	}
	d := r.backoff(n)
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return fmt.Errorf("not retried, the context deadline comes first: %w", cause)
	}
	logger := r.o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	attrs = append([]slog.Attr{
		slog.String("op", string(op)),
		slog.String("key", key),
		slog.Int("attempt", n),
		slog.Duration("delay", d),
		slog.String("error", cause.Error()),
		slog.String("repo", r.b.Location()),
	}, attrs...)
	logger.LogAttrs(ctx, slog.LevelWarn, "repository operation failed, retrying", attrs...)
	if err := r.o.Sleep(ctx, d); err != nil {
		return fmt.Errorf("%w (while retrying after: %w)", err, cause)
	}
	return nil
}

func (r *retrying) do(ctx context.Context, op Op, key string, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if stop, ok := err.(noRetry); ok {
			return stop.err
		}
		if err == nil || IsPermanent(err) {
			return err
		}
		if attempt >= r.o.Attempts {
			if attempt > 1 {
				err = fmt.Errorf("gave up after %d attempts: %w", attempt, err)
			}
			return err
		}
		if err := r.wait(ctx, op, key, attempt, err); err != nil {
			return err
		}
	}
}

// Put implements Backend.
func (r *retrying) Put(ctx context.Context, key string, rd io.Reader, size int64) error {
	seeker, ok := rd.(io.Seeker)
	if !ok {
		return r.b.Put(ctx, key, rd, size)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		return r.b.Put(ctx, key, rd, size)
	}
	src := &sourceReader{r: rd}
	tries := 0
	return r.do(ctx, OpPut, key, func() error {
		if tries++; tries > 1 {
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return noRetry{fmt.Errorf("put %s: rewind reader: %w", key, err)}
			}
		}
		src.err = nil
		err := r.b.Put(ctx, key, src, size)
		if err != nil && src.err != nil {
			return noRetry{err}
		}
		return err
	})
}

// sourceReader remembers whether the caller's reader failed, so that a Put
// that failed because of its source is not retried.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Get implements Backend.
func (r *retrying) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := r.get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	end := int64(-1)
	if length >= 0 {
		end = offset + length
	}
	return &resumingReader{r: r, ctx: ctx, key: key, rc: rc, pos: offset, end: end}, nil
}

func (r *retrying) get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, OpGet, key, func() error {
		var err error
		rc, err = r.b.Get(ctx, key, offset, length)
		return err
	})
	return rc, err
}

// resumingReader continues a broken Get stream with a ranged Get from the
// first byte it has not delivered yet.
type resumingReader struct {
	r       *retrying
	ctx     context.Context
	key     string
	rc      io.ReadCloser // nil once a resume failed
	pos     int64         // object offset of the next byte to deliver
	end     int64         // object offset where the range ends; -1: end of object
	resumes int
	broken  error // read error held back while bytes read with it are delivered
	err     error // final error, once resuming failed
}

func (s *resumingReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	for {
		if s.broken != nil {
			if err := s.resume(); err != nil {
				s.err = err
				return 0, err
			}
		}
		if s.end >= 0 && s.pos >= s.end {
			return 0, io.EOF
		}
		n, err := s.rc.Read(p)
		s.pos += int64(n)
		if err == nil || err == io.EOF || IsPermanent(err) || s.resumes >= s.r.o.Resumes {
			return n, err
		}
		s.broken = err
		if n > 0 {
			return n, nil
		}
	}
}

func (s *resumingReader) resume() error {
	cause := s.broken
	s.broken = nil
	s.rc.Close()
	s.rc = nil
	s.resumes++
	if err := s.r.wait(s.ctx, OpGet, s.key, s.resumes, cause, slog.Int64("resume_offset", s.pos)); err != nil {
		return err
	}
	length := int64(-1)
	if s.end >= 0 {
		length = s.end - s.pos
	}
	rc, err := s.r.get(s.ctx, s.key, s.pos, length)
	if err != nil {
		return fmt.Errorf("resume %s at offset %d: %w", s.key, s.pos, err)
	}
	s.rc = rc
	return nil
}

func (s *resumingReader) Close() error {
	if s.rc == nil {
		return nil
	}
	err := s.rc.Close()
	s.rc = nil
	if s.err == nil {
		s.err = errReaderClosed
	}
	return err
}

var errReaderClosed = errors.New("read after close")

// Stat implements Backend.
func (r *retrying) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var info ObjectInfo
	err := r.do(ctx, OpStat, key, func() error {
		var err error
		info, err = r.b.Stat(ctx, key)
		return err
	})
	return info, err
}

// List implements Backend.
func (r *retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	var (
		last    string
		started bool
		fnErr   error
	)
	return r.do(ctx, OpList, prefix, func() error {
		err := r.b.List(ctx, prefix, func(info ObjectInfo) error {
			if started && info.Key <= last {
				return nil
			}
			if err := fn(info); err != nil {
				fnErr = err
				return err
			}
			last, started = info.Key, true
			return nil
		})
		if fnErr != nil {
			if err == nil {
				err = fnErr
			}
			return noRetry{err}
		}
		return err
	})
}

// Delete implements Backend.
func (r *retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, OpDelete, key, func() error { return r.b.Delete(ctx, key) })
}

// Location implements Backend.
func (r *retrying) Location() string { return r.b.Location() }

// Unwrap implements Unwrapper.
func (r *retrying) Unwrap() Backend { return r.b }

// Close implements Backend.
func (r *retrying) Close() error { return r.b.Close() }
