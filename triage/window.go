package triage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

// commitMargin is the capture's watermark margin: a segment's Until is the
// source's clock minus one second when the segment's end was flushed, so
// every record of it committed before Until + commitMargin, and every
// transaction that committed before Until is in it or an earlier one.
const commitMargin = time.Second

// logWindow is the part of a change stream that holds every change
// committed in [From, To], found from the segments' signed index headers
// alone: no record is read to find it.
type logWindow struct {
	Stream     string
	From, To   time.Time
	Segments   []*vault.SegmentIndex
	Complete   time.Time // the log is complete from here ...
	Until      time.Time // ... to here
	TotalSegs  int
	IndexReads int
}

// pickStream returns the stream to read: the one given, or the only one.
func pickStream(ctx context.Context, v *vault.Vault, stream string) (string, error) {
	streams, err := v.ListStreams(ctx)
	if err != nil {
		return "", err
	}
	if stream != "" {
		for _, s := range streams {
			if s == stream {
				return s, nil
			}
		}
		return "", tenantvault.Inputf("repository %s holds no change stream %q (it holds: %s)", v.Location(), stream, listOrNone(streams))
	}
	switch len(streams) {
	case 0:
		return "", tenantvault.WithHint(fmt.Sprintf("repository %s holds no change log", v.Location()),
			"tenantvault capture (or the agent with capture: true) archives the changes that changes reads")
	case 1:
		return streams[0], nil
	}
	return "", tenantvault.Inputf("repository %s holds the change logs of %d databases: choose one with --stream (%s)", v.Location(), len(streams), strings.Join(streams, ", "))
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// findWindow locates the segments that may hold changes committed in
// [from, to] with a binary search over the segment indexes (O(log n)
// index reads, then one per segment of the window), and refuses a window
// the log does not wholly cover: before the log is complete, after what
// is archived, or across a gap.
func findWindow(ctx context.Context, v *vault.Vault, stream string, from, to time.Time) (*logWindow, error) {
	refs, err := v.ListSegments(ctx, stream)
	if err != nil {
		return nil, err
	}
	if len(refs) == 0 {
		return nil, tenantvault.Inputf("the change log %s holds no segments yet", stream)
	}
	w := &logWindow{Stream: stream, From: from, To: to, TotalSegs: len(refs)}
	cache := map[int]*vault.SegmentIndex{}
	var readErr error
	read := func(i int) *vault.SegmentIndex {
		if idx, ok := cache[i]; ok {
			return idx
		}
		if readErr != nil {
			return nil
		}
		idx, err := v.ReadSegmentIndex(ctx, refs[i])
		if err != nil {
			readErr = err
			return nil
		}
		w.IndexReads++
		cache[i] = idx
		return idx
	}
	// A segment's Until is the capture's last server watermark, or zero
	// when the capture had read none yet since it (re)started; the first
	// segment of a chain is an empty marker stamped with the capture's own
	// clock. Neither bounds anything, so the next real watermark does.
	serverUntil := func(i int) (time.Time, bool) {
		idx := read(i)
		if idx == nil || idx.Until.IsZero() || refs[i].Start == refs[i].End && (i == 0 || refs[i-1].End != refs[i].Start) {
			return time.Time{}, false
		}
		return idx.Until, true
	}
	// bound is a time every record of segment j committed before: the
	// clock reading (Until + commitMargin) of the first watermark taken
	// after j was archived. A segment's own Until does not bound its
	// records: its watermark's position may lie inside it, so records after
	// the watermark's clock reading may be in it. A watermark first applied
	// at a later segment k (its Until newer than k-1's) lies past k-1's end,
	// so every record of j < k committed before it was read.
	// Past the end of j's chain, the next chain's marker is stamped when
	// its slot was made, after the old one's last record.
	bound := func(j int) (time.Time, bool) {
		for k := j + 1; k < len(refs); k++ {
			if refs[k].Start != refs[k-1].End {
				if m := read(k); m != nil && !m.Until.IsZero() {
					return m.Until.Add(commitMargin), true
				}
			}
			u, ok := serverUntil(k)
			if readErr != nil {
				break
			}
			if !ok {
				continue
			}
			if prev, ok := serverUntil(k - 1); !ok || u.After(prev) {
				return u.Add(commitMargin), true
			}
		}
		return time.Time{}, false
	}
	for i := len(refs) - 1; i >= 0 && w.Until.IsZero(); i-- {
		if u, ok := serverUntil(i); ok {
			w.Until = u
		}
		if readErr != nil {
			return nil, readErr
		}
	}
	last := read(len(refs) - 1)
	if last == nil {
		return nil, readErr
	}
	if h, err := v.ReadHead(ctx, stream); err != nil {
		return nil, err
	} else if h != nil && h.Epoch == last.Epoch && h.End == last.End && h.Until.After(w.Until) {
		w.Until = h.Until
	}
	if to.After(w.Until) {
		return nil, tenantvault.WithHint(fmt.Sprintf("--to %s is after the end of the change log: changes are archived up to %s",
			fmtTime(to), fmtTime(w.Until)), "wait for the capture to catch up, or choose an earlier --to")
	}
	// The first segment that may hold a change committed at or after from.
	k0 := sort.Search(len(refs), func(i int) bool {
		b, ok := bound(i)
		return !ok || b.After(from)
	})
	if readErr != nil {
		return nil, readErr
	}
	// The chain of contiguous segments (one replication slot, no gap) that
	// holds k0 begins where the slot was created: only changes committed
	// after its first watermark are sure to be in it.
	s := min(k0, len(refs)-1)
	for s > 0 && refs[s-1].End == refs[s].Start {
		s--
	}
	if b, ok := bound(s); ok {
		w.Complete = b
	} else {
		w.Complete = w.Until
	}
	if readErr != nil {
		return nil, readErr
	}
	if from.Before(w.Complete) {
		what := "the change log is complete from"
		if s > 0 {
			what = "after a gap, the change log is complete again from"
		}
		return nil, tenantvault.WithHint(fmt.Sprintf("--from %s is before the change log covers it: %s %s (to %s)", fmtTime(from), what, fmtTime(w.Complete), fmtTime(w.Until)),
			"choose a later --from; for earlier changes compare the database with a snapshot set: tenantvault diff --snapshot ID")
	}
	for i := k0; i < len(refs); i++ {
		idx := read(i)
		if idx == nil {
			return nil, readErr
		}
		if i > k0 && (refs[i].Start != refs[i-1].End || idx.Epoch != w.Segments[len(w.Segments)-1].Epoch) {
			prev := w.Segments[len(w.Segments)-1]
			return nil, tenantvault.Inputf("the change log has a gap inside the window: nothing was captured from %s (%s) to %s; choose a window that ends before %s",
				vault.LSNString(prev.End), fmtTime(prev.Until), vault.LSNString(idx.Start), fmtTime(prev.Until))
		}
		w.Segments = append(w.Segments, idx)
		if u, ok := serverUntil(i); ok && u.After(to) {
			break
		}
	}
	return w, nil
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// needIdentity explains what an encrypted change log needs an identity for.
func needIdentity(err error) error {
	if !errors.Is(err, vault.ErrNoIdentity) {
		return err
	}
	return &tenantvault.InputError{
		Msg: "the change log is encrypted: the window was checked against the segments' signed plaintext headers (LSN range, times, record counts), " +
			"but which tenants and tables changed is in the sealed records: reading them needs --identity FILE (or TENANTVAULT_IDENTITY)",
		Hint: "the identity is the file written by tenantvault keygen --output; the capturing side's keys cannot decrypt",
		Err:  err,
	}
}
