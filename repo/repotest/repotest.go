// Package repotest checks that a repo.Backend honours the storage contract, with one conformance suite that every backend runs.
package repotest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/repo"
)

// TestBackend runs the conformance suite, one subtest per part of the
// contract. open is called once per subtest and must return an empty
// backend; it registers its own clean-up with t.Cleanup. TestBackend closes
// the backends it is given.
func TestBackend(t *testing.T, open func(t *testing.T) repo.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b repo.Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"EmptyObject", testEmptyObject},
		{"Overwrite", testOverwrite},
		{"RangedReads", testRangedReads},
		{"NotFound", testNotFound},
		{"Delete", testDelete},
		{"List", testList},
		{"ListMany", testListMany},
		{"LargeObject", testLargeObject},
		{"ConcurrentWriters", testConcurrentWriters},
		{"CancelledContext", testCancelledContext},
		{"FailingReader", testFailingReader},
		{"WrongSize", testWrongSize},
		{"InvalidKeys", testInvalidKeys},
		{"EncodedKeys", testEncodedKeys},
		{"Faults", testFaults},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := open(t)
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, b)
		})
	}
}

// testContext bounds every subtest, so that a hanging backend fails the
// test instead of stalling the whole run.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// onlyReader hides every method but Read (io.Seeker, io.ReaderAt,
// io.WriterTo), as a stream from a database would.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// Data returns n pseudo-random bytes, the same for the same seed.
func Data(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

func put(t *testing.T, ctx context.Context, b repo.Backend, key string, data []byte, knownSize bool) {
	t.Helper()
	var err error
	if knownSize {
		err = b.Put(ctx, key, bytes.NewReader(data), int64(len(data)))
	} else {
		err = b.Put(ctx, key, onlyReader{bytes.NewReader(data)}, -1)
	}
	if err != nil {
		t.Fatalf("put %s (%d bytes, known size %v): %v", key, len(data), knownSize, err)
	}
}

func get(t *testing.T, ctx context.Context, b repo.Backend, key string, offset, length int64) []byte {
	t.Helper()
	rc, err := b.Get(ctx, key, offset, length)
	if err != nil {
		t.Fatalf("get %s [%d, %d]: %v", key, offset, length, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s [%d, %d]: %v", key, offset, length, err)
	}
	return data
}

func list(t *testing.T, ctx context.Context, b repo.Backend, prefix string) []repo.ObjectInfo {
	t.Helper()
	var infos []repo.ObjectInfo
	if err := b.List(ctx, prefix, func(info repo.ObjectInfo) error {
		infos = append(infos, info)
		return nil
	}); err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return infos
}

func listKeys(t *testing.T, ctx context.Context, b repo.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	for _, info := range list(t, ctx, b, prefix) {
		keys = append(keys, info.Key)
	}
	return keys
}

func equalBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: got %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
}

// wantContent checks that key holds want, and says what it holds otherwise
// without flooding the log with megabytes.
func wantContent(t *testing.T, ctx context.Context, b repo.Backend, key, want string) bool {
	t.Helper()
	got := get(t, ctx, b, key, 0, -1)
	if string(got) == want {
		return true
	}
	t.Errorf("%s holds %s, want %q", key, describe(got), want)
	return false
}

// describe summarizes data for a message.
func describe(data []byte) string {
	if len(data) <= 40 {
		return fmt.Sprintf("%q", data)
	}
	return fmt.Sprintf("%d bytes starting %q", len(data), data[:40])
}

// absent checks that key is not an object by every means of looking.
func absent(t *testing.T, ctx context.Context, b repo.Backend, key string) {
	t.Helper()
	if _, err := b.Stat(ctx, key); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("stat %s: got %v, want an error wrapping repo.ErrNotFound", key, err)
	}
	rc, err := b.Get(ctx, key, 0, -1)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("get %s: got %v, want an error wrapping repo.ErrNotFound", key, err)
	}
	if slices.Contains(listKeys(t, ctx, b, ""), key) {
		t.Errorf("list: %s is listed", key)
	}
}

func testRoundTrip(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	start := time.Now()
	for i, n := range []int{1, 1000, 1<<20 + 3} {
		for _, known := range []bool{true, false} {
			key := fmt.Sprintf("round/%d-%v", n, known)
			data := Data(uint64(i), n)
			put(t, ctx, b, key, data, known)
			equalBytes(t, key, get(t, ctx, b, key, 0, -1), data)
			info, err := b.Stat(ctx, key)
			if err != nil {
				t.Fatalf("stat %s: %v", key, err)
			}
			if info.Key != key || info.Size != int64(n) {
				t.Errorf("stat %s: got key %q size %d, want size %d", key, info.Key, info.Size, n)
			}
			// Server clocks differ a little from ours; an hour is plenty
			// to catch a zero or garbage time.
			if d := info.ModTime.Sub(start); d < -time.Hour || d > time.Hour {
				t.Errorf("stat %s: modification time %v, test started at %v", key, info.ModTime, start)
			}
		}
	}
	if got := len(listKeys(t, ctx, b, "round/")); got != 6 {
		t.Errorf("list round/: %d objects, want 6", got)
	}
}

func testEmptyObject(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	put(t, ctx, b, "empty/known", nil, true)
	put(t, ctx, b, "empty/unknown", nil, false)
	for _, key := range []string{"empty/known", "empty/unknown"} {
		for _, r := range [][2]int64{{0, -1}, {0, 10}, {0, 0}, {5, -1}, {5, 3}} {
			if got := get(t, ctx, b, key, r[0], r[1]); len(got) != 0 {
				t.Errorf("get %s %v: %d bytes, want none", key, r, len(got))
			}
		}
		info, err := b.Stat(ctx, key)
		if err != nil || info.Size != 0 {
			t.Errorf("stat %s: %+v, %v; want size 0", key, info, err)
		}
	}
	infos := list(t, ctx, b, "empty/")
	if len(infos) != 2 || infos[0].Size != 0 || infos[1].Size != 0 {
		t.Errorf("list empty/: %+v, want two objects of size 0", infos)
	}
}

func testOverwrite(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	put(t, ctx, b, "over/x", []byte("the first, longer version"), true)
	put(t, ctx, b, "over/x", []byte("second"), true)
	wantContent(t, ctx, b, "over/x", "second")
	put(t, ctx, b, "over/x", []byte("third, of unknown size"), false)
	wantContent(t, ctx, b, "over/x", "third, of unknown size")
	infos := list(t, ctx, b, "over/")
	if len(infos) != 1 || infos[0].Size != int64(len("third, of unknown size")) {
		t.Errorf("list over/: %+v, want one object of the third version's size", infos)
	}
}

func testRangedReads(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	data := Data(7, 1000)
	put(t, ctx, b, "range/x", data, true)
	for _, c := range []struct {
		offset, length int64
		from, to       int // the expected slice of data
	}{
		{0, -1, 0, 1000},
		{0, 1, 0, 1},
		{10, 20, 10, 30},
		{500, 0, 500, 500},
		{999, -1, 999, 1000},
		{990, 100, 990, 1000}, // cut at the end
		{0, 1 << 62, 0, 1000},
		{1, 1<<63 - 1, 1, 1000},
		{1000, -1, 1000, 1000}, // at the end
		{1000, 5, 1000, 1000},
		{5000, -1, 1000, 1000}, // past the end
		{5000, 10, 1000, 1000},
	} {
		what := fmt.Sprintf("get range/x offset %d length %d", c.offset, c.length)
		equalBytes(t, what, get(t, ctx, b, "range/x", c.offset, c.length), data[c.from:c.to])
	}
	if rc, err := b.Get(ctx, "range/x", -1, 10); err == nil {
		rc.Close()
		t.Errorf("get with offset -1: no error")
	}
	for _, r := range [][2]int64{{0, -1}, {10, 20}, {0, 0}, {5000, -1}} {
		rc, err := b.Get(ctx, "range/missing", r[0], r[1])
		if err == nil {
			rc.Close()
		}
		if !errors.Is(err, repo.ErrNotFound) {
			t.Errorf("get range/missing %v: %v, want repo.ErrNotFound", r, err)
		}
	}
}

func testNotFound(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	_, err := b.Stat(ctx, "nothing/here")
	if !errors.Is(err, repo.ErrNotFound) || !repo.IsPermanent(err) {
		t.Errorf("stat of a missing object: %v, want a permanent error wrapping repo.ErrNotFound", err)
	}
	absent(t, ctx, b, "nothing/here")
	if err := b.Delete(ctx, "nothing/here"); err != nil {
		t.Errorf("delete of a missing object: %v, want nil", err)
	}
	// A prefix of keys is not an object, and nothing is below an object.
	put(t, ctx, b, "dir/obj", []byte("x"), true)
	absent(t, ctx, b, "dir")
	absent(t, ctx, b, "dir/obj/below")
	if err := b.Delete(ctx, "dir"); err != nil {
		t.Errorf("delete of a prefix: %v, want nil", err)
	}
	if err := b.Delete(ctx, "dir/obj/below"); err != nil {
		t.Errorf("delete below an object: %v, want nil", err)
	}
	wantContent(t, ctx, b, "dir/obj", "x")
}

func testDelete(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	put(t, ctx, b, "del/a/b/c", []byte("abc"), true)
	put(t, ctx, b, "del/a/d", []byte("ad"), true)
	if err := b.Delete(ctx, "del/a/b/c"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	absent(t, ctx, b, "del/a/b/c")
	if got := listKeys(t, ctx, b, "del/"); !slices.Equal(got, []string{"del/a/d"}) {
		t.Errorf("list after delete: %q", got)
	}
	if err := b.Delete(ctx, "del/a/b/c"); err != nil {
		t.Errorf("second delete: %v", err)
	}
	// Whatever a backend tidied up on delete, the key can be written again,
	// and what used to be a prefix can now be an object.
	put(t, ctx, b, "del/a/b/c", []byte("again"), false)
	wantContent(t, ctx, b, "del/a/b/c", "again")
	for _, key := range []string{"del/a/b/c", "del/a/d"} {
		if err := b.Delete(ctx, key); err != nil {
			t.Fatalf("delete %s: %v", key, err)
		}
	}
	put(t, ctx, b, "del/a", []byte("now an object"), true)
	if got := listKeys(t, ctx, b, "del"); !slices.Equal(got, []string{"del/a"}) {
		t.Errorf("list after deleting everything and putting del/a: %q", got)
	}
}

func testList(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	// In lexical order. "b-x" comes before "b/c" because '-' < '/', which
	// a naive directory walk gets wrong.
	keys := []string{
		"b-x",
		"b/c",
		"b/d/e",
		"ba",
		"sets/20261128T000000Z/manifest",
		"sets/20261129T120000Z/data/t1",
		"sets/20261129T120000Z/manifest",
		"sets/2027/manifest",
		"sets/x",
		"z",
	}
	order := []int{4, 0, 9, 2, 7, 1, 5, 8, 3, 6} // put in a scrambled order
	for _, i := range order {
		put(t, ctx, b, keys[i], []byte(keys[i]), true)
	}
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"", keys},
		{"b", keys[0:4]},
		{"b/", keys[1:3]},
		{"b/d", keys[2:3]},
		{"b-", keys[0:1]},
		{"sets/", keys[4:9]},
		{"sets/2026", keys[4:7]}, // ends mid-segment
		{"sets/20261129T120000Z/", keys[5:7]},
		{"sets/20261128T000000Z/manifest", keys[4:5]}, // a whole key
		{"sets/20261128T000000Z/manifest/", nil},
		{"sets/2025", nil},
		{"nothing", nil},
		{"nothing/at/all/", nil},
	} {
		infos := list(t, ctx, b, c.prefix)
		var got []string
		for _, info := range infos {
			got = append(got, info.Key)
			if info.Size != int64(len(info.Key)) {
				t.Errorf("list %q: %s has size %d, want %d", c.prefix, info.Key, info.Size, len(info.Key))
			}
			if info.ModTime.IsZero() {
				t.Errorf("list %q: %s has no modification time", c.prefix, info.Key)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("list %q:\n got %q\nwant %q", c.prefix, got, c.want)
		}
	}

	// An error from fn ends the listing and is returned.
	stop := errors.New("stop here")
	calls := 0
	err := b.List(ctx, "", func(repo.ObjectInfo) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Errorf("list with fn failing at the third key: err %v after %d calls", err, calls)
	}

	for _, prefix := range []string{"/b", "../b", "b/../x", "b//c", "./b", "b c", "b\\c", "ä"} {
		err := b.List(ctx, prefix, func(info repo.ObjectInfo) error {
			t.Errorf("list %q: delivered %s", prefix, info.Key)
			return nil
		})
		if err == nil || !repo.IsPermanent(err) {
			t.Errorf("list with invalid prefix %q: %v, want a permanent error", prefix, err)
		}
	}
}

func testListMany(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	const n = 2500 // more than two pages of an S3 listing
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("many/%04d", i))
	}
	parallel(t, 8, len(want), func(i int) error {
		return b.Put(ctx, want[i], strings.NewReader(want[i]), int64(len(want[i])))
	})
	put(t, ctx, b, "many-before", nil, true)
	put(t, ctx, b, "manz", nil, true)
	if got := listKeys(t, ctx, b, "many/"); !slices.Equal(got, want) {
		t.Errorf("list many/: %d keys, want %d in order", len(got), len(want))
	}
	if got := listKeys(t, ctx, b, "many/1"); !slices.Equal(got, want[1000:2000]) {
		t.Errorf("list many/1: %d keys, want 1000 in order", len(got))
	}
	all := listKeys(t, ctx, b, "")
	if len(all) != n+2 || !slices.IsSorted(all) {
		t.Errorf("list: %d keys, sorted %v; want %d sorted keys", len(all), slices.IsSorted(all), n+2)
	}
}

// parallel runs fn(0..n-1) on workers goroutines and fails the test on the
// first error.
func parallel(t *testing.T, workers, n int, fn func(i int) error) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for range workers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

func testLargeObject(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	// Above two 16 MiB parts, and not a multiple of anything.
	data := Data(40, 40<<20+12345)
	want := sha256.Sum256(data)
	for _, known := range []bool{false, true} {
		key := fmt.Sprintf("large/known-size-%v", known)
		put(t, ctx, b, key, data, known)
		info, err := b.Stat(ctx, key)
		if err != nil || info.Size != int64(len(data)) {
			t.Fatalf("stat %s: %+v, %v; want size %d", key, info, err, len(data))
		}
		rc, err := b.Get(ctx, key, 0, -1)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
		if got := h.Sum(nil); !bytes.Equal(got, want[:]) || n != int64(len(data)) {
			t.Fatalf("get %s: %d bytes with SHA-256 %x, want %d bytes with %x", key, n, got, len(data), want)
		}
		// Across the border of the first two parts, and the tail.
		off := int64(16<<20 - 100)
		equalBytes(t, key+" across a part border", get(t, ctx, b, key, off, 200), data[off:off+200])
		equalBytes(t, key+" tail", get(t, ctx, b, key, int64(len(data)-10), -1), data[len(data)-10:])
	}
}

func testConcurrentWriters(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	const writers = 16
	values := make([][]byte, writers)
	for i := range values {
		// Different lengths and contents: a mix of two writes cannot pass
		// for either.
		values[i] = Data(uint64(100+i), 200<<10+i*1000)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers+4)
	for i := range writers {
		wg.Go(func() {
			key := fmt.Sprintf("conc/own-%02d", i)
			if err := b.Put(ctx, key, onlyReader{bytes.NewReader(values[i])}, -1); err != nil {
				errs <- fmt.Errorf("put %s: %w", key, err)
			}
			if err := b.Put(ctx, "conc/same", bytes.NewReader(values[i]), int64(len(values[i]))); err != nil {
				errs <- fmt.Errorf("put conc/same by writer %d: %w", i, err)
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				rc, err := b.Get(ctx, "conc/same", 0, -1)
				if errors.Is(err, repo.ErrNotFound) {
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("get conc/same while writing: %w", err)
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					errs <- fmt.Errorf("read conc/same while writing: %w", err)
					return
				}
				if !slices.ContainsFunc(values, func(v []byte) bool { return bytes.Equal(v, got) }) {
					errs <- fmt.Errorf("conc/same read while writing is none of the written values (%d bytes)", len(got))
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range writers {
		key := fmt.Sprintf("conc/own-%02d", i)
		equalBytes(t, key, get(t, ctx, b, key, 0, -1), values[i])
	}
	got := get(t, ctx, b, "conc/same", 0, -1)
	if !slices.ContainsFunc(values, func(v []byte) bool { return bytes.Equal(v, got) }) {
		t.Errorf("conc/same is none of the written values (%d bytes)", len(got))
	}
	if keys := listKeys(t, ctx, b, "conc/"); len(keys) != writers+1 {
		t.Errorf("list conc/: %d keys, want %d", len(keys), writers+1)
	}
}

// cancellingReader cancels its context after n bytes and goes on reading,
// as a caller that gives up in the middle of a Put does.
type cancellingReader struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func testCancelledContext(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	put(t, ctx, b, "cancel/existing", []byte("old"), true)

	done, cancel := context.WithCancel(ctx)
	cancel()
	start := time.Now()
	wantCanceled := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v, want an error wrapping context.Canceled", what, err)
		}
	}
	wantCanceled("put", b.Put(done, "cancel/new", strings.NewReader("data"), 4))
	wantCanceled("put of unknown size", b.Put(done, "cancel/new", onlyReader{strings.NewReader("data")}, -1))
	rc, err := b.Get(done, "cancel/existing", 0, -1)
	if err == nil {
		// A lazy stream must fail at the latest when read.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	wantCanceled("get", err)
	_, err = b.Stat(done, "cancel/existing")
	wantCanceled("stat", err)
	wantCanceled("list", b.List(done, "", func(repo.ObjectInfo) error { return nil }))
	wantCanceled("delete", b.Delete(done, "cancel/existing"))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("calls with a cancelled context took %v", d)
	}
	absent(t, ctx, b, "cancel/new")
	wantContent(t, ctx, b, "cancel/existing", "old")

	// Cancelled in the middle of the data: small, and larger than a part.
	for _, size := range []int{3 << 20, 20 << 20} {
		data := Data(uint64(size), size)
		for _, known := range []bool{true, false} {
			for _, key := range []string{"cancel/new", "cancel/existing"} {
				cctx, cancel := context.WithCancel(ctx)
				r := &cancellingReader{r: bytes.NewReader(data), n: 1 << 20, cancel: cancel}
				size := int64(len(data))
				if !known {
					size = -1
				}
				err := b.Put(cctx, key, r, size)
				cancel()
				wantCanceled(fmt.Sprintf("put %s of %d bytes (known size %v) cancelled after 1 MiB", key, len(data), known), err)
			}
			absent(t, ctx, b, "cancel/new")
			wantContent(t, ctx, b, "cancel/existing", "old")
		}
	}
}

// failingReader delivers n bytes of r and then fails with err.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func testFailingReader(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	put(t, ctx, b, "fail/existing", []byte("old"), true)
	boom := errors.New("boom: the source failed")
	// io.ErrUnexpectedEOF is what a cut stream returns; a backend must not
	// take it for the end of the data.
	for _, cause := range []error{boom, io.ErrUnexpectedEOF} {
		for _, size := range []int{100 << 10, 18 << 20} {
			data := Data(uint64(size), size)
			for _, known := range []bool{true, false} {
				for _, key := range []string{"fail/new", "fail/existing"} {
					r := &failingReader{r: bytes.NewReader(data), n: size - 1000, err: cause}
					n := int64(len(data))
					if !known {
						n = -1
					}
					err := b.Put(ctx, key, onlyReader{r}, n)
					if !errors.Is(err, cause) {
						t.Errorf("put %s of %d bytes (known size %v) failing with %q: %v, want an error wrapping the reader's",
							key, size, known, cause, err)
					}
				}
				absent(t, ctx, b, "fail/new")
				if !wantContent(t, ctx, b, "fail/existing", "old") {
					t.FailNow()
				}
			}
		}
	}
}

func testWrongSize(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	data := Data(3, 1000)
	for _, size := range []int64{999, 1001, 0} {
		err := b.Put(ctx, "size/x", onlyReader{bytes.NewReader(data)}, size)
		if err == nil {
			t.Errorf("put of 1000 bytes announced as %d: no error", size)
		}
		absent(t, ctx, b, "size/x")
	}
}

var invalidKeys = []string{
	"", "/a", "a/", "a//b", ".", "..", "./a", "a/.", "a/./b", "a/../b", "../a",
	"a b", "a\\b", "a\x00b", "a\nb", "ä", strings.Repeat("k", 901),
}

func testInvalidKeys(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	for _, key := range invalidKeys {
		check := func(op string, err error) {
			t.Helper()
			if err == nil || !repo.IsPermanent(err) || errors.Is(err, repo.ErrNotFound) {
				t.Errorf("%s %q: %v, want a permanent error other than repo.ErrNotFound", op, key, err)
			}
		}
		check("put", b.Put(ctx, key, strings.NewReader("x"), 1))
		rc, err := b.Get(ctx, key, 0, -1)
		if err == nil {
			rc.Close()
		}
		check("get", err)
		_, err = b.Stat(ctx, key)
		check("stat", err)
		check("delete", b.Delete(ctx, key))
	}
	if keys := listKeys(t, ctx, b, ""); len(keys) != 0 {
		t.Errorf("list after putting invalid keys: %q", keys)
	}
}

func testEncodedKeys(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	ids := []string{
		"o'brien & co", "a/../b", "Ünïcödé", "..", ".", "", "UPPER", "upper",
		"%41", "tenant 42", `back\slash`, "tab\there", strings.Repeat("long-id/", 40),
	}
	for _, id := range ids {
		key := "tenants/" + repo.EncodeKeyPart(id) + "/data"
		put(t, ctx, b, key, []byte(id), true)
	}
	got := map[string]bool{}
	for _, info := range list(t, ctx, b, "tenants/") {
		part := strings.TrimSuffix(strings.TrimPrefix(info.Key, "tenants/"), "/data")
		id := string(get(t, ctx, b, info.Key, 0, -1))
		if dec, err := repo.DecodeKeyPart(part); err == nil && dec != id {
			t.Errorf("key %s decodes to %q but holds %q", info.Key, dec, id)
		}
		if repo.EncodeKeyPart(id) != part {
			t.Errorf("key %s holds %q, which encodes differently", info.Key, id)
		}
		got[id] = true
	}
	for _, id := range ids {
		if !got[id] {
			t.Errorf("tenant %q: not listed", id)
		}
	}
	if len(got) != len(ids) {
		t.Errorf("listed %d tenants, want %d", len(got), len(ids))
	}
}

func testFaults(t *testing.T, b repo.Backend) {
	ctx := testContext(t)
	data := Data(9, 3<<20)
	put(t, ctx, b, "faults/x", data, true)
	quiet := slog.New(slog.DiscardHandler)
	noWait := func(context.Context, time.Duration) error { return nil }
	retryOpts := repo.RetryOptions{Attempts: 3, Logger: quiet, Sleep: noWait}
	transient := errors.New("transient trouble")

	t.Run("TransientGetRetried", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpGet, Times: 1, Err: transient})
		got, err := repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/x")
		if err != nil {
			t.Fatalf("read through Retry: %v", err)
		}
		equalBytes(t, "faults/x", got, data)
		if n := f.Calls(repo.OpGet); n != 2 {
			t.Errorf("%d calls of Get, want 2", n)
		}
	})
	t.Run("PermanentNotRetried", func(t *testing.T) {
		f := repo.NewFaulty(b)
		denied := errors.New("access denied")
		f.Inject(repo.Fault{Op: repo.OpGet, Err: repo.Permanent(denied)})
		_, err := repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/x")
		if !errors.Is(err, denied) {
			t.Errorf("read: %v, want the permanent error", err)
		}
		if n := f.Calls(repo.OpGet); n != 1 {
			t.Errorf("%d calls of Get, want 1", n)
		}
		f.Clear()
		_, err = repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/missing")
		if !errors.Is(err, repo.ErrNotFound) {
			t.Errorf("read of a missing object: %v", err)
		}
		if n := f.Calls(repo.OpGet); n != 2 {
			t.Errorf("%d calls of Get in all, want 2: a missing object is not retried", n)
		}
	})
	t.Run("BitFlipVisible", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.FlipBit(100_000)})
		got, err := repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/x")
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		want := bytes.Clone(data)
		want[100_000] ^= 1
		equalBytes(t, "faults/x with a flipped bit", got, want)
		// A range that starts after the flipped byte is untouched, one
		// that covers it is not.
		equalBytes(t, "range after the flip", get(t, ctx, f, "faults/x", 100_001, 10), data[100_001:100_011])
		equalBytes(t, "range over the flip", get(t, ctx, f, "faults/x", 99_990, 20), want[99_990:100_010])
	})
	t.Run("TruncatedVisible", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.CutAfter(10)})
		got, err := repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/x")
		if err != nil || !bytes.Equal(got, data[:10]) {
			t.Errorf("read of a truncated stream: %d bytes, %v; want the first 10 bytes", len(got), err)
		}
	})
	t.Run("ResetMidStreamResumed", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpGet, Times: 2, Read: repo.FailReadAfter(1<<20 + 7)})
		got, err := repo.ReadAll(ctx, repo.Retry(f, retryOpts), "faults/x")
		if err != nil {
			t.Fatalf("read through Retry: %v", err)
		}
		equalBytes(t, "faults/x resumed twice", got, data)
		if n := f.Calls(repo.OpGet); n != 3 {
			t.Errorf("%d calls of Get, want 3", n)
		}
		// A ranged read resumes within its range.
		f.Inject(repo.Fault{Op: repo.OpGet, Times: 1, Read: repo.FailReadAfter(5000)})
		equalBytes(t, "ranged read resumed", get(t, ctx, repo.Retry(f, retryOpts), "faults/x", 1000, 2<<20), data[1000:1000+2<<20])
		// Without Retry the reset reaches the caller.
		f.Inject(repo.Fault{Op: repo.OpGet, Times: 1, Read: repo.FailReadAfter(5000)})
		if _, err := repo.ReadAll(ctx, f, "faults/x"); !errors.Is(err, repo.ErrInjected) {
			t.Errorf("read without Retry: %v, want the injected reset", err)
		}
	})
	t.Run("PutRetriedOnlyWhenRewindable", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.Inject(repo.Fault{Op: repo.OpPut, Times: 2, Err: transient})
		r := bytes.NewReader(data)
		r.Seek(1000, io.SeekStart) // Put sends from where the reader stands
		if err := repo.Retry(f, retryOpts).Put(ctx, "faults/put", r, int64(len(data)-1000)); err != nil {
			t.Fatalf("put through Retry: %v", err)
		}
		equalBytes(t, "faults/put", get(t, ctx, b, "faults/put", 0, -1), data[1000:])
		if n := f.Calls(repo.OpPut); n != 3 {
			t.Errorf("%d calls of Put, want 3", n)
		}
		f.Inject(repo.Fault{Op: repo.OpPut, Times: 1, Err: transient})
		err := repo.Retry(f, retryOpts).Put(ctx, "faults/put2", onlyReader{bytes.NewReader(data)}, -1)
		if !errors.Is(err, transient) {
			t.Errorf("put of a stream: %v, want the transient error, not retried", err)
		}
		if n := f.Calls(repo.OpPut); n != 4 {
			t.Errorf("%d calls of Put in all, want 4", n)
		}
		absent(t, ctx, b, "faults/put2")
	})
	t.Run("Unreachable", func(t *testing.T) {
		f := repo.NewFaulty(b)
		f.SetUnreachable(true)
		_, err := repo.Retry(f, retryOpts).Stat(ctx, "faults/x")
		if err == nil || repo.IsPermanent(err) || !errors.Is(err, repo.ErrInjected) {
			t.Errorf("stat while unreachable: %v, want a transient injected error", err)
		}
		if n := f.Calls(repo.OpStat); n != 3 {
			t.Errorf("%d calls of Stat, want 3", n)
		}
		f.SetUnreachable(false)
		if _, err := repo.Retry(f, retryOpts).Stat(ctx, "faults/x"); err != nil {
			t.Errorf("stat once reachable again: %v", err)
		}
	})
}
