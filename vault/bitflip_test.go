package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

// TestBitFlips damages every kind of stored object, one bit at a time, at
// many positions, in a plaintext and an encrypted repository, and reads it
// back the way every reader does. Each read must either fail with an
// integrity error (exit code 3) or, for the few bytes that cannot matter
// (a JSON key whose case Go ignores, a zstd window size larger than
// needed), succeed with exactly the original data. It must never panic,
// never fail otherwise, and never return different data.
func TestBitFlips(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		name := "plaintext"
		if encrypted {
			name = "encrypted"
		}
		t.Run(name, func(t *testing.T) { testBitFlips(t, encrypted) })
	}
}

type flipStats struct{ flips, failed, harmless int }

func (s flipStats) String() string {
	return fmt.Sprintf("%d flips: %d refused as integrity failures, %d harmless (same data)", s.flips, s.failed, s.harmless)
}

func testBitFlips(t *testing.T, encrypted bool) {
	ctx := context.Background()
	dir, b := newRepoDir(t)
	var reader, writer *vault.Keys
	if encrypted {
		ks := newKeySet(t)
		reader, writer = ks.reader, ks.writer
	}
	w := openWith(t, b, writer, true)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	content := map[string]string{
		"acme":  strings.Repeat("1\tacme row with some text\n", 200),
		"tiny":  "2\tx\n",
		"other": strings.Repeat("3\tanother tenant's rows, compressible\n", 3000),
	}
	set := writeTenantSet(t, w, tenantSet{at: at, tenants: content, global: "DE\tGermany\n", schema: strings.Repeat("PGDMP schema archive ", 50)})

	open := func() (*vault.Vault, error) {
		return vault.Open(ctx, b, vault.Options{Keys: reader})
	}
	good, err := open()
	if err != nil {
		t.Fatal(err)
	}
	wantCfg := good.Config()
	wantManifest, err := good.ReadManifest(ctx, set.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantSchema, err := good.GetSchema(ctx, wantManifest.Schemas[0])
	if err != nil {
		t.Fatal(err)
	}

	// flip damages one bit of the object at key, runs read, and repairs it.
	flip := func(t *testing.T, st *flipStats, key string, positions []int, read func() error) {
		t.Helper()
		path := filepath.Join(dir, filepath.FromSlash(key))
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(path, orig, 0o600)
		for i, pos := range positions {
			data := bytes.Clone(orig)
			bit := byte(1) << (i % 8)
			data[pos] ^= bit
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			st.flips++
			err := read()
			switch {
			case err == nil:
				st.harmless++
			case errors.Is(err, tenantvault.ErrIntegrity):
				st.failed++
			default:
				t.Fatalf("%s: bit %#02x at byte %d of %d: not an integrity error: %v", key, bit, pos, len(orig), err)
			}
		}
	}
	every := func(n, step int) []int {
		var out []int
		for i := 0; i < n; i += step {
			out = append(out, i)
		}
		return out
	}
	size := func(key string) int {
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(key)))
		if err != nil {
			t.Fatal(err)
		}
		return int(fi.Size())
	}

	t.Run("config", func(t *testing.T) {
		var st flipStats
		n := size(vault.ConfigKey)
		// Every bit of every byte.
		var pos []int
		for p := range n {
			for range 8 {
				pos = append(pos, p)
			}
		}
		flip(t, &st, vault.ConfigKey, pos, func() error {
			v, err := open()
			if err != nil {
				return err
			}
			got, want := v.Config(), wantCfg
			got.Check, want.Check = "", ""
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("config read back differs:\n got %+v\nwant %+v", got, want)
			}
			return nil
		})
		testenv.Report(t, "bit flips in the config: %s", st)
	})

	t.Run("manifest", func(t *testing.T) {
		var st flipStats
		key := vault.ManifestKey(set.ID)
		flip(t, &st, key, every(size(key), 1), func() error {
			v, err := open()
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			m, err := v.ReadManifest(ctx, set.ID)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(m, wantManifest) {
				t.Fatal("manifest read back differs")
			}
			return nil
		})
		// What a reader without keys checks: the index.
		flip(t, &st, key, every(size(key), 3), func() error {
			v, err := vault.Open(ctx, b, vault.Options{})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			_, err = v.ReadIndex(ctx, set.ID)
			return err
		})
		testenv.Report(t, "bit flips in the manifest: %s", st)
	})

	t.Run("tenant index", func(t *testing.T) {
		var st flipStats
		key := vault.IndexKey(set.ID)
		flip(t, &st, key, every(size(key), 1), func() error {
			v, err := open()
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			m, err := v.ReadManifest(ctx, set.ID)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(m, wantManifest) {
				t.Fatal("manifest read back differs")
			}
			if encrypted {
				// Readers with keys check the locator against the
				// pages (verify), so a flip there is caught too, and
				// --read-data every byte (the magic line included,
				// which no ranged read of a page covers).
				res, err := v.Verify(ctx, []string{set.ID}, true, nil)
				if err != nil {
					return err
				}
				if len(res.Problems) > 0 {
					return tenantvault.Integrityf("%s", res.Problems[0].Problem)
				}
			}
			return nil
		})
		if encrypted {
			// Without keys: the locator, and with --read-data every byte.
			flip(t, &st, key, every(size(key), 3), func() error {
				v, err := vault.Open(ctx, b, vault.Options{})
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				res, err := v.Verify(ctx, []string{set.ID}, true, nil)
				if err != nil {
					return err
				}
				if len(res.Problems) > 0 {
					return tenantvault.Integrityf("%s", res.Problems[0].Problem)
				}
				return nil
			})
		}
		if st.harmless != 0 && encrypted {
			t.Errorf("%d flips in an encrypted tenant index were harmless", st.harmless)
		}
		testenv.Report(t, "bit flips in the tenant index: %s", st)
	})

	t.Run("pack", func(t *testing.T) {
		var st flipStats
		for _, c := range append(append([]manifest.Chunk(nil), wantManifest.Global...), chunksOf(wantManifest)...) {
			key := wantManifest.Packs[c.Pack]
			want := readAll(t, good, wantManifest, c)
			step := max(1, int(c.Length)/97)
			var pos []int
			for p := c.Offset; p < c.Offset+c.Length; p += int64(step) {
				pos = append(pos, int(p))
			}
			pos = append(pos, int(c.Offset+c.Length-1))
			flip(t, &st, key, pos, func() error {
				v, err := open()
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				m, err := v.ReadManifest(ctx, set.ID)
				if err != nil {
					t.Fatalf("manifest: %v", err)
				}
				got, err := readChunkBytes(v, m, c)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, want) {
					t.Fatal("chunk read back differs")
				}
				return nil
			})
			// And verify without decrypting, by the stored checksum.
			flip(t, &st, key, pos[:len(pos)/4+1], func() error {
				v, _ := vault.Open(ctx, b, vault.Options{})
				x, err := v.ReadIndex(ctx, set.ID)
				if err != nil {
					t.Fatal(err)
				}
				var found *vault.IndexChunk
				if err := v.EachIndexChunk(ctx, x, func(ic vault.IndexChunk) error {
					if ic.Offset == c.Offset && x.Packs[ic.Pack] == key {
						found = &ic
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if found != nil {
					return v.VerifyStored(ctx, x, *found)
				}
				if !x.Encrypted() {
					// Set format 2: the tenants' chunks are in the tenant
					// index, not in the header.
					return v.VerifyStored(ctx, x, vault.IndexChunk{Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256})
				}
				t.Fatal("chunk not in the index")
				return nil
			})
		}
		if st.harmless != 0 {
			t.Errorf("a damaged chunk read back without error")
		}
		testenv.Report(t, "bit flips in packs: %s", st)
	})

	t.Run("schema archive", func(t *testing.T) {
		var st flipStats
		key := wantManifest.Schemas[0].Key
		flip(t, &st, key, every(size(key), 1), func() error {
			v, err := open()
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			m, err := v.ReadManifest(ctx, set.ID)
			if err != nil {
				t.Fatalf("manifest: %v", err)
			}
			got, err := v.GetSchema(ctx, m.Schemas[0])
			if err != nil {
				return err
			}
			if !bytes.Equal(got, wantSchema) {
				t.Fatal("schema archive read back differs")
			}
			return nil
		})
		if st.harmless != 0 {
			t.Errorf("a damaged schema archive read back without error")
		}
		testenv.Report(t, "bit flips in the schema archive: %s", st)
	})

	t.Run("change segment", func(t *testing.T) {
		var st flipStats
		wantIdx := writeTestSegment(t, w, 0x100, 0x200, "segment payload")
		ref := vault.SegmentRef{Stream: wantIdx.Stream, Start: wantIdx.Start, End: wantIdx.End}
		wantChanges, err := good.ReadChanges(ctx, mustSegmentIndex(t, good, ref), "acme")
		if err != nil {
			t.Fatal(err)
		}
		read := func() error {
			v, err := open()
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil {
				return err
			}
			got, err := v.ReadChanges(ctx, idx, "acme")
			if err != nil {
				return err
			}
			if idx.Until != wantIdx.Until || idx.End != wantIdx.End || !reflect.DeepEqual(got, wantChanges) {
				t.Fatal("change segment read back differs")
			}
			return nil
		}
		idxKey := strings.TrimSuffix(wantIdx.Key(), ".seg") + ".idx"
		flip(t, &st, idxKey, every(size(idxKey), 1), read)
		flip(t, &st, wantIdx.Key(), every(size(wantIdx.Key()), 1), read)
		testenv.Report(t, "bit flips in change segments: %s", st)
	})

	t.Run("missing and truncated objects", func(t *testing.T) {
		for _, key := range []string{vault.ManifestKey(set.ID), wantManifest.Packs[0], wantManifest.Schemas[0].Key} {
			path := filepath.Join(dir, filepath.FromSlash(key))
			orig, _ := os.ReadFile(path)
			for _, cut := range []int{0, 1, len(orig) / 2, len(orig) - 1} {
				os.WriteFile(path, orig[:cut], 0o600)
				v, err := open()
				if err != nil {
					t.Fatal(err)
				}
				m, err := v.ReadManifest(ctx, set.ID)
				if err == nil {
					_, err = v.GetSchema(ctx, m.Schemas[0])
					for _, c := range chunksOf(m) {
						if err == nil {
							_, err = readChunkBytes(v, m, c)
						}
					}
				}
				if !errors.Is(err, tenantvault.ErrIntegrity) {
					t.Fatalf("%s cut to %d of %d bytes: %v", key, cut, len(orig), err)
				}
			}
			os.WriteFile(path, orig, 0o600)
		}
	})
}

func mustSegmentIndex(t *testing.T, v *vault.Vault, ref vault.SegmentRef) *vault.SegmentIndex {
	t.Helper()
	idx, err := v.ReadSegmentIndex(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func chunksOf(m *manifest.Manifest) []manifest.Chunk {
	var out []manifest.Chunk
	for _, tn := range m.Tenants {
		out = append(out, tn.Chunks...)
	}
	return out
}

func readAll(t *testing.T, v *vault.Vault, m *manifest.Manifest, c manifest.Chunk) []byte {
	t.Helper()
	data, err := readChunkBytes(v, m, c)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readChunkBytes(v *vault.Vault, m *manifest.Manifest, c manifest.Chunk) ([]byte, error) {
	rc, err := v.OpenChunk(context.Background(), m, c)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(rc)
	return buf.Bytes(), err
}
