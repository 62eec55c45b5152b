package vault

// Client-side encryption (docs/SECURITY.md explains the design and the
// threat model; docs/FORMAT.md the bytes).
//
// Every snapshot set has its own 256-bit data key. The key is wrapped with
// age for the set's recipients (X25519 public keys) and stored in the set's
// manifest; the snapshotting side forgets it when the set is written, so it
// cannot decrypt what it wrote. Each stored chunk, each schema archive and
// the manifest body is sealed on its own with that key: a random 128-bit
// salt derives a key for the object (HKDF-SHA-256), and the content is
// encrypted in 64 KiB segments with AES-256-GCM, each segment's nonce being
// its number plus a "last segment" flag, as age's STREAM payload does. So
// every chunk is independently decryptable after one ranged GET, nonces
// never repeat (a key is used for one object only), and truncating,
// reordering or splicing segments fails authentication.

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"filippo.io/age"

	"github.com/tenantvault/tenantvault"
)

// CodecSealed starts a stored object that is sealed with a data key: the
// byte, a 16-byte salt, then the segments. The plaintext inside starts with
// a codec byte of its own (CodecZstd).
const CodecSealed byte = 2

const (
	dataKeySize = 32
	saltSize    = 16
	segmentSize = 64 << 10
	gcmTagSize  = 16
	encSegment  = segmentSize + gcmTagSize
	// SealedOverhead is what sealing adds to n bytes of plaintext: the
	// codec byte, the salt and a tag per segment.
	sealedFixed = 1 + saltSize
)

// SealedSize returns the stored size of n bytes of plaintext once sealed.
func SealedSize(n int64) int64 {
	segs := n / segmentSize
	if n%segmentSize != 0 || n == 0 {
		segs++
	}
	return sealedFixed + n + segs*gcmTagSize
}

// errAuth is what every sealed object that fails to decrypt reports: a
// wrong key, damaged or forged bytes, or a truncated object all look alike.
var errAuth = errors.New("sealed data failed authentication (damaged, truncated or not encrypted with this key)")

// objectAEAD derives the AEAD of one sealed object from the data key and the
// object's salt.
func objectAEAD(dataKey, salt []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, dataKey, salt, "tenantvault sealed object v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// segmentNonce is the nonce of segment n: 11 bytes of counter, big-endian,
// and a last-segment flag.
func segmentNonce(nonce *[12]byte, n uint64, last bool) {
	*nonce = [12]byte{}
	binary.BigEndian.PutUint64(nonce[3:11], n)
	if last {
		nonce[11] = 1
	}
}

// sealWriter encrypts what is written to it into w, a segment at a time. A
// full segment is sealed only once more data arrives, because only Close
// knows which segment is the last.
type sealWriter struct {
	w     io.Writer
	aead  cipher.AEAD
	buf   []byte
	out   []byte
	n     uint64
	nonce [12]byte
	err   error
}

// newSealWriter writes the codec byte and a fresh salt to w and returns the
// writer of the plaintext. buf, when it has the capacity, is reused.
func newSealWriter(w io.Writer, dataKey []byte, reuse *sealWriter) (*sealWriter, error) {
	var head [sealedFixed]byte
	head[0] = CodecSealed
	if _, err := rand.Read(head[1:]); err != nil {
		return nil, err
	}
	aead, err := objectAEAD(dataKey, head[1:])
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(head[:]); err != nil {
		return nil, err
	}
	s := reuse
	if s == nil {
		s = &sealWriter{buf: make([]byte, 0, segmentSize), out: make([]byte, 0, encSegment)}
	}
	s.w, s.aead, s.buf, s.n, s.err = w, aead, s.buf[:0], 0, nil
	return s, nil
}

func (s *sealWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	total := len(p)
	for len(p) > 0 {
		if len(s.buf) == segmentSize {
			if s.err = s.flush(false); s.err != nil {
				return 0, s.err
			}
		}
		k := min(segmentSize-len(s.buf), len(p))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
	}
	return total, nil
}

func (s *sealWriter) flush(last bool) error {
	segmentNonce(&s.nonce, s.n, last)
	s.out = s.aead.Seal(s.out[:0], s.nonce[:], s.buf, nil)
	s.n++
	s.buf = s.buf[:0]
	_, err := s.w.Write(s.out)
	return err
}

// Close seals the last segment. The writer must not be used afterwards
// (until it is reused by newSealWriter).
func (s *sealWriter) Close() error {
	if s.err != nil {
		return s.err
	}
	s.err = s.flush(true)
	if s.err == nil {
		s.err = errors.New("sealed writer closed")
		return nil
	}
	return s.err
}

// openReader decrypts the segments that follow the codec byte and the
// salt. Read errors of the underlying reader pass through as they are;
// everything the bytes themselves cause is errAuth. Segments are read
// into one buffer (from a pool: a restore opens a reader per chunk, most
// chunks are small) and decrypted in place.
type openReader struct {
	r     io.Reader
	aead  cipher.AEAD
	buf   *[]byte // a segment and one byte more
	carry int     // read-ahead bytes at the end of buf (0 or 1)
	plain []byte  // decrypted, in buf
	pos   int
	n     uint64
	nonce [12]byte
	last  bool
	err   error
}

var segmentBufs = sync.Pool{New: func() any { b := make([]byte, encSegment+1); return &b }}

// newOpenReader reads the salt from r (the codec byte was read by the
// caller) and returns the plaintext reader. release returns its buffer.
func newOpenReader(r io.Reader, dataKey []byte) (*openReader, error) {
	var salt [saltSize]byte
	if _, err := io.ReadFull(r, salt[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, errAuth
		}
		return nil, err
	}
	aead, err := objectAEAD(dataKey, salt[:])
	if err != nil {
		return nil, err
	}
	return &openReader{r: r, aead: aead, buf: segmentBufs.Get().(*[]byte)}, nil
}

// release returns the buffer; the reader must not be used afterwards.
func (o *openReader) release() {
	if o.buf != nil {
		segmentBufs.Put(o.buf)
		o.buf, o.plain = nil, nil
		if o.err == nil {
			o.err = errors.New("sealed reader released")
		}
	}
}

func (o *openReader) Read(p []byte) (int, error) {
	for o.pos == len(o.plain) {
		if o.err != nil {
			return 0, o.err
		}
		if o.last {
			o.err = io.EOF
			return 0, io.EOF
		}
		o.err = o.next()
	}
	n := copy(p, o.plain[o.pos:])
	o.pos += n
	return n, nil
}

// next decrypts the next segment into o.plain.
func (o *openReader) next() error {
	buf := *o.buf
	// The byte read past the previous segment starts this one. Reading
	// one byte beyond a full segment tells a full last segment from a
	// full middle one.
	if o.carry == 1 {
		buf[0] = buf[encSegment]
	}
	n, err := io.ReadFull(o.r, buf[o.carry:encSegment+1])
	have := o.carry + n
	o.carry = 0
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		o.last = true
	case err != nil:
		return err
	}
	seg := buf[:have]
	if !o.last {
		seg, o.carry = buf[:encSegment], 1
	}
	if len(seg) < gcmTagSize {
		return errAuth
	}
	segmentNonce(&o.nonce, o.n, o.last)
	plain, err := o.aead.Open(seg[:0], o.nonce[:], seg, nil)
	if err != nil {
		return errAuth
	}
	if o.last && len(plain) == 0 && o.n > 0 {
		// Only an empty object has an empty last segment; otherwise an
		// empty segment after a full one would be a way to extend it.
		return errAuth
	}
	o.plain, o.pos = plain, 0
	o.n++
	return nil
}

// sealBytes seals plaintext into one stored object (codec byte, salt,
// segments).
func sealBytes(dataKey, plaintext []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(SealedSize(int64(len(plaintext)))))
	w, err := newSealWriter(&buf, dataKey, nil)
	if err != nil {
		return nil, err
	}
	w.Write(plaintext)
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// openBytes reverses sealBytes, bounding the plaintext to limit bytes.
func openBytes(dataKey, stored []byte, limit int64) ([]byte, error) {
	if len(stored) < sealedFixed || stored[0] != CodecSealed {
		return nil, errAuth
	}
	r, err := newOpenReader(bytes.NewReader(stored[1:]), dataKey)
	if err != nil {
		return nil, err
	}
	defer r.release()
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("sealed object larger than %d bytes", limit)
	}
	return out, nil
}

// newDataKey returns a fresh random data key.
func newDataKey() []byte {
	k := make([]byte, dataKeySize)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return k
}

// wrapKey encrypts a data key to recipients with age.
func wrapKey(dataKey []byte, recipients []age.Recipient) ([]byte, error) {
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, recipients...)
	if err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	w.Write(dataKey)
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	return buf.Bytes(), nil
}

// ErrNoIdentity is wrapped when reading a set needs an identity that was
// not given, or that none of the given identities matches.
var ErrNoIdentity = errors.New("no matching identity")

// unwrapKey decrypts a wrapped data key with any of identities.
func unwrapKey(wrapped []byte, identities []age.Identity) ([]byte, error) {
	if len(identities) == 0 {
		return nil, ErrNoIdentity
	}
	r, err := age.Decrypt(bytes.NewReader(wrapped), identities...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, ErrNoIdentity
		}
		return nil, tenantvault.Integrityf("wrapped data key is damaged: %v", err)
	}
	k, err := io.ReadAll(io.LimitReader(r, dataKeySize+1))
	if err != nil || len(k) != dataKeySize {
		return nil, tenantvault.Integrityf("wrapped data key is damaged")
	}
	return k, nil
}

// Key encodings. Secret keys are upper case and name what they are, public
// ones lower case, both base32 with a 4-byte SHA-256 checksum so that a
// truncated or mistyped key is refused rather than silently wrong.
const (
	signingKeyPrefix = "TENANTVAULT-SIGNING-KEY-1"
	signerPrefix     = "tvsign1"
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

func encodeKey(prefix string, key []byte) string {
	sum := sha256.Sum256(append([]byte(prefix), key...))
	s := b32.EncodeToString(append(slices.Clone(key), sum[:4]...))
	if prefix == signerPrefix {
		s = strings.ToLower(s)
	}
	return prefix + s
}

func decodeKey(prefix, s string, size int) ([]byte, bool) {
	body, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return nil, false
	}
	raw, err := b32.DecodeString(strings.ToUpper(body))
	if err != nil || len(raw) != size+4 {
		return nil, false
	}
	key := raw[:size]
	sum := sha256.Sum256(append([]byte(prefix), key...))
	if !hmac.Equal(sum[:4], raw[size:]) {
		return nil, false
	}
	return key, true
}

// SigningKey signs the manifests of the sets a snapshotting side writes,
// so that readers can tell them from manifests forged by someone who can
// only write to the bucket. It is an Ed25519 key.
type SigningKey struct {
	priv ed25519.PrivateKey
}

// GenerateSigningKey returns a new random signing key.
func GenerateSigningKey() (*SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &SigningKey{priv: priv}, nil
}

// ParseSigningKey reads TENANTVAULT-SIGNING-KEY-1....
func ParseSigningKey(s string) (*SigningKey, error) {
	seed, ok := decodeKey(signingKeyPrefix, strings.TrimSpace(s), ed25519.SeedSize)
	if !ok {
		// Never quote s: it is a secret.
		return nil, errors.New("malformed signing key")
	}
	return &SigningKey{priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// String is the secret encoding, for the key file only.
func (k *SigningKey) String() string { return encodeKey(signingKeyPrefix, k.priv.Seed()) }

// Signer is the public half, tvsign1..., which readers trust.
func (k *SigningKey) Signer() string { return encodeKey(signerPrefix, k.pub()) }

func (k *SigningKey) pub() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// tagKey derives the key of the reuse tags (see ReuseIndex) from the
// signing key: only the snapshotting side can compute or check them.
func (k *SigningKey) tagKey() []byte {
	t, err := hkdf.Key(sha256.New, k.priv.Seed(), nil, "tenantvault reuse tag v1", 32)
	if err != nil {
		panic(err)
	}
	return t
}

// ParseSigner reads a signer's public key, tvsign1....
func ParseSigner(s string) (ed25519.PublicKey, error) {
	pub, ok := decodeKey(signerPrefix, strings.ToLower(strings.TrimSpace(s)), ed25519.PublicKeySize)
	if !ok {
		return nil, fmt.Errorf("malformed signer public key %q (want tvsign1...)", s)
	}
	return ed25519.PublicKey(pub), nil
}

// SignerString encodes a signer public key.
func SignerString(pub ed25519.PublicKey) string { return encodeKey(signerPrefix, pub) }

// Keys is the key material a vault is opened with. The zero value reads
// and writes plaintext repositories only.
//
//   - Recipients: new sets are encrypted to them. Snapshotting sides hold
//     these (public) and a signing key, never an identity.
//   - Identities: decrypt sets (restore, verify --read-data, drill, list).
//   - Signing: the first signs new sets' manifests; all of them are trusted.
//   - Trusted: public keys of other signers whose manifests are accepted.
//
// A side with identities but no recipients (restore's pre-restore set)
// encrypts to its identities' own recipients.
type Keys struct {
	Recipients []age.Recipient
	Identities []age.Identity
	Signing    []*SigningKey
	Trusted    []ed25519.PublicKey
}

// IsZero reports whether no key material was given.
func (k *Keys) IsZero() bool {
	return k == nil || len(k.Recipients) == 0 && len(k.Identities) == 0 && len(k.Signing) == 0 && len(k.Trusted) == 0
}

// writerRecipients are the recipients new sets are encrypted to.
func (k *Keys) writerRecipients() []age.Recipient {
	if len(k.Recipients) > 0 {
		return k.Recipients
	}
	var out []age.Recipient
	for _, id := range k.Identities {
		switch i := id.(type) {
		case *age.X25519Identity:
			out = append(out, i.Recipient())
		case *age.HybridIdentity:
			out = append(out, i.Recipient())
		}
	}
	return out
}

// RecipientStrings returns the public keys new sets are encrypted to, sorted.
func (k *Keys) RecipientStrings() []string {
	var out []string
	for _, r := range k.writerRecipients() {
		if s, ok := r.(fmt.Stringer); ok {
			out = append(out, s.String())
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// trusted reports whether pub may sign manifests this side accepts.
func (k *Keys) trusted(pub ed25519.PublicKey) bool {
	for _, s := range k.Signing {
		if s.pub().Equal(pub) {
			return true
		}
	}
	for _, t := range k.Trusted {
		if t.Equal(pub) {
			return true
		}
	}
	return false
}

// hasTrust reports whether any signer is pinned.
func (k *Keys) hasTrust() bool { return len(k.Signing) > 0 || len(k.Trusted) > 0 }

// AddRecipient parses one public key (age1...) and adds it.
func (k *Keys) AddRecipient(s string) error {
	s = strings.TrimSpace(s)
	rs, err := age.ParseRecipients(strings.NewReader(s))
	if err != nil || len(rs) != 1 {
		if strings.HasPrefix(s, "AGE-SECRET-KEY-") || strings.HasPrefix(s, signingKeyPrefix) {
			return errors.New("a secret key was given where a recipient (public key, age1...) belongs; never pass secret keys on the command line")
		}
		return fmt.Errorf("malformed recipient %q (want an age public key, age1...)", s)
	}
	k.Recipients = append(k.Recipients, rs[0])
	return nil
}

// What a key file may hold.
const (
	allowRecipients = 1 << iota
	allowIdentities
	allowSigning
	allowTrusted
	allowSecrets = allowIdentities | allowSigning
	allowAll     = allowRecipients | allowIdentities | allowSigning | allowTrusted
)

// KeyFileWarning is a problem with a key file that does not stop its use
// (for instance, other users may read it).
type KeyFileWarning string

// LoadKeyFile reads an identity or signing key file (what keygen writes):
// one key per line, "#" comments and empty lines ignored. It may hold age
// identities (AGE-SECRET-KEY-1...), signing keys
// (TENANTVAULT-SIGNING-KEY-1...), trusted signers (tvsign1...) and
// recipients (age1...). Errors never quote a line: it may be a secret.
func (k *Keys) LoadKeyFile(path string) ([]KeyFileWarning, error) {
	return k.loadFile(path, allowAll)
}

// LoadSigningKeyFile reads the snapshotting side's key file: signing keys,
// and optionally recipients and trusted signers. A file with an age
// identity is refused: the side that writes sets must not be able to read
// them back.
func (k *Keys) LoadSigningKeyFile(path string) ([]KeyFileWarning, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	probe := &Keys{}
	perr := probe.parse(f, allowAll)
	f.Close()
	if perr == nil && len(probe.Identities) > 0 {
		return nil, fmt.Errorf("%s holds an age identity, which decrypts snapshots: the snapshotting side gets the signing key file (keygen's --signing-output), never the identity file", path)
	}
	warn, err := k.loadFile(path, allowSigning|allowRecipients|allowTrusted)
	if err == nil && len(k.Signing) == 0 {
		err = fmt.Errorf("%s holds no signing key (TENANTVAULT-SIGNING-KEY-1...)", path)
	}
	return warn, err
}

// LoadRecipientsFile reads a file of recipients (age1...), one per line.
func (k *Keys) LoadRecipientsFile(path string) error {
	_, err := k.loadFile(path, allowRecipients|allowTrusted)
	return err
}

func (k *Keys) loadFile(path string, allow int) ([]KeyFileWarning, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	before := len(k.Identities) + len(k.Signing)
	if err := k.parse(f, allow); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var warn []KeyFileWarning
	if len(k.Identities)+len(k.Signing) > before {
		if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
			warn = append(warn, KeyFileWarning(fmt.Sprintf("%s holds secret keys and is readable by other users (mode %04o); chmod 600 it", path, fi.Mode().Perm())))
		}
	}
	return warn, nil
}

// ParseKeyFile reads key file content (see LoadKeyFile).
func ParseKeyFile(r io.Reader) (*Keys, error) {
	k := &Keys{}
	if err := k.parse(r, allowAll); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keys) parse(r io.Reader, allow int) error {
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	n, found := 0, 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		at := "line " + strconv.Itoa(n)
		kind := 0
		switch {
		case strings.HasPrefix(line, "AGE-"):
			kind = allowIdentities
		case strings.HasPrefix(line, signingKeyPrefix):
			kind = allowSigning
		case strings.HasPrefix(line, signerPrefix):
			kind = allowTrusted
		case strings.HasPrefix(line, "age1"):
			kind = allowRecipients
		default:
			return fmt.Errorf("%s: not a key this file may hold (age identities AGE-SECRET-KEY-1..., signing keys %s..., signers %s..., recipients age1...)", at, signingKeyPrefix, signerPrefix)
		}
		if allow&kind == 0 {
			if kind&allowSecrets != 0 {
				return fmt.Errorf("%s: a secret key, where only public keys belong", at)
			}
			return fmt.Errorf("%s: this file may not hold that kind of key", at)
		}
		switch kind {
		case allowIdentities:
			ids, err := age.ParseIdentities(strings.NewReader(line))
			if err != nil {
				return fmt.Errorf("%s: malformed age identity", at)
			}
			k.Identities = append(k.Identities, ids...)
		case allowSigning:
			s, err := ParseSigningKey(line)
			if err != nil {
				return fmt.Errorf("%s: %v", at, err)
			}
			k.Signing = append(k.Signing, s)
		case allowTrusted:
			p, err := ParseSigner(line)
			if err != nil {
				return fmt.Errorf("%s: malformed signer public key (want tvsign1...)", at)
			}
			k.Trusted = append(k.Trusted, p)
		case allowRecipients:
			if err := k.AddRecipient(line); err != nil {
				return fmt.Errorf("%s: malformed recipient (want an age public key, age1...)", at)
			}
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if found == 0 {
		return errors.New("holds no keys")
	}
	return nil
}

// NewKeyPair generates what `tenantvault keygen` writes: an age X25519
// identity and a signing key. It returns the identity file (the identity,
// the signing key, and comments naming both public keys), the signing key
// file for the snapshotting side (the signing key and the recipient), and
// the recipient and signer public keys.
func NewKeyPair(created string) (identityFile, signingFile, recipient, signer string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", "", "", err
	}
	sk, err := GenerateSigningKey()
	if err != nil {
		return "", "", "", "", err
	}
	recipient, signer = id.Recipient().String(), sk.Signer()
	identityFile = fmt.Sprintf(`# tenantvault identity, created %s.
# Keep it secret and offline: it decrypts every snapshot set encrypted to the
# recipient below. restore, verify --read-data, drill and list need it
# (--identity FILE or TENANTVAULT_IDENTITY).
# recipient: %s
%s
# The signing key: sets written with this file (pre-restore sets) are signed
# with it, and manifests signed by it (signer %s) are trusted.
%s
`, created, recipient, id, signer, sk)
	signingFile = fmt.Sprintf(`# tenantvault signing key, created %s, for the snapshotting side
# (snapshot --signing-key FILE, or the agent's encryption.signing_key_file).
# It signs manifests; it cannot decrypt anything. Keep it secret.
# signer: %s
%s
# New sets are encrypted to this recipient:
%s
`, created, signer, sk, recipient)
	return identityFile, signingFile, recipient, signer, nil
}
