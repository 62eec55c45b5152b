package vault

// Fuzz tests of every decoder of repository data in this package: the
// repository config, sealed objects, sealed manifests (framing, signature
// and header), chunks (plaintext and sealed, through OpenChunk over a file
// backend), key files, change records and change segment indexes. `go test` runs the seeds;
// `go test -fuzz FuzzX ./vault/` explores.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
)

// fuzzKey is a fixed data key, so that seeds stay valid across runs.
var fuzzKey = bytes.Repeat([]byte{7}, dataKeySize)

// fuzzSigner is a fixed signing key.
var fuzzSigner = &SigningKey{priv: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))}

func isIntegrityOrInput(err error) bool {
	return errors.Is(err, tenantvault.ErrIntegrity) || errors.As(err, new(*tenantvault.InputError))
}

func FuzzDecodeConfig(f *testing.F) {
	now := time.Date(2026, 11, 28, 11, 1, 45, 123456789, time.UTC)
	plain := Config{Format: "tenantvault", Version: FormatPlain, ID: "0123456789abcdef", Created: now}
	enc := plain
	enc.Version, enc.Encryption = FormatEncrypted, &EncryptionConfig{Scheme: EncryptionScheme, Recipients: []string{"age1x"}, Signers: []string{"tvsign1y"}}
	f.Add(EncodeConfig(plain))
	f.Add(EncodeConfig(enc))
	f.Add([]byte(`{"format":"tenantvault","version":1,"id":"x","created":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"format":"tenantvault","version":99,"id":"x"}`))
	f.Add([]byte(`{"format":"tenantvault","version":2}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeConfig(data, "file:///fuzz")
		if err != nil {
			if !isIntegrityOrInput(err) {
				t.Fatalf("not an integrity or input error: %v", err)
			}
			return
		}
		if c.Format != "tenantvault" || c.Version < FormatPlain || c.Version > FormatVersion || (c.Version == FormatEncrypted) != c.Encrypted() {
			t.Fatalf("accepted an inconsistent config %+v", c)
		}
		// What is accepted encodes back to a config that decodes the same.
		again, err := DecodeConfig(EncodeConfig(c), "x")
		c.Check, again.Check = "", ""
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip: %+v -> %+v, %v", c, again, err)
		}
	})
}

func FuzzOpenSealed(f *testing.F) {
	for _, n := range []int{0, 1, 1000, segmentSize, segmentSize + 1} {
		s, _ := sealBytes(fuzzKey, bytes.Repeat([]byte{'x'}, n))
		f.Add(s)
	}
	f.Add([]byte{CodecSealed})
	f.Add([]byte{CodecZstd, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := openBytes(fuzzKey, data, 1<<20)
		if err != nil {
			if !errors.Is(err, errAuth) && !strings.Contains(err.Error(), "larger than") {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		// Accepted: it must be exactly what sealing that plaintext gives
		// in size (a sealed object has one valid length per plaintext).
		if int64(len(data)) != SealedSize(int64(len(out))) {
			t.Fatalf("accepted %d stored bytes for %d of plaintext", len(data), len(out))
		}
	})
}

func FuzzSealRoundTrip(f *testing.F) {
	f.Add([]byte{}, uint16(0))
	f.Add([]byte("tenant rows"), uint16(3))
	f.Fuzz(func(t *testing.T, plain []byte, cut uint16) {
		s, err := sealBytes(fuzzKey, plain)
		if err != nil {
			t.Fatal(err)
		}
		got, err := openBytes(fuzzKey, s, 1<<30)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("round trip: %v", err)
		}
		if c := int(cut) % len(s); c > 0 {
			if _, err := openBytes(fuzzKey, s[:c], 1<<30); !errors.Is(err, errAuth) {
				t.Fatalf("cut at %d of %d: %v", c, len(s), err)
			}
		}
	})
}

// sealedSeed is a valid sealed manifest of a small set.
func sealedSeed(t testing.TB) []byte {
	m := fuzzManifest()
	enc, err := manifest.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := sealBytes(fuzzKey, enc)
	x := indexFromManifest(m)
	x.Group, x.Keys = groupHash(m), []WrappedKey{{Set: m.ID, Age: []byte("wrapped")}}
	data, err := encodeSealed(x, body, fuzzSigner)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func fuzzManifest() *manifest.Manifest {
	id := "20261128T110145.123Z-1a2b3c4d"
	sum := strings.Repeat("ab", 32)
	return &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled,
		Tables:  []manifest.Table{{Schema: "public", Name: "t", Kind: manifest.TableScoped}},
		Packs:   []string{"packs/" + id + "/000001.pack"},
		Schemas: []manifest.SchemaDump{{Database: "db", Key: "schemas/" + sum + ".dump", Size: 10, SHA256: sum}},
		Tenants: []manifest.Tenant{{ID: "acme", Chunks: []manifest.Chunk{{Table: 0, Rows: 1, Size: 5, Digest: sum, Pack: 0, Offset: 0, Length: 20, SHA256: sum}}}},
	}
}

func FuzzDecodeSealedManifest(f *testing.F) {
	seed := sealedSeed(f)
	f.Add(seed)
	f.Add(seed[:len(seed)-1])
	f.Add([]byte(sealedMagic))
	f.Add(append([]byte(sealedMagic), make([]byte, 96)...))
	trust := func(pub ed25519.PublicKey) signerVerdict {
		if fuzzSigner.pub().Equal(pub) {
			return signerPinned
		}
		return signerConfig
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		x, body, err := decodeSealed(data, trust)
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) {
				t.Fatalf("not an integrity error: %v", err)
			}
			return
		}
		if err := x.validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
		_, _ = openBytes(fuzzKey, body, 1<<20)
	})
}

// FuzzSealedHeader signs arbitrary header bytes with the trusted key, so
// that the fuzzer reaches the decompression, JSON and validation of the
// header behind the signature.
func FuzzSealedHeader(f *testing.F) {
	x := indexFromManifest(fuzzManifest())
	x.Keys = []WrappedKey{{Set: x.ID, Age: []byte("w")}}
	hdr, _ := compressJSON(x)
	f.Add(hdr, []byte("body"))
	raw, _ := compressJSON(map[string]any{"version": 1, "id": x.ID, "chunks": []any{map[string]any{"p": 5}}})
	f.Add(raw, []byte{})
	f.Add([]byte("not zstd"), []byte{})
	f.Fuzz(func(t *testing.T, hdr, body []byte) {
		x, gotBody, err := decodeSealed(signFrames(sealedMagic, signatureContext, fuzzSigner, hdr, body), func(ed25519.PublicKey) signerVerdict { return signerPinned })
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) {
				t.Fatalf("not an integrity error: %v", err)
			}
			return
		}
		if !bytes.Equal(gotBody, body) || x.validate() != nil || !x.Authenticated() {
			t.Fatal("accepted header is inconsistent")
		}
		for _, c := range x.Chunks {
			_ = x.Packs[c.Pack] // validate keeps indexes in range
		}
	})
}

// fuzzChunkVault is a vault over a file backend in dir, plaintext or (with
// the fixed data key registered as the set's) encrypted.
func fuzzChunkVault(t testing.TB, dir string, encrypted bool) *Vault {
	b, err := file.New(dir, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	v := &Vault{b: b, cfg: Config{Format: "tenantvault", Version: FormatPlain}, keys: &Keys{}}
	if encrypted {
		v.cfg.Version, v.cfg.Encryption = FormatEncrypted, &EncryptionConfig{Scheme: EncryptionScheme}
		v.writing.Store(fuzzManifest().ID, &setKey{dk: fuzzKey})
	}
	return v
}

func chunkSeed(t testing.TB, content []byte, encrypted bool) []byte {
	enc, _ := zstd.NewWriter(nil)
	payload := append([]byte{CodecZstd}, enc.EncodeAll(content, nil)...)
	if !encrypted {
		return payload
	}
	s, err := sealBytes(fuzzKey, payload)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzOpenChunk stores arbitrary bytes as a pack in a file repository and
// reads them as a chunk through OpenChunk, with the manifest's checksum set
// to match the bytes (so that the fuzzer gets past it to the codec, the
// decryption and the decompression) and the content digest and size either
// given or, with exact, those of the expected content. It must never panic
// or hang, must report damage as an integrity error, and may only return
// content whose digest and size are the manifest's.
func FuzzOpenChunk(f *testing.F) {
	content := []byte("1\tacme\t{\"a\":1}\n2\tacme\t\\N\n")
	for _, enc := range []bool{false, true} {
		f.Add(chunkSeed(f, content, enc), enc, int64(len(content)), true)
		f.Add(chunkSeed(f, bytes.Repeat(content, 5000), enc), enc, int64(len(content))*5000, false)
		f.Add([]byte{CodecSealed}, enc, int64(0), true)
	}
	f.Add([]byte{CodecZstd, 0x28, 0xb5, 0x2f, 0xfd}, false, int64(1), false)
	f.Add([]byte{0x99}, false, int64(0), false)
	dirs := map[bool]string{false: f.TempDir(), true: f.TempDir()}
	vaults := map[bool]*Vault{false: fuzzChunkVault(f, dirs[false], false), true: fuzzChunkVault(f, dirs[true], true)}
	m := fuzzManifest()
	want := sha256.Sum256(content)
	f.Fuzz(func(t *testing.T, data []byte, encrypted bool, size int64, exact bool) {
		if len(data) == 0 {
			return
		}
		v := vaults[encrypted]
		path := filepath.Join(dirs[encrypted], filepath.FromSlash(m.Packs[0]))
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		c := manifest.Chunk{Table: 0, Pack: 0, Offset: 0, Length: int64(len(data)), SHA256: hex.EncodeToString(sum[:]),
			Size: size, Digest: strings.Repeat("0", 64)}
		if exact {
			c.Size, c.Digest = int64(len(content)), hex.EncodeToString(want[:])
		}
		rc, err := v.OpenChunk(context.Background(), m, c)
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) {
				t.Fatalf("OpenChunk: not an integrity error: %v", err)
			}
			return
		}
		defer rc.Close()
		got, err := io.ReadAll(io.LimitReader(rc, 64<<20))
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) {
				t.Fatalf("read: not an integrity error: %v", err)
			}
			return
		}
		d := sha256.Sum256(got)
		if int64(len(got)) != c.Size || hex.EncodeToString(d[:]) != c.Digest {
			t.Fatalf("returned %d bytes that are not the recorded content", len(got))
		}
	})
}

func FuzzParseKeyFile(f *testing.F) {
	id, sign, _, _, err := NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(id)
	f.Add(sign)
	f.Add("# only a comment\n")
	f.Add("AGE-SECRET-KEY-1QQQQ\n")
	f.Add("tvsign1aaaa\nage1bbbb\n")
	f.Fuzz(func(t *testing.T, text string) {
		k, err := ParseKeyFile(strings.NewReader(text))
		if err != nil {
			// Errors never quote a line of the file: it may hold a secret.
			for _, line := range strings.Split(text, "\n") {
				// (The messages name the key prefixes themselves.)
				static := "not a key this file may hold (age identities AGE-SECRET-KEY-1..., signing keys " + signingKeyPrefix + "..., signers " + signerPrefix + "..., recipients age1...)"
				if l := strings.TrimSpace(line); len(l) >= 16 && strings.Contains(err.Error(), l) && !strings.Contains(static, l) {
					t.Fatalf("error quotes line %q: %v", l, err)
				}
			}
			return
		}
		if k.IsZero() {
			t.Fatal("accepted a key file without keys")
		}
	})
}

// FuzzChangeReader decodes arbitrary bytes as change records (the change
// log's segment streams, after their checksum).
func FuzzChangeReader(f *testing.F) {
	c := &Change{LSN: 42, Seq: 1, Time: time.Unix(1700000000, 0), Rel: 16384, Op: OpUpdate,
		New: []Value{{Kind: ValueText, Data: []byte("acme")}, {Kind: ValueNull}},
		Old: []Value{{Kind: ValueText, Data: []byte("1")}}}
	f.Add(EncodeChange(nil, c))
	f.Add(EncodeChange(EncodeChange(nil, c), &Change{LSN: 43, Op: OpTruncate, Rels: []uint32{1, 2}}))
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		cr := NewChangeReader(bytes.NewReader(data))
		for range 10000 {
			if _, err := cr.Next(); err != nil {
				return
			}
		}
	})
}

// FuzzSegmentIndex feeds change segment indexes to both readers: the
// plaintext one (zstd JSON) and the sealed one, with the framing and the
// signature made valid so the header and the body behind them are explored.
func FuzzSegmentIndex(f *testing.F) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	v := &Vault{keys: &Keys{Identities: []age.Identity{id}, Signing: []*SigningKey{fuzzSigner}}}
	idx := SegmentIndex{Version: 1, Stream: "s", Epoch: "e", Start: 1, End: 2, Records: 1, Size: 10,
		Relations: []Relation{{OID: 1, Name: "t", Columns: []string{"a"}, Types: []string{"int"}}},
		Streams:   []SegmentStream{{Tenant: "acme", Length: 10, Records: 1, SHA256: strings.Repeat("0", 64)}}}
	raw, _ := compressJSON(&idx)
	f.Add(raw, []byte{}, []byte{})
	wrapped, _ := wrapKey(fuzzKey, []age.Recipient{id.Recipient()})
	seal := &segmentSeal{dk: fuzzKey, wrapped: wrapped, signer: fuzzSigner}
	sealed, err := seal.sealIndex(&idx, raw)
	if err != nil {
		f.Fatal(err)
	}
	_, hdr, body, err := openFrames(sealed, segmentMagic, segmentSignatureContext)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, hdr, body)
	f.Add([]byte("not zstd"), []byte("not zstd"), []byte{CodecSealed})
	f.Fuzz(func(t *testing.T, plain, hdr, body []byte) {
		var got SegmentIndex
		if err := decodeSegmentIndex("k", plain, &got); err != nil {
			var ie *tenantvault.InputError
			if !errors.Is(err, tenantvault.ErrIntegrity) && !errors.As(err, &ie) {
				t.Fatalf("plaintext: not an integrity error: %v", err)
			}
		}
		x, err := v.openSegmentIndex("k", signFrames(segmentMagic, segmentSignatureContext, fuzzSigner, hdr, body))
		if err != nil {
			var ie *tenantvault.InputError
			if !errors.Is(err, tenantvault.ErrIntegrity) && !errors.As(err, &ie) {
				t.Fatalf("sealed: not an integrity error: %v", err)
			}
			return
		}
		if !x.Opened() {
			t.Fatal("accepted with an identity but not opened")
		}
	})
}
