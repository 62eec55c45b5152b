package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// countingBackend counts the bytes read from each key.
type countingBackend struct {
	repo.Backend
	mu    sync.Mutex
	gets  int
	bytes map[string]int64
}

func (c *countingBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := c.Backend.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	c.mu.Lock()
	c.gets++
	c.bytes[key] += int64(len(data))
	c.mu.Unlock()
	return io.NopCloser(bytes.NewReader(data)), err
}

// bigSet is a whole set of n tenants with 3 chunks each (references only:
// the index does not read packs).
func bigSet(id string, n int) *manifest.Manifest {
	m := &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled,
		Tables: []manifest.Table{{Schema: "public", Name: "a", Kind: manifest.TableScoped}, {Schema: "public", Name: "b", Kind: manifest.TableScoped}, {Schema: "public", Name: "c", Kind: manifest.TableScoped}},
		Packs:  []string{"packs/" + id + "/000001.pack"},
		Stats:  manifest.Stats{Tables: 3},
	}
	h := strings.Repeat("ab", 32)
	for i := range n {
		t := manifest.Tenant{ID: fmt.Sprintf("tenant-%06d", i)}
		for table := range 3 {
			t.Chunks = append(t.Chunks, manifest.Chunk{Table: table, Rows: int64(i), Size: 100, Digest: h, Offset: int64(i*300 + table*100), Length: 100, SHA256: h})
		}
		t.Rows, t.Size, t.Stored = int64(3*i), 300, 300
		m.Tenants = append(m.Tenants, t)
	}
	m.Stats.Tenants = n
	return m
}

// TestTenantIndex: a set of many tenants is found tenant by tenant with
// the header, the directory and one page; every tenant reads back as
// written; what is damaged or missing is an integrity failure.
func TestTenantIndex(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	v := openWith(t, b, nil, true)
	id := vault.NewSetID(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	const n = 20000
	want := bigSet(id, n)
	if err := v.WriteManifest(ctx, want); err != nil {
		t.Fatal(err)
	}

	cb := &countingBackend{Backend: b, bytes: map[string]int64{}}
	rv := openWith(t, cb, nil, false)
	cb.gets = 0 // the repository config
	s, err := rv.OpenSet(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Indexed() || s.TenantCount() != n || len(s.Header().Tenants) != 0 || s.Header().Index.Pages < 10 {
		t.Fatalf("header: indexed %v, %d tenants, %d in the header, %+v", s.Indexed(), s.TenantCount(), len(s.Header().Tenants), s.Header().Index)
	}
	got, err := s.Tenant(ctx, "tenant-012345")
	if err != nil || got == nil || got.Rows != 3*12345 || len(got.Chunks) != 3 || got.Chunks[2].Offset != 12345*300+200 {
		t.Fatalf("tenant-012345: %+v, %v", got, err)
	}
	// Header, directory, one page: three GETs, a small fraction of the index.
	size := s.Header().Index.Size
	if cb.gets != 3 || cb.bytes[vault.IndexKey(id)] > size/5 {
		t.Fatalf("one tenant took %d GETs and %d of the index's %d bytes", cb.gets, cb.bytes[vault.IndexKey(id)], size)
	}
	for _, missing := range []string{"", "a", "tenant-0123450", "zzz"} {
		if got, err := s.Tenant(ctx, missing); err != nil || got != nil {
			t.Fatalf("tenant %q: %+v, %v", missing, got, err)
		}
	}
	i := 0
	err = s.Tenants(ctx, func(tn *manifest.Tenant) error {
		if tn.ID != want.Tenants[i].ID || tn.Rows != want.Tenants[i].Rows || len(tn.Chunks) != 3 {
			return fmt.Errorf("entry %d: %+v", i, tn)
		}
		i++
		return nil
	})
	if err != nil || i != n {
		t.Fatalf("iterated %d of %d: %v", i, n, err)
	}
	full, err := openWith(t, b, nil, false).ReadManifest(ctx, id)
	if err != nil || len(full.Tenants) != n || full.Tenant("tenant-019999") == nil {
		t.Fatalf("whole set: %v", err)
	}
	x, err := openWith(t, b, nil, false).ReadIndex(ctx, id)
	if err != nil || x.Stats.Chunks != 3*n && x.Stats.Chunks != 0 {
		t.Fatalf("index: %+v, %v", x, err)
	}

	// A flipped byte in a page, in the directory, a truncated or missing
	// index: refused as integrity failures, never a wrong answer.
	data, err := repo.ReadAll(ctx, b, vault.IndexKey(id))
	if err != nil {
		t.Fatal(err)
	}
	damage := func(what string, stored []byte, tenant string) {
		t.Helper()
		if stored == nil {
			b.Delete(ctx, vault.IndexKey(id))
		} else if err := b.Put(ctx, vault.IndexKey(id), bytes.NewReader(stored), int64(len(stored))); err != nil {
			t.Fatal(err)
		}
		_, err := openWith(t, b, nil, false).OpenSet(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := openWith(t, b, nil, false).OpenSet(ctx, id)
		if _, err := s.Tenant(ctx, tenant); !errors.Is(err, tenantvault.ErrIntegrity) {
			t.Errorf("%s: looking up %q gave %v, want an integrity error", what, tenant, err)
		}
	}
	flipped := func(at int64) []byte {
		d := bytes.Clone(data)
		d[at] ^= 0x10
		return d
	}
	dirAt := s.Header().Index.Directory.Offset
	damage("page", flipped(int64(len("tenantvault tenant index 1\n"))+5), "tenant-000000")
	damage("directory", flipped(dirAt+3), "tenant-000001")
	damage("truncated", data[:len(data)-1], "tenant-000001")
	damage("missing", nil, "tenant-000001")
}

// TestSetFormat1StillWritten: with SetFormat 1 a plaintext repository gets
// what older builds read; this build reads both side by side.
func TestSetFormat1StillWritten(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	openWith(t, b, nil, true)
	v1, err := vault.Open(ctx, b, vault.Options{SetFormat: 1})
	if err != nil {
		t.Fatal(err)
	}
	old := vault.NewSetID(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	if err := v1.WriteManifest(ctx, bigSet(old, 50)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, vault.IndexKey(old)); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("set format 1 wrote a tenant index: %v", err)
	}
	newer := vault.NewSetID(time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC))
	if err := openWith(t, b, nil, false).WriteManifest(ctx, bigSet(newer, 50)); err != nil {
		t.Fatal(err)
	}
	rv := openWith(t, b, nil, false)
	entries, err := rv.TenantHistory(ctx, []string{old, newer}, "tenant-000042")
	if err != nil || len(entries) != 2 || entries[0].Rows != 126 || entries[1].Rows != 126 {
		t.Fatalf("history over both formats: %+v, %v", entries, err)
	}
	for _, id := range []string{old, newer} {
		s, err := rv.OpenSet(ctx, id)
		if err != nil || s.Indexed() != (id == newer) || s.TenantCount() != 50 {
			t.Fatalf("set %s: %v", id, err)
		}
	}
	// IDs that JSON escapes are found as they are.
	odd := vault.NewSetID(time.Date(2026, 3, 1, 14, 0, 0, 0, time.UTC))
	m := bigSet(odd, 0)
	ids := []string{"", "\"q\"", "a&b<c>", "back\\slash", "tab\there", "Ünïcödé", "\u2028x"}
	sort.Strings(ids)
	for _, id := range ids {
		m.Tenants = append(m.Tenants, manifest.Tenant{ID: id})
	}
	if err := openWith(t, b, nil, false).WriteManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	os, err := openWith(t, b, nil, false).OpenSet(ctx, odd)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if got, err := os.Tenant(ctx, id); err != nil || got == nil || got.ID != id {
			t.Errorf("tenant %q: %+v, %v", id, got, err)
		}
	}
	if _, err := vault.Open(ctx, b, vault.Options{SetFormat: 3}); err == nil {
		t.Fatal("set format 3 accepted")
	}
}
