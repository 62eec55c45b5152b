package vault_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

// Benchmarks of the snapshot's and the restore's hot paths inside vault:
// compressing and digesting chunk content as the splitter hands it over
// (one COPY row per Write, as pgconn delivers it), and reading a chunk
// back through decompression and both checksums.
//
//	go test -run '^$' -bench . -benchmem ./vault/

// benchWords is a small vocabulary for realistic, compressible rows.
var benchWords = []string{"the", "issue", "customer", "reported", "that", "export", "fails", "when", "a", "project",
	"has", "more", "than", "one", "milestone", "please", "check", "logs", "attached", "thanks", "deploy", "staging",
	"regression", "since", "version", "update", "workaround", "is", "to", "restart", "worker", "queue", "timeout",
	"database", "migration", "rollback", "ticket", "priority", "high", "low", "done", "review", "merged", "branch"}

// copyRows returns COPY text rows shaped like the generated comments
// table: id, issue_id, author_id, body (a few sentences), two timestamps.
func copyRows(n int, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	rows := make([][]byte, n)
	for i := range rows {
		var b []byte
		b = strconv.AppendInt(b, int64(1000000+i), 10)
		b = append(b, '\t')
		b = strconv.AppendInt(b, int64(r.IntN(500000)), 10)
		b = append(b, '\t')
		b = strconv.AppendInt(b, int64(r.IntN(20000)), 10)
		b = append(b, '\t')
		words := 20 + r.IntN(120)
		for w := range words {
			if w > 0 {
				b = append(b, ' ')
			}
			b = append(b, benchWords[r.IntN(len(benchWords))]...)
			if r.IntN(12) == 0 {
				b = append(b, `.\n`...)
			}
		}
		t := time.Unix(1609459200+int64(r.IntN(126230400)), int64(r.IntN(1e6))*1000).UTC()
		b = append(b, '\t')
		b = t.AppendFormat(b, "2006-01-02 15:04:05.999999+00")
		b = append(b, "\t\\N\n"...)
		rows[i] = b
	}
	return rows
}

func openBenchVault(b *testing.B) *vault.Vault {
	b.Helper()
	be, err := file.New(b.TempDir(), repo.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	v, err := vault.Open(context.Background(), be, vault.Options{Init: true})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// rowsOfSize returns rows adding up to about size bytes, and their total.
func rowsOfSize(all [][]byte, size int) ([][]byte, int64) {
	var n int64
	for i, r := range all {
		if n >= int64(size) {
			return all[:i], n
		}
		n += int64(len(r))
	}
	return all, n
}

// BenchmarkChunkWriter measures compression, digesting and pack writing of
// one chunk per iteration, for chunk sizes from a small tenant's table
// (4 KiB) to a large one's (8 MiB), at zstd levels 1 and 2.
func BenchmarkChunkWriter(b *testing.B) {
	all := copyRows(40000, 1) // about 16 MB
	for _, level := range []int{1, 2} {
		for _, size := range []int{4 << 10, 256 << 10, 8 << 20} {
			rows, total := rowsOfSize(all, size)
			b.Run(fmt.Sprintf("level=%d/chunk=%s", level, sizeName(size)), func(b *testing.B) {
				stored := benchWriteChunks(b, openBenchVault(b), level, rows, total)
				b.ReportMetric(float64(total)*float64(b.N)/float64(stored), "ratio")
			})
		}
	}
}

// benchWriteChunks writes rows as one chunk per iteration into a new set
// of v and returns the bytes stored in all.
func benchWriteChunks(b *testing.B, v *vault.Vault, level int, rows [][]byte, total int64) (stored int64) {
	w, err := v.NewSetWriter(context.Background(), vault.NewSetID(time.Now()), vault.WriterOptions{TempDir: b.TempDir(), Level: level})
	if err != nil {
		b.Fatal(err)
	}
	p, err := w.NewPacker()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	b.ReportAllocs()
	for b.Loop() {
		cw := p.StartChunk()
		for _, r := range rows {
			if _, err := cw.Write(r); err != nil {
				b.Fatal(err)
			}
		}
		ref, err := cw.Finish(nil)
		if err != nil {
			b.Fatal(err)
		}
		stored += ref.Length
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return stored
}

// BenchmarkChunkWriterUnchanged measures a chunk equal to the previous
// set's: digested, not compressed (up to the 1 MiB deferral) nor stored.
func BenchmarkChunkWriterUnchanged(b *testing.B) {
	all := copyRows(40000, 1)
	for _, size := range []int{256 << 10, 8 << 20} {
		rows, total := rowsOfSize(all, size)
		b.Run("chunk="+sizeName(size), func(b *testing.B) {
			v := openBenchVault(b)
			w, err := v.NewSetWriter(context.Background(), vault.NewSetID(time.Now()), vault.WriterOptions{TempDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			p, err := w.NewPacker()
			if err != nil {
				b.Fatal(err)
			}
			cw := p.StartChunk()
			for _, r := range rows {
				cw.Write(r)
			}
			prev, err := cw.Finish(nil)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ReportAllocs()
			for b.Loop() {
				cw := p.StartChunk()
				for _, r := range rows {
					cw.Write(r)
				}
				ref, err := cw.Finish(&prev)
				if err != nil || !ref.Reused {
					b.Fatalf("not reused: %v", err)
				}
			}
			p.Close()
			w.Close()
		})
	}
}

// BenchmarkOpenChunk measures reading a chunk back from a file repository:
// read, stored-bytes checksum, decompression, content digest, in the
// 64 KiB reads that COPY FROM makes.
func BenchmarkOpenChunk(b *testing.B) {
	all := copyRows(40000, 2)
	for _, size := range []int{4 << 10, 256 << 10, 8 << 20} {
		rows, total := rowsOfSize(all, size)
		b.Run("chunk="+sizeName(size), func(b *testing.B) {
			ctx := context.Background()
			v := openBenchVault(b)
			id := vault.NewSetID(time.Now())
			w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			p, err := w.NewPacker()
			if err != nil {
				b.Fatal(err)
			}
			cw := p.StartChunk()
			for _, r := range rows {
				cw.Write(r)
			}
			ref, err := cw.Finish(nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Close(); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			m := &manifest.Manifest{ID: id, Packs: []string{ref.Pack}, Tables: []manifest.Table{{Schema: "public", Name: "comments"}}}
			c := manifest.Chunk{Table: 0, Pack: 0, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256, Size: ref.Size, Digest: ref.Digest}
			buf := make([]byte, 64<<10)
			b.SetBytes(total)
			b.ReportAllocs()
			for b.Loop() {
				rc, err := v.OpenChunk(ctx, m, c)
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

// onlyReader hides WriterTo so that io.CopyBuffer uses the buffer, as
// pgconn's CopyFrom does.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}
