package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"
)

// Op names a Backend operation, for fault injection, counters and logs.
type Op string

// The operations of a Backend that can fail.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpStat   Op = "stat"
	OpList   Op = "list"
	OpDelete Op = "delete"
)

// ErrInjected is wrapped by every error that Faulty makes up itself (a reset
// connection, an unreachable server), so a test can tell them from real ones.
var ErrInjected = errors.New("injected fault")

// Fault describes when Faulty interferes with a call and what it does.
//
// Every fault whose Op and Match fit a call counts that call, from the moment
// the fault is injected; the fault fires on the matching calls After+1
// through After+Times. All faults that fire on
// one call act together: their delays add up, the first Err fails the call
// without reaching the backend, and otherwise each Read damages the stream
// that Get returns, in the order the faults were injected.
type Fault struct {
	// Op is the operation to interfere with; empty means every operation.
	Op Op
	// Match selects calls by key (List passes its prefix); nil matches all.
	// It runs under the Faulty's lock, so it must not call the Faulty.
	Match func(key string) bool
	// After lets this many matching calls through before the fault fires.
	After int
	// Times is how many matching calls the fault fires on; 0 means all of
	// them from call After+1 on.
	Times int
	// Delay holds the call back, as a slow network would; a context that
	// ends meanwhile fails the call.
	Delay time.Duration
	// Err fails the call without reaching the backend. Wrap it with
	// Permanent to simulate an error that retrying cannot fix; a bare error
	// is transient.
	Err error
	// Lost makes Err an error the caller sees after the call did reach
	// the backend and succeed there (for Put and Delete): the answer was
	// lost, as when a connection resets after the last byte of an upload.
	Lost bool
	// Read damages what Get returns; it is ignored for other operations.
	// See FailReadAfter, CutAfter and FlipBit.
	Read ReadFault
}

// ReadFault wraps the stream returned by a Get. offset is where in the object
// the stream starts (the offset passed to Get).
type ReadFault func(r io.Reader, offset int64) io.Reader

// FailReadAfter makes the stream deliver n bytes and then fail with a
// transient "connection reset by peer", as a dropped connection does. n
// counts bytes of this stream, not object offsets.
func FailReadAfter(n int64) ReadFault {
	return func(r io.Reader, _ int64) io.Reader {
		return &failingReader{r: r, left: n}
	}
}

// CutAfter makes the stream end cleanly (io.EOF) after n bytes, as a server
// that sends a truncated object without noticing would. n counts bytes of
// this stream.
func CutAfter(n int64) ReadFault {
	return func(r io.Reader, _ int64) io.Reader {
		return io.LimitReader(r, n)
	}
}

// FlipBit flips the lowest bit of the object's byte at offset at, as silent
// corruption on the storage would; a ranged Get that does not cover that
// byte is unaffected.
func FlipBit(at int64) ReadFault {
	return func(r io.Reader, offset int64) io.Reader {
		return &flippingReader{r: r, pos: offset, at: at}
	}
}

// Faulty wraps a Backend and injects faults on demand, so that tests drive
// error paths (transient outages, resets mid-stream, corruption) against a
// real backend, deterministically. It is safe for concurrent use.
//
//	f := repo.NewFaulty(b)
//	f.Inject(repo.Fault{Op: repo.OpGet, Times: 1, Read: repo.FailReadAfter(1 << 20)})
//	data, err := repo.ReadAll(ctx, repo.Retry(f, repo.RetryOptions{}), key)
type Faulty struct {
	b Backend

	mu          sync.Mutex
	faults      []*faultState
	calls       map[Op]int
	unreachable bool
}

type faultState struct {
	Fault
	seen  int // matching calls counted so far
	fired int
}

var _ Backend = (*Faulty)(nil)

// NewFaulty returns a wrapper around b that behaves exactly like b until a
// fault is injected.
func NewFaulty(b Backend) *Faulty {
	return &Faulty{b: b, calls: map[Op]int{}}
}

// Inject adds a fault. Faults stay until Clear, also once spent.
func (f *Faulty) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, &faultState{Fault: ft})
}

// Clear removes every fault and turns SetUnreachable off; counters stay.
func (f *Faulty) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = nil
	f.unreachable = false
}

// SetUnreachable makes every call fail with a transient "connection refused"
// while on is true, as if the storage had dropped off the network.
func (f *Faulty) SetUnreachable(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unreachable = on
}

// Calls returns how many calls of op reached the wrapper so far, failed ones
// included.
func (f *Faulty) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// plan is what the faults decided for one call.
type plan struct {
	delay time.Duration
	err   error
	lost  bool // err comes after the call reached the backend
	reads []ReadFault
}

func (f *Faulty) plan(op Op, key string) plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	var p plan
	if f.unreachable {
		p.err = fmt.Errorf("%s %s: dial: %w (%w)", op, key, syscall.ECONNREFUSED, ErrInjected)
		return p
	}
	for _, ft := range f.faults {
		if (ft.Op != "" && ft.Op != op) || (ft.Match != nil && !ft.Match(key)) {
			continue
		}
		ft.seen++
		if ft.seen <= ft.After || ft.Times > 0 && ft.fired >= ft.Times {
			continue
		}
		ft.fired++
		p.delay += ft.Delay
		if p.err == nil && ft.Err != nil {
			p.err, p.lost = ft.Err, ft.Lost
		}
		if ft.Read != nil && op == OpGet {
			p.reads = append(p.reads, ft.Read)
		}
	}
	return p
}

// begin applies the delay and error of a call's plan. An error to return
// after the call (Lost) is left in the plan.
func (f *Faulty) begin(ctx context.Context, op Op, key string) (plan, error) {
	p := f.plan(op, key)
	if p.delay > 0 {
		t := time.NewTimer(p.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return p, fmt.Errorf("%s %s: %w", op, key, ctx.Err())
		}
	}
	if p.lost && (op == OpPut || op == OpDelete) {
		return p, nil
	}
	return p, p.err
}

// Put implements Backend.
func (f *Faulty) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := f.begin(ctx, OpPut, key)
	if err != nil {
		return err
	}
	if err := f.b.Put(ctx, key, r, size); err != nil || !p.lost {
		return err
	}
	return p.err
}

// Get implements Backend.
func (f *Faulty) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	p, err := f.begin(ctx, OpGet, key)
	if err != nil {
		return nil, err
	}
	rc, err := f.b.Get(ctx, key, offset, length)
	if err != nil || len(p.reads) == 0 {
		return rc, err
	}
	var r io.Reader = rc
	for _, rf := range p.reads {
		r = rf(r, offset)
	}
	return readCloser{Reader: r, Closer: rc}, nil
}

// Stat implements Backend.
func (f *Faulty) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if _, err := f.begin(ctx, OpStat, key); err != nil {
		return ObjectInfo{}, err
	}
	return f.b.Stat(ctx, key)
}

// List implements Backend.
func (f *Faulty) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if _, err := f.begin(ctx, OpList, prefix); err != nil {
		return err
	}
	return f.b.List(ctx, prefix, fn)
}

// Delete implements Backend.
func (f *Faulty) Delete(ctx context.Context, key string) error {
	p, err := f.begin(ctx, OpDelete, key)
	if err != nil {
		return err
	}
	if err := f.b.Delete(ctx, key); err != nil || !p.lost {
		return err
	}
	return p.err
}

// Location implements Backend.
func (f *Faulty) Location() string { return f.b.Location() }

// Unwrap implements Unwrapper.
func (f *Faulty) Unwrap() Backend { return f.b }

// Close implements Backend.
func (f *Faulty) Close() error { return f.b.Close() }

type readCloser struct {
	io.Reader
	io.Closer
}

type failingReader struct {
	r    io.Reader
	left int64
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, fmt.Errorf("read: %w (%w)", syscall.ECONNRESET, ErrInjected)
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= int64(n)
	return n, err
}

type flippingReader struct {
	r   io.Reader
	pos int64 // object offset of the next byte read
	at  int64
}

func (r *flippingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if i := r.at - r.pos; i >= 0 && i < int64(n) {
		p[i] ^= 1
	}
	r.pos += int64(n)
	return n, err
}
