package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"50MB": 50 << 20, "1GB": 1 << 30, "10GB": 10 << 30, "1.5gb": 3 << 29, "512KiB": 512 << 10,
		"1048576": 1 << 20, "20 MB": 20 << 20, "100B": 100,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "-1GB", "0", "1XB", "ten", "1e30"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) did not fail", in)
		}
	}
}

// TestBadFlags checks that a bad command line exits 2 with a message that
// says what is wrong, without touching any database.
func TestBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{nil, "missing --db, --tenants, --size"},
		{[]string{"--db", "postgres://x/y", "--size", "1GB"}, "missing --tenants"},
		{[]string{"--db", "postgres://x/y", "--tenants", "3", "--size", "big"}, `bad size "big"`},
		{[]string{"--db", "postgres://x/y", "--tenants", "-3", "--size", "1GB"}, "--tenants must be positive"},
		{[]string{"--db", "postgres://x/y", "--tenants", "3", "--size", "1GB", "--zipf", "0"}, "--zipf must be positive"},
		{[]string{"--db", "postgres://x/y", "--tenants", "3", "--size", "1GB", "extra"}, `unexpected argument "extra"`},
		{[]string{"--tenants", "many"}, `invalid value "many"`},
		{[]string{"--nope"}, "flag provided but not defined: -nope"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != 2 {
			t.Errorf("tvgen %q exited %d, want 2", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.msg) {
			t.Errorf("tvgen %q printed %q, want it to say %q", c.args, stderr.String(), c.msg)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "Usage: tvgen") {
		t.Errorf("tvgen --help exited %d, printed %q", code, stderr.String())
	}
}
