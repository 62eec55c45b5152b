package main

import (
	"bytes"
	"testing"
)

// TestFrameWriter pins the bytes a frame reaches the terminal as: at the
// first column, and the last frame erased without an erase of the screen
// from where it starts (which tmux turns into a copy in its history when
// that is the top-left corner; TestTerminalRestore shows it on a screen).
func TestFrameWriter(t *testing.T) {
	for _, c := range []struct{ in, out string }{
		{"first frame\n", "\rfirst frame\n"},
		{"\x1b[1A\x1b[Jbar\n", "\r\x1b[1A\x1b[2K\x1b[1B\x1b[J\x1b[1Abar\n"},
		{"\x1b[12A\x1b[Jlog line\nbar\n", "\r\x1b[12A\x1b[2K\x1b[1B\x1b[J\x1b[1Alog line\nbar\n"},
		// Anything else passes as it is.
		{"\x1b[1Bbar\n", "\r\x1b[1Bbar\n"},
		{"\x1b[A\x1b[Jbar\n", "\r\x1b[A\x1b[Jbar\n"},
		{"\x1b[2A", "\r\x1b[2A"},
	} {
		var out bytes.Buffer
		n, err := frameWriter{&out}.Write([]byte(c.in))
		if err != nil || n != len(c.in) || out.String() != c.out {
			t.Errorf("Write(%q) = %d, %v, wrote %q; want %d, nil, %q", c.in, n, err, out.String(), len(c.in), c.out)
		}
	}
}
