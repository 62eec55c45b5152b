package vault

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault"
)

func TestSealRoundTrip(t *testing.T) {
	key := newDataKey()
	for _, n := range []int{0, 1, 100, segmentSize - 1, segmentSize, segmentSize + 1, 3 * segmentSize, 3*segmentSize + 7} {
		plain := bytes.Repeat([]byte("tenant data "), n/12+1)[:n]
		sealed, err := sealBytes(key, plain)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(sealed)) != SealedSize(int64(n)) {
			t.Fatalf("n=%d: sealed %d bytes, SealedSize says %d", n, len(sealed), SealedSize(int64(n)))
		}
		got, err := openBytes(key, sealed, 1<<30)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("n=%d: open: %v, equal %v", n, err, bytes.Equal(got, plain))
		}
		// Streaming through openReader in small reads gives the same.
		r, err := newOpenReader(bytes.NewReader(sealed[1:]), key)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		buf := make([]byte, 1000)
		for {
			k, err := r.Read(buf)
			out.Write(buf[:k])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("n=%d: read: %v", n, err)
			}
		}
		if !bytes.Equal(out.Bytes(), plain) {
			t.Fatalf("n=%d: streamed plaintext differs", n)
		}
		// Every truncation, every appended byte and a wrong key fail.
		cuts := []int{len(sealed) - 1, sealedFixed, sealedFixed + encSegment, len(sealed) - gcmTagSize}
		for _, cut := range cuts {
			if cut < 0 || cut >= len(sealed) {
				continue
			}
			if _, err := openBytes(key, sealed[:cut], 1<<30); !errors.Is(err, errAuth) {
				t.Fatalf("n=%d: cut at %d of %d: %v", n, cut, len(sealed), err)
			}
		}
		if _, err := openBytes(key, append(bytes.Clone(sealed), 0), 1<<30); !errors.Is(err, errAuth) {
			t.Fatalf("n=%d: appended byte: %v", n, err)
		}
		if _, err := openBytes(newDataKey(), sealed, 1<<30); !errors.Is(err, errAuth) {
			t.Fatalf("n=%d: wrong key: %v", n, err)
		}
	}
}

func TestSealRejectsSplicedSegments(t *testing.T) {
	key := newDataKey()
	a, _ := sealBytes(key, bytes.Repeat([]byte{'a'}, 2*segmentSize+10))
	b, _ := sealBytes(key, bytes.Repeat([]byte{'b'}, 2*segmentSize+10))
	// The salt of a with the segments of b: another object key.
	spliced := append(bytes.Clone(a[:sealedFixed]), b[sealedFixed:]...)
	if _, err := openBytes(key, spliced, 1<<30); !errors.Is(err, errAuth) {
		t.Fatalf("spliced: %v", err)
	}
	// Two middle segments swapped.
	s := bytes.Clone(a)
	seg1 := bytes.Clone(s[sealedFixed : sealedFixed+encSegment])
	copy(s[sealedFixed:], s[sealedFixed+encSegment:sealedFixed+2*encSegment])
	copy(s[sealedFixed+encSegment:], seg1)
	if _, err := openBytes(key, s, 1<<30); !errors.Is(err, errAuth) {
		t.Fatalf("swapped: %v", err)
	}
	// Dropping the last segment leaves a full segment that is not flagged
	// as the last one.
	if _, err := openBytes(key, a[:sealedFixed+2*encSegment], 1<<30); !errors.Is(err, errAuth) {
		t.Fatalf("dropped last segment: %v", err)
	}
}

func TestKeyEncodings(t *testing.T) {
	id, sign, recipient, signer, err := NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParseKeyFile(strings.NewReader(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Identities) != 1 || len(keys.Signing) != 1 || keys.Signing[0].Signer() != signer {
		t.Fatalf("identity file parsed to %+v", keys)
	}
	if got := keys.RecipientStrings(); len(got) != 1 || got[0] != recipient {
		t.Fatalf("recipients derived from the identity: %v, want %s", got, recipient)
	}
	w, err := ParseKeyFile(strings.NewReader(sign))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Identities) != 0 || len(w.Signing) != 1 || len(w.Recipients) != 1 {
		t.Fatalf("signing file parsed to %+v", w)
	}
	pub, err := ParseSigner(signer)
	if err != nil || !keys.trusted(pub) {
		t.Fatalf("signer %s: %v, trusted %v", signer, err, err == nil && keys.trusted(pub))
	}
	// A mistyped key is refused, and the error does not quote a secret.
	secret := keys.Signing[0].String()
	bad := secret[:len(secret)-3] + "AAA"
	if bad == secret {
		bad = secret[:len(secret)-3] + "BBB"
	}
	_, err = ParseKeyFile(strings.NewReader(bad + "\n"))
	if err == nil || strings.Contains(err.Error(), bad[len(signingKeyPrefix):]) {
		t.Fatalf("mistyped signing key: %v", err)
	}
	if _, err := ParseSigner(signer[:len(signer)-1] + "a"); err == nil && signer[len(signer)-1] != 'a' {
		t.Fatal("mistyped signer accepted")
	}
	// A recipients file with a secret key in it is refused without quoting it.
	k := &Keys{}
	err = k.parse(strings.NewReader(id), allowRecipients|allowTrusted)
	if err == nil || strings.Contains(err.Error(), "AGE-SECRET-KEY-1") && strings.Contains(err.Error(), id[strings.Index(id, "AGE-SECRET-KEY-1"):][:30]) {
		t.Fatalf("secret in a recipients file: %v", err)
	}
	if err := k.AddRecipient(strings.TrimSpace(strings.Split(id, "\n")[4])); err == nil {
		t.Fatal("a secret key was accepted as a recipient")
	}
}

func TestUnwrapKeyWithoutMatchingIdentity(t *testing.T) {
	id, _, _, _, _ := NewKeyPair("x")
	other, _, _, _, _ := NewKeyPair("x")
	k1, _ := ParseKeyFile(strings.NewReader(id))
	k2, _ := ParseKeyFile(strings.NewReader(other))
	dk := newDataKey()
	w, err := wrapKey(dk, k1.writerRecipients())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unwrapKey(w, k2.Identities); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("other identity: %v", err)
	}
	if got, err := unwrapKey(w, append(k2.Identities, k1.Identities...)); err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("both identities: %v", err)
	}
	damaged := bytes.Clone(w)
	damaged[len(damaged)-5] ^= 1
	if _, err := unwrapKey(damaged, k1.Identities); !errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatalf("damaged wrapped key: %v", err)
	}
}
