package snapshot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

// Benchmarks of the export's client side: the splitter receiving an
// ordered COPY stream one row per Write (as pgconn hands CopyData
// messages over), cutting it per tenant, and the chunk writers digesting,
// compressing and packing each tenant's rows.
//
//	go test -run '^$' -bench Splitter -benchmem ./snapshot/

var benchWords = []string{"the", "issue", "customer", "reported", "that", "export", "fails", "when", "a", "project",
	"has", "more", "than", "one", "milestone", "please", "check", "logs", "attached", "thanks", "deploy", "staging",
	"regression", "since", "version", "update", "workaround", "is", "to", "restart", "worker", "queue", "timeout",
	"database", "migration", "rollback", "ticket", "priority", "high", "low", "done", "review", "merged", "branch"}

// exportStream returns the rows of an ordered export of a comments-like
// table: the tenant key first, tenants in order, sizes following a Zipf
// law (as bench/datagen's), about 16 MB in all.
func exportStream(tenants int) (rows [][]byte, total int64) {
	r := rand.New(rand.NewPCG(7, 11))
	weights := make([]float64, tenants)
	var sum float64
	for i := range weights {
		weights[i] = 1 / float64(i+1)
		sum += weights[i]
	}
	const nrows = 40000
	id := int64(1)
	for t := range tenants {
		key := fmt.Sprintf("t%04d", t+1)
		n := 2 + int(float64(nrows)*weights[r.IntN(tenants)]/sum)
		for range n {
			var b []byte
			b = append(b, key...)
			b = append(b, '\t')
			b = strconv.AppendInt(b, id, 10)
			id++
			b = append(b, '\t')
			b = strconv.AppendInt(b, int64(r.IntN(500000)), 10)
			b = append(b, '\t')
			for w := range 20 + r.IntN(120) {
				if w > 0 {
					b = append(b, ' ')
				}
				b = append(b, benchWords[r.IntN(len(benchWords))]...)
			}
			b = append(b, "\t2024-03-01 10:00:00+00\t\\N\n"...)
			rows = append(rows, b)
			total += int64(len(b))
		}
	}
	return rows, total
}

func benchRun(b *testing.B) (*run, *vault.SetWriter) {
	be, err := file.New(b.TempDir(), repo.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	v, err := vault.Open(context.Background(), be, vault.Options{Init: true})
	if err != nil {
		b.Fatal(err)
	}
	w, err := v.NewSetWriter(context.Background(), vault.NewSetID(time.Now()), vault.WriterOptions{TempDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	return &run{o: Options{Progress: &Progress{}}, prev: map[prevKey]vault.ChunkRef{}}, w
}

var benchTable = manifest.Table{Schema: "public", Name: "comments", Kind: manifest.TableScoped,
	Scope: &manifest.Scope{Column: "tenant_id"}, Key: []string{"id"}}

// split feeds rows through a splitter as one table's export.
func split(b *testing.B, r *run, p *vault.Packer, rows [][]byte) tableResult {
	s := &splitter{r: r, t: &benchTable, packer: p, prefixed: true}
	for _, row := range rows {
		if _, err := s.Write(row); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.close(); err != nil {
		b.Fatal(err)
	}
	return s.res
}

// BenchmarkSplitter is a full export of one table on the client: split,
// digest, compress (zstd level 1), pack.
func BenchmarkSplitter(b *testing.B) {
	for _, tenants := range []int{100, 1000} {
		rows, total := exportStream(tenants)
		b.Run(fmt.Sprintf("tenants=%d", tenants), func(b *testing.B) {
			r, w := benchRun(b)
			p, err := w.NewPacker()
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ReportAllocs()
			for b.Loop() {
				split(b, r, p, rows)
			}
			p.Close()
			w.Close()
		})
	}
}

// BenchmarkSplitterUnchanged is the same export when every tenant's chunk
// equals the previous set's: split and digest only, nothing compressed
// below the 1 MiB deferral.
func BenchmarkSplitterUnchanged(b *testing.B) {
	for _, tenants := range []int{100, 1000} {
		rows, total := exportStream(tenants)
		b.Run(fmt.Sprintf("tenants=%d", tenants), func(b *testing.B) {
			r, w := benchRun(b)
			p, err := w.NewPacker()
			if err != nil {
				b.Fatal(err)
			}
			for _, c := range split(b, r, p, rows).chunks {
				r.prev[prevKey{c.tenant, c.global, benchTable.Signature}] = c.ref
			}
			b.SetBytes(total)
			b.ReportAllocs()
			for b.Loop() {
				split(b, r, p, rows)
			}
			p.Close()
			w.Close()
		})
	}
}
