package repo_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/repo"
)

func TestFaultyCounting(t *testing.T) {
	ctx := context.Background()
	b := newFile(t)
	if err := b.Put(ctx, "x", strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	f := repo.NewFaulty(b)
	boom := errors.New("boom")
	// Calls 3 and 4 of Stat on keys starting with "x" fail.
	f.Inject(repo.Fault{Op: repo.OpStat, Match: func(k string) bool { return strings.HasPrefix(k, "x") }, After: 2, Times: 2, Err: boom})
	var got []bool
	for _, key := range []string{"x", "y", "x", "y", "x", "x", "x"} {
		_, err := f.Stat(ctx, key)
		got = append(got, errors.Is(err, boom))
	}
	want := []bool{false, false, false, false, true, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("stat call %d failed: %v, want %v", i+1, got[i], want[i])
		}
	}
	if n := f.Calls(repo.OpStat); n != 7 {
		t.Errorf("%d Stat calls counted, want 7", n)
	}
	if n := f.Calls(repo.OpGet); n != 0 {
		t.Errorf("%d Get calls counted, want 0", n)
	}

	// A fault without Op hits every operation; Clear removes it.
	f.Inject(repo.Fault{Err: boom})
	if _, err := repo.ReadAll(ctx, f, "x"); !errors.Is(err, boom) {
		t.Errorf("get: %v", err)
	}
	if err := f.List(ctx, "", func(repo.ObjectInfo) error { return nil }); !errors.Is(err, boom) {
		t.Errorf("list: %v", err)
	}
	f.Clear()
	if _, err := f.Stat(ctx, "x"); err != nil {
		t.Errorf("stat after Clear: %v", err)
	}
}

func TestFaultyReadFaults(t *testing.T) {
	ctx := context.Background()
	b := newFile(t)
	if err := b.Put(ctx, "x", strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	read := func(f *repo.Faulty, offset, length int64) (string, error) {
		rc, err := f.Get(ctx, "x", offset, length)
		if err != nil {
			return "", err
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		return string(data), err
	}

	f := repo.NewFaulty(b)
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.FlipBit(3)})
	if got, _ := read(f, 0, -1); got != "0122456789" { // '3' ^ 1 == '2'
		t.Errorf("flipped bit at 3: %q", got)
	}
	if got, _ := read(f, 2, 3); got != "224" {
		t.Errorf("flipped bit at 3, range [2, 5): %q", got)
	}
	if got, _ := read(f, 4, -1); got != "456789" {
		t.Errorf("flipped bit at 3, range [4, end): %q", got)
	}

	f = repo.NewFaulty(b)
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.CutAfter(4)})
	if got, err := read(f, 0, -1); got != "0123" || err != nil {
		t.Errorf("cut after 4: %q, %v", got, err)
	}

	f = repo.NewFaulty(b)
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.FailReadAfter(6)})
	got, err := read(f, 0, -1)
	if got != "012345" || !errors.Is(err, syscall.ECONNRESET) || !errors.Is(err, repo.ErrInjected) || repo.IsPermanent(err) {
		t.Errorf("fail after 6: %q, %v; want 6 bytes and a transient reset", got, err)
	}

	// Faults that fire together combine.
	f = repo.NewFaulty(b)
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.FlipBit(0)})
	f.Inject(repo.Fault{Op: repo.OpGet, Read: repo.CutAfter(2)})
	if got, _ := read(f, 0, -1); got != "11" {
		t.Errorf("flip and cut: %q", got)
	}
}

func TestFaultyDelayAndUnreachable(t *testing.T) {
	b := newFile(t)
	f := repo.NewFaulty(b)
	f.Inject(repo.Fault{Op: repo.OpDelete, Times: 1, Delay: 50 * time.Millisecond})
	start := time.Now()
	if err := f.Delete(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("delayed delete took %v", d)
	}

	f.Inject(repo.Fault{Op: repo.OpDelete, Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.Delete(ctx, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delete delayed past the deadline: %v", err)
	}

	f.Clear()
	f.SetUnreachable(true)
	err := f.Put(context.Background(), "x", strings.NewReader("x"), 1)
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, repo.ErrInjected) || repo.IsPermanent(err) {
		t.Errorf("put while unreachable: %v, want a transient refusal", err)
	}
	f.SetUnreachable(false)
	if err := f.Put(context.Background(), "x", strings.NewReader("x"), 1); err != nil {
		t.Errorf("put once reachable: %v", err)
	}
}
