package repo_test

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/repo"
)

// tenantIDs are the awkward tenant IDs every test of keys goes through.
var tenantIDs = []string{
	"", ".", "..", "...", "a/../b", "../../etc/passwd", "o'brien & co", "Ünïcödé", "日本",
	"acme", "ACME", "Acme", "a", "A", "%41", "%", "=", "~", "-", "_", "a b", "a\x00b",
	"tab\there", "new\nline", `back\slash`, "/", "//", "a/b", "0", "42", "-1",
	"\xff\xfe", strings.Repeat("x", 200), strings.Repeat("x", 201), strings.Repeat("é", 100),
	strings.Repeat("long/", 60), strings.Repeat("long/", 60) + "1", strings.Repeat("long/", 60) + "2",
}

func TestEncodeKeyPart(t *testing.T) {
	for _, c := range []struct{ id, want string }{
		{"", "="},
		{"acme-42_x", "acme-42_x"},
		{"ACME", "%41%43%4D%45"},
		{".", "%2E"},
		{"..", "%2E%2E"},
		{"a/../b", "a%2F%2E%2E%2Fb"},
		{"o'brien & co", "o%27brien%20%26%20co"},
		{"Ü", "%C3%9C"},
		{"%41", "%2541"},
		{"=", "%3D"},
	} {
		if got := repo.EncodeKeyPart(c.id); got != c.want {
			t.Errorf("EncodeKeyPart(%q) = %q, want %q", c.id, got, c.want)
		}
	}
}

func TestEncodeKeyPartProperties(t *testing.T) {
	ids := append([]string(nil), tenantIDs...)
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(80))
		for i := range b {
			// Mostly the bytes that make trouble, some of everything.
			if r.IntN(4) == 0 {
				b[i] = byte(r.IntN(256))
			} else {
				b[i] = "aA./%=~ \\-_é"[r.IntN(12)]
			}
		}
		ids = append(ids, string(b))
	}
	seen := map[string]string{}   // encoding -> ID
	folded := map[string]string{} // lower-cased encoding -> ID
	for _, id := range ids {
		part := checkPart(t, id)
		if other, dup := seen[part]; dup && other != id {
			t.Errorf("%q and %q both encode as %q", id, other, part)
		}
		seen[part] = id
		// Case-insensitive file systems (macOS, Windows) must keep
		// tenants apart too.
		lower := strings.ToLower(part)
		if other, dup := folded[lower]; dup && other != id {
			t.Errorf("%q and %q encode as %q and %q, equal but for case", id, other, part, repo.EncodeKeyPart(other))
		}
		folded[lower] = id
	}
}

var hashedPart = regexp.MustCompile(`^[^~]*~[0-9a-f]{32}$`)

// checkPart checks the properties of the encoding of id and returns it.
func checkPart(t *testing.T, id string) string {
	t.Helper()
	part := repo.EncodeKeyPart(id)
	if err := repo.ValidKey(part); err != nil {
		t.Fatalf("EncodeKeyPart(%q) = %q, not a valid key: %v", id, part, err)
	}
	if part == "." || part == ".." || strings.Contains(part, "/") || len(part) > 200 {
		t.Fatalf("EncodeKeyPart(%q) = %q: not one safe segment of at most 200 bytes", id, part)
	}
	if repo.EncodeKeyPart(id) != part {
		t.Fatalf("EncodeKeyPart(%q) is not deterministic", id)
	}
	dec, err := repo.DecodeKeyPart(part)
	switch {
	case hashedPart.MatchString(part):
		if err == nil {
			t.Fatalf("DecodeKeyPart(%q) of a cut and hashed part: no error", part)
		}
		// The cut never splits an escape: what is left of the ID decodes.
		head := part[:strings.IndexByte(part, '~')]
		if prefix, err := repo.DecodeKeyPart(head); err != nil || !strings.HasPrefix(id, prefix) {
			t.Fatalf("EncodeKeyPart(%q) = %q: the kept head decodes to %q, %v", id, part, prefix, err)
		}
	case err != nil || dec != id:
		t.Fatalf("DecodeKeyPart(EncodeKeyPart(%q)) = %q, %v", id, dec, err)
	}
	return part
}

func TestEncodeKeyPartLong(t *testing.T) {
	// Every alignment of escapes against the cut.
	for k := 150; k < 175; k++ {
		for _, tail := range []string{strings.Repeat("é", 40), strings.Repeat("A", 40), strings.Repeat("z", 40)} {
			id := strings.Repeat("a", k) + tail
			part := checkPart(t, id)
			if len(id) > 200 || strings.Contains(tail, "é") || strings.Contains(tail, "A") {
				if !hashedPart.MatchString(part) {
					t.Errorf("EncodeKeyPart of a %d-byte ID with %d bytes of encoding: %q, want a cut and hashed part", len(id), len(part), part)
				}
			}
		}
	}
	a := repo.EncodeKeyPart(strings.Repeat("x", 300) + "1")
	b := repo.EncodeKeyPart(strings.Repeat("x", 300) + "2")
	if a == b {
		t.Errorf("long IDs that differ at the end share the part %q", a)
	}
}

func TestDecodeKeyPartRejects(t *testing.T) {
	for _, part := range []string{
		"", "A", "a.b", "%", "%4", "%zz", "%e9", "%61", "%2d", "a~0123", "a/b", "==", "a=", "%3d",
	} {
		if got, err := repo.DecodeKeyPart(part); err == nil {
			t.Errorf("DecodeKeyPart(%q) = %q, want an error: the encoder never makes it", part, got)
		}
	}
}

func FuzzEncodeKeyPart(f *testing.F) {
	for _, id := range tenantIDs {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		checkPart(t, id)
	})
}

func FuzzDecodeKeyPart(f *testing.F) {
	for _, id := range tenantIDs {
		f.Add(repo.EncodeKeyPart(id))
	}
	f.Add("%41%2")
	f.Fuzz(func(t *testing.T, part string) {
		id, err := repo.DecodeKeyPart(part)
		if err != nil {
			return
		}
		// Every part that decodes is the one encoding of its ID, so no two
		// parts name the same tenant.
		if again := repo.EncodeKeyPart(id); again != part {
			t.Errorf("DecodeKeyPart(%q) = %q, which encodes as %q", part, id, again)
		}
	})
}

func TestValidKey(t *testing.T) {
	for _, key := range []string{"a", "a/b/c", "sets/20261128T000000Z/manifest", "..a", "a..", ".x", "x.", "~", "a%2Fb"} {
		if err := repo.ValidKey(key); err != nil {
			t.Errorf("ValidKey(%q): %v", key, err)
		}
	}
	for _, key := range []string{"", "/", "/a", "a/", "a//b", ".", "..", "a/./b", "a/..", "a b", "a\\b", "ä", "\x7f", strings.Repeat("k", 901)} {
		err := repo.ValidKey(key)
		if err == nil || !repo.IsPermanent(err) {
			t.Errorf("ValidKey(%q): %v, want a permanent error", key, err)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"", "a", "a/", "a/b", "sets/2026", "a/.", "a/..", ".", "..", "a/.x"} {
		if err := repo.ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q): %v", p, err)
		}
	}
	for _, p := range []string{"/", "/a", "//", "a//", "a//b", "./a", "../a", "a/../b", "a/./", "a b", "a\\b", "ä", strings.Repeat("p", 901)} {
		if err := repo.ValidPrefix(p); err == nil || !repo.IsPermanent(err) {
			t.Errorf("ValidPrefix(%q): %v, want a permanent error", p, err)
		}
	}
}
