package vault_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// catalogSet is set k of the catalog test: tenants come and go, their rows
// change every third set, and the IDs include ones JSON escapes and "".
func catalogSet(id string, k int) *manifest.Manifest {
	m := bigSet(id, 0)
	ids := []string{"", "a\"b", "t\\x", "Ünï"}
	for i := range 30 {
		if (i+k)%5 != 0 {
			ids = append(ids, fmt.Sprintf("t%03d", i))
		}
	}
	sort.Strings(ids)
	h := strings.Repeat("cd", 32)
	for n, tid := range ids {
		t := manifest.Tenant{ID: tid, Rows: int64(n * (k / 3)), Size: int64(n), Stored: int64(k / 3)}
		for table := range 1 + n%3 {
			t.Chunks = append(t.Chunks, manifest.Chunk{Table: table, Rows: 1, Size: 1, Digest: h, Offset: int64(n*10 + table), Length: 1, SHA256: h})
		}
		m.Tenants = append(m.Tenants, t)
	}
	m.Stats.Tenants = len(m.Tenants)
	return m
}

type histRow struct {
	set                string
	rows, size, stored int64
	tables             int
}

func history(t *testing.T, v *vault.Vault, tenant string) []histRow {
	t.Helper()
	ctx := context.Background()
	ids, err := v.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.TenantHistory(ctx, ids, tenant)
	if err != nil {
		t.Fatal(err)
	}
	var out []histRow
	for _, e := range got {
		out = append(out, histRow{e.Set.ID, e.Rows, e.Size, e.Stored, e.Tables})
	}
	return out
}

// TestCatalog: sets are folded into catalogs as they are written, level
// by level; list --tenant's history and list's headers read through them
// equal what the sets say, with a few reads; a pruned set drops out; a
// damaged catalog is skipped (its sets are read one by one), never
// believed.
func TestCatalog(t *testing.T) {
	defer vault.SetCatalogFanout(4)()
	ctx := context.Background()
	dir, b := newRepoDir(t)
	openWith(t, b, nil, true)
	v1, err := vault.Open(ctx, b, vault.Options{SetFormat: 1})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var sets []*manifest.Manifest
	for k := range 70 {
		m := catalogSet(vault.NewSetID(start.Add(time.Duration(k)*time.Hour)), k)
		sets = append(sets, m)
		w := openWith(t, b, nil, false)
		if k < 6 {
			w = v1 // older sets in set format 1
		}
		if err := w.WriteManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := w.UpdateCatalog(ctx, ""); err != nil {
			t.Fatal(err)
		}
	}
	// 70 sets with a fanout of 4: one level-2 catalog (64 sets), one
	// level-0 (4), two sets not yet covered; everything merged was deleted.
	var objs []string
	if err := b.List(ctx, vault.CatalogPrefix, func(o repo.ObjectInfo) error {
		objs = append(objs, strings.SplitN(strings.TrimPrefix(o.Key, vault.CatalogPrefix), "-", 2)[0]+filepath.Ext(o.Key))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(objs)
	if want := []string{"0.tidx", "0.zst", "2.tidx", "2.zst"}; !reflect.DeepEqual(objs, want) {
		t.Fatalf("catalog objects %v, want %v", objs, want)
	}

	want := func(tenant string, skip map[string]bool) []histRow {
		var out []histRow
		for _, m := range sets {
			if skip[m.ID] {
				continue
			}
			if e := m.Tenant(tenant); e != nil {
				out = append(out, histRow{m.ID, e.Rows, e.Size, e.Stored, len(e.Chunks)})
			}
		}
		return out
	}
	tenants := []string{"", "a\"b", "t\\x", "Ünï", "t000", "t004", "t029", "nobody"}
	cb := &countingBackend{Backend: b, bytes: map[string]int64{}}
	rv := openWith(t, cb, nil, false)
	for _, tenant := range tenants {
		cb.gets = 0
		if got, w := history(t, rv, tenant), want(tenant, nil); !reflect.DeepEqual(got, w) {
			t.Fatalf("history of %q:\n got %v\nwant %v", tenant, got, w)
		}
		// Two catalog headers, a directory and a page each, and the two
		// uncovered sets' header, directory and page: at most 12 reads,
		// where set by set takes 210.
		if cb.gets > 12 {
			t.Errorf("history of %q took %d reads", tenant, cb.gets)
		}
	}
	ids, err := rv.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, err := openWith(t, b, nil, false).SetHeaders(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hdrs {
		m := sets[i]
		if h.ID != m.ID || h.Kind != m.Kind || !h.ConsistentAt.Equal(m.ConsistentAt) || h.Stats != m.Stats {
			t.Fatalf("header %d: %+v, want %+v", i, h, m)
		}
	}

	// Prune two sets (one under the level-2 catalog): they drop out.
	gone := map[string]bool{sets[10].ID: true, sets[68].ID: true}
	for id := range gone {
		if err := b.Delete(ctx, vault.ManifestKey(id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range tenants {
		if got, w := history(t, openWith(t, b, nil, false), tenant), want(tenant, gone); !reflect.DeepEqual(got, w) {
			t.Fatalf("after prune, history of %q:\n got %v\nwant %v", tenant, got, w)
		}
	}

	// Damage every catalog page: the history is still the sets'.
	matches, _ := filepath.Glob(filepath.Join(dir, "catalog", "*.tidx"))
	for _, p := range matches {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[40] ^= 0xff
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range tenants {
		if got, w := history(t, openWith(t, b, nil, false), tenant), want(tenant, gone); !reflect.DeepEqual(got, w) {
			t.Fatalf("damaged catalog, history of %q:\n got %v\nwant %v", tenant, got, w)
		}
	}
}

// TestDropCatalogs: dropping for a set deletes the catalogs that cover it
// and any catalog object that cannot be read, and keeps the others.
func TestDropCatalogs(t *testing.T) {
	defer vault.SetCatalogFanout(2)()
	ctx := context.Background()
	dir, b := newRepoDir(t)
	v := openWith(t, b, nil, true)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for k := range 3 {
		m := catalogSet(vault.NewSetID(start.Add(time.Duration(k)*time.Hour)), k)
		ids = append(ids, m.ID)
		if err := v.WriteManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.UpdateCatalog(ctx, ""); err != nil {
		t.Fatal(err)
	}
	// A stray unreadable object.
	if err := os.WriteFile(filepath.Join(dir, "catalog", "0-x.json.zst"), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		n := 0
		b.List(ctx, vault.CatalogPrefix, func(repo.ObjectInfo) error { n++; return nil })
		return n
	}
	if n := count(); n != 3 {
		t.Fatalf("%d catalog objects, want 3", n)
	}
	if err := v.DropCatalogs(ctx, []string{ids[2]}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after dropping for an uncovered set: %d catalog objects, want 2", n)
	}
	if err := v.DropCatalogs(ctx, []string{ids[1]}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("after dropping for a covered set: %d catalog objects, want 0", n)
	}
}
