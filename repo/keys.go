package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// maxKeyPart keeps an encoded part within the 255-byte file name limit of
// common file systems, with room for a suffix.
const maxKeyPart = 200

// EncodeKeyPart turns any string (a tenant ID with slashes, quotes, dots,
// upper case or unicode) into one safe key segment. Lower-case ASCII letters,
// digits, '-' and '_' stand for themselves; every other byte becomes %XX with
// upper-case hex, so the result is the same on case-insensitive file systems
// and never "." or "..". The empty string encodes as "=". A result longer than
// 200 bytes is cut and ends with "~" and 32 hex digits of the SHA-256 of s:
// still unique, no longer reversible.
func EncodeKeyPart(s string) string {
	if s == "" {
		return "="
	}
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	out := b.String()
	if len(out) <= maxKeyPart {
		return out
	}
	cut := maxKeyPart - 33
	// Never cut an escape in half.
	for i := cut - 2; i < cut && i >= 0; i++ {
		if out[i] == '%' {
			cut = i
			break
		}
	}
	sum := sha256.Sum256([]byte(s))
	return out[:cut] + "~" + hex.EncodeToString(sum[:16])
}

// DecodeKeyPart reverses EncodeKeyPart. It fails for parts that were cut and
// hashed, and for anything EncodeKeyPart cannot produce.
func DecodeKeyPart(part string) (string, error) {
	if part == "=" {
		return "", nil
	}
	if part == "" {
		return "", fmt.Errorf("decode key part: empty")
	}
	if len(part) > maxKeyPart {
		// The encoder cuts (and hashes) anything longer, so such a part
		// would decode to an ID whose encoding is another part.
		return "", fmt.Errorf("decode key part: longer than %d bytes", maxKeyPart)
	}
	var b strings.Builder
	for i := 0; i < len(part); i++ {
		c := part[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_':
			b.WriteByte(c)
		case c == '%' && i+2 < len(part):
			v, err := hex.DecodeString(part[i+1 : i+3])
			if err != nil || strings.ToUpper(part[i+1:i+3]) != part[i+1:i+3] {
				return "", fmt.Errorf("decode key part %q: bad escape at byte %d", part, i)
			}
			if k := v[0]; k >= 'a' && k <= 'z' || k >= '0' && k <= '9' || k == '-' || k == '_' {
				return "", fmt.Errorf("decode key part %q: needless escape at byte %d", part, i)
			}
			b.WriteByte(v[0])
			i += 2
		default:
			return "", fmt.Errorf("decode key part %q: byte %q at %d is not produced by the encoder", part, c, i)
		}
	}
	return b.String(), nil
}
