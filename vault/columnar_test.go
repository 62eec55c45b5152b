package vault

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// columnarRoundTrip lays data out by column and reads it back.
func columnarRoundTrip(t testing.TB, data []byte) []byte {
	t.Helper()
	var e columnarEncoder
	enc := e.encodeAll(nil, data)
	r := newColumnarReader(bytes.NewReader(enc))
	defer r.release()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return got
}

// TestColumnarRoundTrip gives the layout content that is COPY text and
// content that only looks like it: every byte must come back.
func TestColumnarRoundTrip(t *testing.T) {
	long := strings.Repeat("x", maxBlock+17)
	cases := map[string]string{
		"empty":              "",
		"one empty value":    "\n",
		"empty values":       "\t\t\n\t\t\n",
		"no final newline":   "1\ta\n2\tb",
		"ragged rows":        "1\ta\n2\n3\tc\td\n",
		"ints":               "0\t-1\t7\n-42\t999999999999999999\t-999999999999999999\n",
		"not canonical ints": "007\t+1\t-0\t1234567890123456789\t-\t1e3\n1\t2\t3\t4\t5\t6\n",
		"null ints":          "1\t\\N\n2\t3\n",
		"escapes":            "1\tline\\none\\ttab\\\\\n2\t\\N\n",
		"timestamps": "2021-07-16 18:31:37.660254+00\t2021-07-16 18:31:37\n" +
			"2021-07-16 18:31:37.66+00\t1970-01-01 00:00:00\n" +
			"0001-01-01 00:00:00+00\t9999-12-31 23:59:59.999999\n" +
			"2024-02-29 12:00:00.000001+00\t1969-12-31 23:59:59.5\n",
		"not canonical timestamps": "2021-07-16 18:31:37.660250+00\n2021-02-29 00:00:00+00\n2021-13-01 00:00:00+00\n" +
			"2021-07-16 24:00:00+00\n2021-07-16 18:31:60+00\n0000-01-01 00:00:00+00\n2021-07-16 18:31:37.+00\n" +
			"2021-07-16 18:31:37.1234567+00\n2021-07-16 18:31:37 BC\n2021-07-16T18:31:37+00\n",
		"mixed suffixes":     "2021-07-16 18:31:37+00\n2021-07-16 18:31:37+02\n",
		"long suffix":        "2021-07-16 18:31:37+00:00:00:00:00:00\n",
		"row over a block":   "1\t" + long + "\n2\tb\n",
		"no newline at all":  long,
		"blocks of rows":     strings.Repeat("12345\tabcdef\t2021-07-16 18:31:37.66+00\n", 3*maxBlock/40),
		"binary":             "\x00\xff\t\x80\n\r\n\t\t\x00",
		"deltas overflowing": "999999999999999999\n-999999999999999999\n999999999999999999\n",
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := columnarRoundTrip(t, []byte(c)); !bytes.Equal(got, []byte(c)) {
				t.Fatalf("round trip differs: %d bytes in, %d out", len(c), len(got))
			}
		})
	}
}

// TestColumnarTimestamps renders every kind of instant as PostgreSQL
// writes it and checks the parse agrees with the time package.
func TestColumnarTimestamps(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		us := minTime + rng.Int64N(maxTime-minTime)
		if rng.IntN(3) == 0 {
			us -= us % 1000000 // no fraction
		}
		got := appendTime(nil, us)
		want := time.UnixMicro(us).UTC().Format("2006-01-02 15:04:05.999999")
		if string(got) != want {
			t.Fatalf("%d: appendTime %q, time package %q", us, got, want)
		}
		back, n, ok := parseTime(got)
		if !ok || n != len(got) || back != us {
			t.Fatalf("%q: parsed back as %d (%d bytes, %v), want %d", got, back, n, ok, us)
		}
	}
}

// TestColumnarMalformed feeds the reader damaged and hostile blocks: each
// is refused with errColumnar, never a panic, and never more than a block
// of rows held.
func TestColumnarMalformed(t *testing.T) {
	var e columnarEncoder
	good := e.encodeAll(nil, []byte("1\tabc\t2021-07-16 18:31:37+00\n2\tdef\t2021-07-16 18:31:38+00\n"))
	cases := map[string][]byte{
		"truncated":           good[:len(good)-1],
		"unknown kind":        {1, 1, 9},
		"empty raw block":     {0, colRaw, 0},
		"raw over a block":    append([]byte{0, colRaw}, 0x81, 0x80, 0x40),
		"too many values":     {0x81, 0x80, 0x40, 2},
		"no columns":          {1, 0},
		"text too short":      {2, 1, colText, 1, '\n'},
		"text without ends":   {1, 1, colText, 2, 'a', 'b'},
		"text past its rows":  {1, 1, colText, 4, 'a', '\n', 'b', '\n'},
		"time out of range":   {1, 1, colTime, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f},
		"suffix too long":     {1, 1, colTime, maxSuffix + 1},
		"ints past the block": append([]byte{0x80, 0x80, 0x20, 1, colInt}, bytes.Repeat([]byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 1<<19)...),
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := newColumnarReader(bytes.NewReader(c))
			defer r.release()
			_, err := io.ReadAll(r)
			if !errors.Is(err, errColumnar) {
				t.Fatalf("got %v, want a malformed block", err)
			}
			if len(r.row) > maxBlock || len(r.text) > maxBlock {
				t.Fatalf("held %d bytes of rows, %d of values", len(r.row), len(r.text))
			}
		})
	}
}

// FuzzColumnar checks both directions: any content comes back exactly,
// and any stream decodes or fails cleanly within a block's memory.
func FuzzColumnar(f *testing.F) {
	var e columnarEncoder
	for _, s := range []string{"", "1\ta\n", "2021-07-16 18:31:37.66+00\t-5\n", "\\N\t\n\t", "007\t-0\n"} {
		f.Add([]byte(s))
		f.Add(e.encodeAll(nil, []byte(s)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got := columnarRoundTrip(t, data); !bytes.Equal(got, data) {
			t.Fatalf("round trip of %q gave %q", data, got)
		}
		r := newColumnarReader(bytes.NewReader(data))
		defer r.release()
		if _, err := io.Copy(io.Discard, r); err != nil && !errors.Is(err, errColumnar) {
			t.Fatalf("decode: %v", err)
		}
		if len(r.row) > maxBlock {
			t.Fatalf("a block of %d bytes", len(r.row))
		}
	})
}

// TestColumnarKinds checks which columns the layout stores as numbers:
// only those whose every value reads back as the same bytes.
func TestColumnarKinds(t *testing.T) {
	var e columnarEncoder
	block := []byte("1\t2021-07-16 18:31:37.66+00\t007\t2021-07-16 18:31:37.660+00\n-2\t2021-07-16 18:31:38+00\t8\t2021-07-16 18:31:38+00\n")
	rows, cols, ok := e.split(block)
	if !ok || rows != 2 || cols != 4 {
		t.Fatalf("split: %d rows, %d columns, %v", rows, cols, ok)
	}
	if !e.parseInts(block, rows, cols, 0) || e.ints[0] != 1 || e.ints[1] != -2 {
		t.Fatalf("column 0 is not ints: %v", e.ints)
	}
	if suffix, ok := e.parseTimes(block, rows, cols, 1); !ok || string(suffix) != "+00" {
		t.Fatalf("column 1 is not timestamps (suffix %q)", suffix)
	}
	if e.parseInts(block, rows, cols, 2) {
		t.Fatal("007 taken for an int")
	}
	if _, ok := e.parseTimes(block, rows, cols, 3); ok {
		t.Fatal("a fraction with a trailing zero taken for a timestamp")
	}
}
