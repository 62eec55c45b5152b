package vault_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/vault"
)

// opsBackend counts requests by kind.
type opsBackend struct {
	repo.Backend
	puts, gets, stats, lists atomic.Int64
	keyPuts, keyGets         atomic.Int64
}

func (o *opsBackend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	o.puts.Add(1)
	if strings.HasPrefix(key, vault.TenantKeysPrefix) {
		o.keyPuts.Add(1)
	}
	return o.Backend.Put(ctx, key, r, size)
}

func (o *opsBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	o.gets.Add(1)
	if strings.HasPrefix(key, vault.TenantKeysPrefix) {
		o.keyGets.Add(1)
	}
	return o.Backend.Get(ctx, key, offset, length)
}

func (o *opsBackend) Stat(ctx context.Context, key string) (repo.ObjectInfo, error) {
	o.stats.Add(1)
	return o.Backend.Stat(ctx, key)
}

func (o *opsBackend) List(ctx context.Context, prefix string, fn func(repo.ObjectInfo) error) error {
	o.lists.Add(1)
	return o.Backend.List(ctx, prefix, fn)
}

func (o *opsBackend) reset() {
	for _, c := range []*atomic.Int64{&o.puts, &o.gets, &o.stats, &o.lists, &o.keyPuts, &o.keyGets} {
		c.Store(0)
	}
}

func (o *opsBackend) String() string {
	return fmt.Sprintf("PUT %d (tenant keys %d), GET %d (tenant keys %d), STAT %d, LIST %d",
		o.puts.Load(), o.keyPuts.Load(), o.gets.Load(), o.keyGets.Load(), o.stats.Load(), o.lists.Load())
}

// writeKeyedSet writes a set of tenants x tables chunks of about 1.5 KiB
// of rows each into set format 2, with the tenants' own keys or the set's.
func writeKeyedSet(t testing.TB, v *vault.Vault, at time.Time, tenants, tables int, own bool, reuse *vault.ReuseIndex, change string) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	id := vault.NewSetID(at)
	w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := w.NewPacker()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled,
		Source:    manifest.Source{Name: "main", Host: "h:5432", Database: "db", SystemID: "42"},
		Tenancy:   manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"},
		StartedAt: at, ConsistentAt: at, FinishedAt: at,
	}
	for i := range tables {
		m.Tables = append(m.Tables, manifest.Table{Schema: "public", Name: fmt.Sprintf("t%d", i), Kind: manifest.TableScoped, Signature: fmt.Sprintf("sig%d", i)})
	}
	iw, err := v.NewIndexWriter(id, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer iw.Close()
	packs := map[string]int{}
	for n := range tenants {
		tenant := fmt.Sprintf("tenant-%06d", n)
		tn := manifest.Tenant{ID: tenant}
		for ti := range tables {
			var cw *vault.ChunkWriter
			if own {
				if cw, err = p.StartTenantChunk(ctx, tenant); err != nil {
					t.Fatal(err)
				}
			} else {
				cw = p.StartChunk()
			}
			var sb strings.Builder
			for r := range 20 {
				fmt.Fprintf(&sb, "%d\t%s row %d of table %d with some text %s\n", r, tenant, r, ti, change)
			}
			cw.Write([]byte(sb.String()))
			ref, err := cw.Finish(reuse.Lookup(tenant, false, m.Tables[ti].Signature))
			if err != nil {
				t.Fatal(err)
			}
			pi, ok := packs[ref.Pack]
			if !ok {
				pi = len(m.Packs)
				packs[ref.Pack] = pi
				m.Packs = append(m.Packs, ref.Pack)
			}
			c := manifest.Chunk{Table: ti, Rows: 20, Size: ref.Size, Digest: ref.Digest, Pack: pi, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256, Reused: ref.Reused}
			tn.Key = ref.Key
			tn.Chunks = append(tn.Chunks, c)
			m.Stats.Chunks++
			m.Stats.Stored += c.Length
			if c.Reused {
				m.Stats.ReusedChunks++
				m.Stats.Reused += c.Length
			} else {
				m.Stats.Written += c.Length
			}
		}
		if err := iw.Add(&tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	m.Stats.Tables = tables
	if err := v.CommitSet(ctx, m, iw); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMeasureTenantKeys compares per-tenant keys with the set's data key
// at 1,000 tenants x 5 tables (TENANTVAULT_MEASURE=1; on MinIO too when
// TENANTVAULT_TEST_S3_ENDPOINT is set): time, bytes and requests of a
// first set, of a second set that reuses every chunk, and of reading one
// tenant.
func TestMeasureTenantKeys(t *testing.T) {
	if os.Getenv("TENANTVAULT_MEASURE") != "1" {
		t.Skip("a measurement: TENANTVAULT_MEASURE=1")
	}
	const tenants, tables = 1000, 5
	kinds := []string{"file"}
	if os.Getenv("TENANTVAULT_TEST_S3_ENDPOINT") != "" {
		kinds = append(kinds, "s3")
	}
	for _, kind := range kinds {
		for _, own := range []bool{false, true} {
			name := kind + map[bool]string{true: " tenant keys", false: " set key"}[own]
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				var b repo.Backend
				if kind == "file" {
					_, b = newRepoDir(t)
				} else {
					var err error
					if b, err = repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{Create: true}); err != nil {
						t.Fatal(err)
					}
					defer b.Close()
				}
				ob := &opsBackend{Backend: b}
				ks := newKeySet(t)
				w, err := vault.Open(ctx, ob, vault.Options{Init: true, Keys: ks.writer})
				if err != nil {
					t.Fatal(err)
				}
				at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
				ob.reset()
				start := time.Now()
				m1 := writeKeyedSet(t, w, at, tenants, tables, own, nil, "")
				d1 := time.Since(start)
				t.Logf("%s, first set: %.2f s, %d bytes stored, %s", name, d1.Seconds(), m1.Stats.Stored, ob)

				w2, _ := vault.Open(ctx, ob, vault.Options{Keys: ks.writer})
				ob.reset()
				start = time.Now()
				ix, err := w2.PreviousChunks(ctx, &manifest.Manifest{Source: m1.Source, Tenancy: m1.Tenancy})
				if err != nil || ix.Set != m1.ID {
					t.Fatalf("previous: %v", err)
				}
				m2 := writeKeyedSet(t, w2, at.Add(time.Hour), tenants, tables, own, ix, "")
				d2 := time.Since(start)
				if m2.Stats.ReusedChunks != tenants*tables {
					t.Fatalf("reused %d chunks", m2.Stats.ReusedChunks)
				}
				t.Logf("%s, second set (all reused): %.2f s, %d bytes written, %s", name, d2.Seconds(), m2.Stats.Written, ob)

				r, _ := vault.Open(ctx, ob, vault.Options{Keys: ks.reader})
				ob.reset()
				start = time.Now()
				s, err := r.OpenSet(ctx, m2.ID)
				if err != nil {
					t.Fatal(err)
				}
				tn, err := s.Tenant(ctx, "tenant-000500")
				if err != nil || tn == nil {
					t.Fatal(err)
				}
				for _, c := range tn.Chunks {
					if _, err := readChunk(t, r, s.Header(), c); err != nil {
						t.Fatal(err)
					}
				}
				t.Logf("%s, read one tenant (%d chunks): %.3f s, %s", name, len(tn.Chunks), time.Since(start).Seconds(), ob)
				var keyObjects, keyBytes int64
				b.List(ctx, vault.TenantKeysPrefix, func(o repo.ObjectInfo) error { keyObjects++; keyBytes += o.Size; return nil })
				t.Logf("%s: %d tenant key objects, %d bytes", name, keyObjects, keyBytes)
			})
		}
	}
}

// TestMeasureEncryptedCatalog measures list --tenant's reads over 1,000
// encrypted sets of 50 tenants (TENANTVAULT_MEASURE=1): through the sealed
// catalogs, and set by set as before them, side by side in one run.
func TestMeasureEncryptedCatalog(t *testing.T) {
	if os.Getenv("TENANTVAULT_MEASURE") != "1" {
		t.Skip("a measurement: TENANTVAULT_MEASURE=1")
	}
	const sets, tenants = 1000, 50
	ctx := context.Background()
	_, b := newRepoDir(t)
	ks := newKeySet(t)
	w, err := vault.Open(ctx, b, vault.Options{Init: true, Keys: ks.writer})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	start := time.Now()
	var ix *vault.ReuseIndex
	for k := range sets {
		m := writeKeyedSet(t, w, at.Add(time.Duration(k)*time.Hour), tenants, 1, true, ix, "")
		if err := w.UpdateCatalog(ctx, ""); err != nil {
			t.Fatal(err)
		}
		if ix, err = w.PreviousChunks(ctx, &manifest.Manifest{Source: m.Source, Tenancy: m.Tenancy}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d sets written in %s", sets, time.Since(start).Round(time.Second))
	ob := &opsBackend{Backend: b}
	for _, how := range []string{"catalog", "set by set"} {
		r, _ := vault.Open(ctx, ob, vault.Options{Keys: ks.reader})
		ids, err := r.ListSets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ob.reset()
		start := time.Now()
		var hist []vault.TenantInSet
		if how == "catalog" {
			hist, err = r.TenantHistory(ctx, ids, "tenant-000025")
		} else {
			hist, err = r.TenantHistoryFromSets(ctx, ids, "tenant-000025")
		}
		if err != nil || len(hist) != sets {
			t.Fatalf("%s: %d sets, %v", how, len(hist), err)
		}
		t.Logf("list --tenant over %d encrypted sets, %s: %.2f s, %s", sets, how, time.Since(start).Seconds(), ob)
	}
}
