package vault_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

// The cost of encryption on the snapshot's and the restore's hot paths:
// the same chunks written and read back in a plaintext and an encrypted
// repository.
//
//	go test -run '^$' -bench 'Encryption' -benchmem ./vault/

func benchVault(b *testing.B, encrypted bool) (*vault.Vault, *vault.Keys) {
	b.Helper()
	be, err := file.New(b.TempDir(), repo.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	var writer, reader *vault.Keys
	if encrypted {
		id, sign, _, _, err := vault.NewKeyPair("x")
		if err != nil {
			b.Fatal(err)
		}
		reader, _ = vault.ParseKeyFile(strings.NewReader(id))
		writer, _ = vault.ParseKeyFile(strings.NewReader(sign))
	}
	v, err := vault.Open(context.Background(), be, vault.Options{Init: true, Keys: writer})
	if err != nil {
		b.Fatal(err)
	}
	return v, reader
}

func modeName(encrypted bool) string {
	if encrypted {
		return "encrypted"
	}
	return "plaintext"
}

// BenchmarkEncryptionChunkWriter: compress, digest, (seal) and pack one
// chunk per iteration.
func BenchmarkEncryptionChunkWriter(b *testing.B) {
	all := copyRows(40000, 1)
	for _, size := range []int{4 << 10, 256 << 10, 8 << 20} {
		rows, total := rowsOfSize(all, size)
		for _, enc := range []bool{false, true} {
			b.Run("chunk="+sizeName(size)+"/"+modeName(enc), func(b *testing.B) {
				v, _ := benchVault(b, enc)
				stored := benchWriteChunks(b, v, 0, rows, total)
				b.ReportMetric(float64(stored)/float64(b.N), "stored-B/chunk")
			})
		}
	}
}

// BenchmarkEncryptionOpenChunk: read a chunk back from a file repository
// through the checksum, (decryption,) decompression and content digest.
func BenchmarkEncryptionOpenChunk(b *testing.B) {
	all := copyRows(40000, 2)
	for _, size := range []int{4 << 10, 256 << 10, 8 << 20} {
		rows, total := rowsOfSize(all, size)
		for _, enc := range []bool{false, true} {
			b.Run("chunk="+sizeName(size)+"/"+modeName(enc), func(b *testing.B) {
				ctx := context.Background()
				v, reader := benchVault(b, enc)
				id := vault.NewSetID(time.Now())
				w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				p, _ := w.NewPacker()
				cw := p.StartChunk()
				for _, r := range rows {
					cw.Write(r)
				}
				ref, err := cw.Finish(nil)
				if err != nil {
					b.Fatal(err)
				}
				p.Close()
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				m := &manifest.Manifest{Version: manifest.Version, ID: id, Kind: manifest.KindManual, Packs: []string{ref.Pack},
					Tables: []manifest.Table{{Schema: "public", Name: "comments", Kind: manifest.TableGlobal, Signature: "s"}},
					Global: []manifest.Chunk{{Table: 0, Pack: 0, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256, Size: ref.Size, Digest: ref.Digest}}}
				if err := v.WriteManifest(ctx, m); err != nil {
					b.Fatal(err)
				}
				rv, err := vault.Open(ctx, v.Backend(), vault.Options{Keys: reader})
				if err != nil {
					b.Fatal(err)
				}
				m, err = rv.ReadManifest(ctx, id)
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, 64<<10)
				b.SetBytes(total)
				b.ReportAllocs()
				for b.Loop() {
					rc, err := rv.OpenChunk(ctx, m, m.Global[0])
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.CopyBuffer(io.Discard, onlyReader{rc}, buf); err != nil {
						b.Fatal(err)
					}
					rc.Close()
				}
			})
		}
	}
}

// BenchmarkEncryptionManifest: writing (and reading back) the manifest of
// a set of 2,000 tenants x 5 tables, plaintext and sealed; it reports the
// stored manifest's size per chunk.
func BenchmarkEncryptionManifest(b *testing.B) {
	for _, enc := range []bool{false, true} {
		b.Run(modeName(enc), func(b *testing.B) {
			ctx := context.Background()
			v, reader := benchVault(b, enc)
			tables := 5
			var size int64
			for b.Loop() {
				id := vault.NewSetID(time.Now())
				w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				p, _ := w.NewPacker()
				m := &manifest.Manifest{Version: manifest.Version, ID: id, Kind: manifest.KindManual,
					Source: manifest.Source{Host: "db:5432", Database: "saas"}, Tenancy: manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"}}
				for t := range tables {
					m.Tables = append(m.Tables, manifest.Table{Schema: "public", Name: fmt.Sprintf("table_%d", t), Kind: manifest.TableScoped, Signature: strings.Repeat("ab", 32)})
				}
				cw := p.StartChunk()
				cw.Write([]byte("1\trow\n"))
				ref, _ := cw.Finish(nil)
				p.Close()
				w.Close()
				m.Packs = []string{ref.Pack}
				for i := range 2000 {
					tn := manifest.Tenant{ID: fmt.Sprintf("tenant-%05d", i)}
					for t := range tables {
						// Random digests, as real ones are: they do not compress.
						tn.Chunks = append(tn.Chunks, manifest.Chunk{Table: t, Rows: 1, Size: ref.Size, Digest: randomHex(), Pack: 0, Offset: ref.Offset, Length: ref.Length, SHA256: randomHex()})
					}
					m.Tenants = append(m.Tenants, tn)
				}
				if err := v.WriteManifest(ctx, m); err != nil {
					b.Fatal(err)
				}
				info, err := v.Backend().Stat(ctx, vault.ManifestKey(id))
				if err != nil {
					b.Fatal(err)
				}
				size = info.Size
				rv, _ := vault.Open(ctx, v.Backend(), vault.Options{Keys: reader})
				if _, err := rv.ReadManifest(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size)/float64(2000*tables), "stored-B/chunk")
		})
	}
}

func randomHex() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}
