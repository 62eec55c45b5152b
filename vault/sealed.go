package vault

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// SetIndex is what every reader may know about a snapshot set, with or
// without an identity: enough to verify that every stored byte is intact,
// to apply retention and to collect garbage, and nothing about tenants,
// tables or content. For a plaintext set it is derived from the manifest;
// for an encrypted one it is the signed, unencrypted header of the sealed
// manifest.
type SetIndex struct {
	Version    int       `json:"version"`
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	SourceName string    `json:"source_name,omitempty"`
	Partial    bool      `json:"partial,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	// ConsistentAt is the set's instant (see manifest.Manifest).
	ConsistentAt time.Time `json:"consistent_at"`
	FinishedAt   time.Time `json:"finished_at"`
	// Group names the set's source and tenancy for retention: GroupKey for
	// a plaintext set, "sha256:<hex>" of it for an encrypted one.
	Group string `json:"group"`
	// Recipients the set's data key is wrapped for (encrypted sets).
	Recipients []string `json:"recipients,omitempty"`
	// Keys are the wrapped data keys of this set and of every earlier set
	// whose packs it points into, by the set that wrote those packs.
	Keys    []WrappedKey `json:"keys,omitempty"`
	Packs   []string     `json:"packs"`
	Schemas []ObjectRef  `json:"schemas"`
	// Chunks are every chunk's place and checksum in header version 1;
	// version 2 has none here: they are in the tenant index's locator
	// (see Index and Vault.EachIndexChunk).
	Chunks []IndexChunk `json:"chunks,omitempty"`
	// Index locates the tenant index of an encrypted set in set format 2
	// (header version 2).
	Index  *SealedIndex `json:"index,omitempty"`
	Stats  IndexStats   `json:"stats"`
	Signer string       `json:"-"`
	sealed bool         // from a sealed manifest
	// indexKey and indexGen: the tenant index a plaintext set format 2
	// manifest names, and the manifest's generation (see forget).
	indexKey string
	indexGen int
	authBy   signerVerdict // how the signature was checked
}

// WrappedKey is a data key wrapped with age for a set's recipients.
type WrappedKey struct {
	Set string `json:"set"`
	Age []byte `json:"age"`
}

// ObjectRef names a stored object and its checksum.
type ObjectRef struct {
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// IndexChunk locates a stored chunk and its checksum. Tag, in encrypted
// sets, lets the snapshotting side find a chunk of its own it may reuse
// (see ReuseIndex); to anyone else it is random.
type IndexChunk struct {
	Pack   int    `json:"p"`
	Offset int64  `json:"o"`
	Length int64  `json:"l"`
	SHA256 string `json:"h"`
	Tag    string `json:"t,omitempty"`
}

// SealedIndex is what the signed header of an encrypted set in set format
// 2 says about its tenant index: where the (sealed) directory and the
// (plaintext) locator are, and the checksum of the whole object, so that a
// reader without keys can prove every byte of it. It leaves out the tenant
// count.
type SealedIndex struct {
	Key       string         `json:"key"`
	Size      int64          `json:"size"`
	Pages     int            `json:"pages"`
	Directory manifest.Range `json:"directory"`
	Locator   manifest.Range `json:"locator"`
	SHA256    string         `json:"sha256"`
	chunks    int            // written to the locator
}

// IndexStats are the sizes of a set that tell nothing about its tenants.
type IndexStats struct {
	Chunks  int   `json:"chunks"`
	Stored  int64 `json:"stored"`
	Written int64 `json:"written"`
}

// Encrypted reports whether the set is encrypted.
func (x *SetIndex) Encrypted() bool { return x.sealed }

// Authenticated reports whether the manifest's signature was checked
// against a signer the reader trusts (an identity or signing key file),
// rather than only against the signers the repository config lists.
func (x *SetIndex) Authenticated() bool { return x.authBy == signerPinned }

type signerVerdict int

const (
	signerNone   signerVerdict = iota // plaintext set
	signerConfig                      // signer listed in the repository config
	signerPinned                      // signer trusted by the reader's keys
)

// indexFromManifest derives the index of a plaintext set.
func indexFromManifest(m *manifest.Manifest) *SetIndex {
	x := &SetIndex{
		Version: 1, ID: m.ID, Kind: m.Kind, SourceName: m.Source.Name, Partial: m.Partial,
		StartedAt: m.StartedAt, ConsistentAt: m.ConsistentAt, FinishedAt: m.FinishedAt,
		Group: GroupKey(m), Packs: m.Packs,
	}
	x.Schemas = schemaRefs(m)
	eachChunk(m, func(_ string, _ bool, c manifest.Chunk) {
		x.Chunks = append(x.Chunks, IndexChunk{Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256})
	})
	x.Stats = IndexStats{Chunks: len(x.Chunks), Stored: m.Stats.Stored, Written: m.Stats.Written}
	if m.Index != nil {
		x.Stats.Chunks = m.Stats.Chunks // the tenants' are in the index
		x.indexKey = m.Index.Key
	}
	x.indexGen = m.Generation
	return x
}

// schemaRefs are the schema objects of m as a header lists them: each
// archive, followed by its split object when it has one (verified and kept
// by GC like the archive itself).
func schemaRefs(m *manifest.Manifest) []ObjectRef {
	var out []ObjectRef
	for _, s := range m.Schemas {
		out = append(out, ObjectRef{Key: s.Key, Size: s.Size, SHA256: s.SHA256})
		if sp := s.Split; sp != nil {
			out = append(out, ObjectRef{Key: sp.Key, Size: sp.Size, SHA256: sp.SHA256})
		}
	}
	return out
}

// eachChunk visits the global chunks, then every tenant's, in manifest
// order: the order of SetIndex.Chunks.
func eachChunk(m *manifest.Manifest, fn func(tenant string, global bool, c manifest.Chunk)) {
	for _, c := range m.Global {
		fn("", true, c)
	}
	for _, t := range m.Tenants {
		for _, c := range t.Chunks {
			fn(t.ID, false, c)
		}
	}
}

// groupHash is the Group of an encrypted set: a hash, so that the source's
// host and database names stay out of the header, while retention can
// still count a source's sets without an identity.
func groupHash(m *manifest.Manifest) string { return groupHashOf(GroupKey(m)) }

func groupHashOf(groupKey string) string {
	sum := sha256.Sum256([]byte("tenantvault group v1\x00" + groupKey))
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// reuseTag is the Tag of a chunk: an HMAC, under a key only the signing
// side has, of what makes two chunks interchangeable. A chunk sealed with a
// tenant's own key (keyName, the key object) is interchangeable only with
// one sealed with the same key; keyName "" (the set's data key) leaves the
// tag as it always was.
func reuseTag(key []byte, tenant string, global bool, signature, digest string, size int64, keyName string) string {
	h := hmac.New(sha256.New, key)
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(tenant)))
	b = append(b, tenant...)
	b = strconv.AppendBool(b, global)
	b = binary.AppendUvarint(b, uint64(len(signature)))
	b = append(b, signature...)
	b = append(b, digest...)
	b = binary.AppendVarint(b, size)
	if keyName != "" {
		b = append(b, 'k')
		b = binary.AppendUvarint(b, uint64(len(keyName)))
		b = append(b, keyName...)
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Sealed manifest framing:
//
//	magic line | signer public key (32) | uvarint n | header (n, zstd JSON)
//	| uvarint m | body (m, sealed zstd JSON manifest) | Ed25519 signature (64)
//
// The signature covers signatureContext and every byte before it.
const (
	sealedMagic      = "tenantvault sealed manifest 1\n"
	signatureContext = "tenantvault manifest signature v1\x00"
	maxHeader        = 1 << 30
)

// encodeSealed assembles and signs a sealed manifest.
func encodeSealed(x *SetIndex, body []byte, sk *SigningKey) ([]byte, error) {
	hdr, err := compressJSON(x)
	if err != nil {
		return nil, err
	}
	return signFrames(sealedMagic, signatureContext, sk, hdr, body), nil
}

// signFrames assembles magic | signer public key | header frame | body
// frame and appends an Ed25519 signature over context and all of it.
func signFrames(magic, context string, sk *SigningKey, hdr, body []byte) []byte {
	var out bytes.Buffer
	out.WriteString(magic)
	out.Write(sk.pub())
	out.Write(binary.AppendUvarint(nil, uint64(len(hdr))))
	out.Write(hdr)
	out.Write(binary.AppendUvarint(nil, uint64(len(body))))
	out.Write(body)
	sig := ed25519.Sign(sk.priv, append([]byte(context), out.Bytes()...))
	out.Write(sig)
	return out.Bytes()
}

// openFrames checks the framing and the signature of what signFrames
// wrote, before anything in it is decoded.
func openFrames(data []byte, magic, context string) (pub ed25519.PublicKey, hdr, body []byte, err error) {
	rest, ok := bytes.CutPrefix(data, []byte(magic))
	if !ok {
		return nil, nil, nil, errors.New("not a sealed object of this kind")
	}
	if len(rest) < ed25519.PublicKeySize+ed25519.SignatureSize {
		return nil, nil, nil, errors.New("truncated")
	}
	pub = ed25519.PublicKey(rest[:ed25519.PublicKeySize])
	signed, sig := data[:len(data)-ed25519.SignatureSize], data[len(data)-ed25519.SignatureSize:]
	if !ed25519.Verify(pub, append([]byte(context), signed...), sig) {
		return nil, nil, nil, errors.New("the signature does not verify: it was damaged, altered or forged")
	}
	rest = rest[ed25519.PublicKeySize : len(rest)-ed25519.SignatureSize]
	if hdr, rest, err = cutFrame(rest); err != nil {
		return nil, nil, nil, fmt.Errorf("header: %v", err)
	}
	if body, rest, err = cutFrame(rest); err != nil {
		return nil, nil, nil, fmt.Errorf("body: %v", err)
	}
	if len(rest) != 0 {
		return nil, nil, nil, fmt.Errorf("%d stray bytes", len(rest))
	}
	return pub, hdr, body, nil
}

// IsSealedManifest reports whether data starts like a sealed manifest.
func IsSealedManifest(data []byte) bool { return bytes.HasPrefix(data, []byte(sealedMagic)) }

// decodeSealed checks the framing and the signature of a sealed manifest
// and decodes its header. verdict says how far the signer is trusted. The
// signature is checked before anything is decompressed. The body is
// returned still sealed. Every failure wraps tenantvault.ErrIntegrity: a
// damaged or forged manifest is refused.
func decodeSealed(data []byte, verdict func(ed25519.PublicKey) signerVerdict) (*SetIndex, []byte, error) {
	bad := func(format string, args ...any) error {
		return tenantvault.Integrityf("sealed manifest: "+format, args...)
	}
	pub, hdr, body, err := openFrames(data, sealedMagic, signatureContext)
	if err != nil {
		return nil, nil, bad("%v", err)
	}
	x := &SetIndex{}
	if err := decompressJSON(hdr, maxHeader, x); err != nil {
		return nil, nil, bad("header: %v", err)
	}
	if err := x.validate(); err != nil {
		return nil, nil, bad("%v", err)
	}
	x.Signer, x.sealed, x.authBy = SignerString(pub), true, verdict(pub)
	return x, body, nil
}

func cutFrame(b []byte) (frame, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, errors.New("bad length")
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// validate checks the references inside an index.
func (x *SetIndex) validate() error {
	if x.Version != 1 && x.Version != 2 {
		return fmt.Errorf("unsupported header version %d", x.Version)
	}
	if !ValidSetID(x.ID) {
		return fmt.Errorf("bad set ID %q", x.ID)
	}
	switch ix := x.Index; {
	case x.Version == 1 && ix != nil:
		return errors.New("a version 1 header with a tenant index")
	case x.Version == 2 && (ix == nil || len(x.Chunks) > 0):
		return errors.New("a version 2 header needs a tenant index and lists no chunks")
	case ix != nil && (ix.Key != IndexKey(x.ID) || ix.Pages < 0 || len(ix.SHA256) != 64 ||
		len(ix.Directory.SHA256) != 64 || len(ix.Locator.SHA256) != 64 ||
		ix.Directory.Offset < int64(len(indexMagic)) || ix.Directory.Length <= 0 ||
		ix.Locator.Offset != ix.Directory.Offset+ix.Directory.Length || ix.Locator.Length <= 0 ||
		ix.Size != ix.Locator.Offset+ix.Locator.Length):
		return errors.New("bad tenant index reference")
	}
	for _, p := range x.Packs {
		if _, ok := packOwner(p); !ok {
			return fmt.Errorf("bad pack key %q", p)
		}
	}
	for _, c := range x.Chunks {
		if c.Pack < 0 || c.Pack >= len(x.Packs) || c.Offset < 0 || c.Length <= 0 || len(c.SHA256) != 64 {
			return fmt.Errorf("bad chunk reference")
		}
	}
	for _, s := range x.Schemas {
		if !strings.HasPrefix(s.Key, SchemasPrefix) || len(s.SHA256) != 64 || s.Size < 0 {
			return fmt.Errorf("bad schema reference")
		}
	}
	for _, k := range x.Keys {
		if !ValidSetID(k.Set) || len(k.Age) == 0 {
			return fmt.Errorf("bad wrapped key")
		}
	}
	return nil
}

// packOwner returns the set that wrote a pack: packs/<set>/<n>.pack.
func packOwner(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, PacksPrefix)
	if !ok {
		return "", false
	}
	set, name, ok := strings.Cut(rest, "/")
	if !ok || !ValidSetID(set) || !strings.HasSuffix(name, ".pack") || strings.Contains(name, "/") {
		return "", false
	}
	return set, true
}

// wrapped returns the wrapped data key of set id in x.
func (x *SetIndex) wrapped(id string) []byte {
	for _, k := range x.Keys {
		if k.Set == id {
			return k.Age
		}
	}
	return nil
}

// sameChunks checks that a decrypted manifest says what its signed header
// says. Both come from the signer; a difference is a bug or tampering by
// the signer itself, and either way the set is not to be trusted.
func (x *SetIndex) sameAs(m *manifest.Manifest) error {
	if m.ID != x.ID || m.Kind != x.Kind || m.Partial != x.Partial || !m.ConsistentAt.Equal(x.ConsistentAt) || !slices.Equal(m.Packs, x.Packs) {
		return errors.New("the manifest body does not match its header")
	}
	if !slices.Equal(schemaRefs(m), x.Schemas) {
		return errors.New("the manifest body's schema archives do not match its header")
	}
	if x.Version == 2 || m.Index != nil {
		// The tenants' chunks are in the index: the pages (sealed, under
		// the directory's checksum) for readers with keys, the locator for
		// readers without; verify compares the two.
		ix := x.Index
		if ix == nil || m.Index == nil || m.Index.Key != ix.Key || m.Index.Size != ix.Size ||
			m.Index.Pages != ix.Pages || m.Index.Directory != ix.Directory {
			return errors.New("the manifest body's tenant index does not match its header")
		}
		return nil
	}
	i, bad := 0, false
	eachChunk(m, func(_ string, _ bool, c manifest.Chunk) {
		if i >= len(x.Chunks) {
			bad = true
			return
		}
		h := x.Chunks[i]
		if h.Pack != c.Pack || h.Offset != c.Offset || h.Length != c.Length || h.SHA256 != c.SHA256 {
			bad = true
		}
		i++
	})
	if bad || i != len(x.Chunks) {
		return errors.New("the manifest body's chunks do not match its header")
	}
	return nil
}

func compressJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	je := json.NewEncoder(enc)
	je.SetEscapeHTML(false)
	if err := je.Encode(v); err != nil {
		enc.Close()
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decompressJSON(data []byte, limit int64, v any) error {
	dec, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(limit)))
	if err != nil {
		return err
	}
	defer dec.Close()
	raw, err := io.ReadAll(io.LimitReader(dec, limit))
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}
