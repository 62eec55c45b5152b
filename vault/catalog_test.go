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

// catalogLevels lists the catalog objects as "<level><ext>".
func catalogLevels(t *testing.T, b repo.Backend) []string {
	t.Helper()
	var objs []string
	if err := b.List(context.Background(), vault.CatalogPrefix, func(o repo.ObjectInfo) error {
		objs = append(objs, strings.SplitN(strings.TrimPrefix(o.Key, vault.CatalogPrefix), "-", 2)[0]+filepath.Ext(o.Key))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(objs)
	return objs
}

// TestCatalogEncrypted: in an encrypted repository each set writes its own
// sealed level-0 catalog, and the snapshotting side, which holds no
// identity, folds them level by level; no stored byte shows a tenant ID;
// the identity holder's history through the catalogs equals the sets' with
// a few reads; a damaged catalog is not believed; erasing a tenant from
// the catalogs rewrites them without it where this side can sign, and
// deletes them where it cannot.
func TestCatalogEncrypted(t *testing.T) {
	defer vault.SetCatalogFanout(2)()
	ctx := context.Background()
	dir, b := newRepoDir(t)
	ks := newKeySet(t)
	w := openWith(t, b, ks.writer, true)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var sets []*manifest.Manifest
	tenant := func(i int) string { return fmt.Sprintf("t%d-%s", i, marker) }
	for k := range 5 {
		content := map[string]string{}
		for i := range 6 {
			if (i+k)%4 != 0 {
				content[tenant(i)] = strings.Repeat(fmt.Sprintf("%d\trow %d\n", k/2, i), 1+i)
			}
		}
		sets = append(sets, writeTenantSet(t, w, tenantSet{at: start.Add(time.Duration(k) * time.Hour), tenants: content}))
		if err := w.UpdateCatalog(ctx, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Five one-set catalogs with a fanout of 2: one of level 2 (four
	// sets), the fifth set's own.
	if got, want := catalogLevels(t, b), []string{"0.tidx", "0.zst", "2.tidx", "2.zst"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("catalog objects %v, want %v", got, want)
	}
	grepRepo(t, dir, marker) // no stored byte shows a tenant ID
	// want is the history the sets hold, but for the sets skip names.
	want := func(tenant string, skip func(set int) bool) []histRow {
		var out []histRow
		for k, m := range sets {
			if e := m.Tenant(tenant); e != nil && (skip == nil || !skip(k)) {
				out = append(out, histRow{m.ID, e.Rows, e.Size, e.Stored, len(e.Chunks)})
			}
		}
		return out
	}
	check := func(what string, keys *vault.Keys, i int, skip func(int) bool) {
		t.Helper()
		if got, w := history(t, openWith(t, b, keys, false), tenant(i)), want(tenant(i), skip); !reflect.DeepEqual(got, w) {
			t.Fatalf("%s, history of %q:\n got %v\nwant %v", what, tenant(i), got, w)
		}
	}
	cb := &countingBackend{Backend: b, bytes: map[string]int64{}}
	rv := openWith(t, cb, ks.reader, false)
	for i := range 7 {
		cb.gets = 0
		if got, w := history(t, rv, tenant(i)), want(tenant(i), nil); !reflect.DeepEqual(got, w) {
			t.Fatalf("history of %q:\n got %v\nwant %v", tenant(i), got, w)
		}
		// Two catalogs: header, directory and page each; set by set takes
		// 15 and a decryption of each set's header.
		if cb.gets > 6 {
			t.Errorf("history of %q took %d reads", tenant(i), cb.gets)
		}
	}

	// Erase t1 with the identity file, which holds the signing key: the
	// catalogs stay, and no longer name it.
	if err := openWith(t, b, ks.reader, false).EraseFromCatalogs(ctx, tenant(1), ""); err != nil {
		t.Fatal(err)
	}
	if got, want := catalogLevels(t, b), []string{"0.tidx", "0.zst", "2.tidx", "2.zst"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after erasing, catalog objects %v, want %v", got, want)
	}
	all := func(int) bool { return true }
	for i := range 7 {
		skip := func(int) bool { return false }
		if i == 1 {
			skip = all
		}
		check("after erasing t1", ks.reader, i, skip)
	}
	// The snapshotting side still folds the rewritten catalogs.
	sets = append(sets, writeTenantSet(t, w, tenantSet{at: start.Add(9 * time.Hour), tenants: map[string]string{tenant(2): "9\tlate\n"}}))
	if err := w.UpdateCatalog(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if got, want := catalogLevels(t, b), []string{"1.tidx", "1.zst", "2.tidx", "2.zst"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after a sixth set, catalog objects %v, want %v", got, want)
	}
	check("after a sixth set", ks.reader, 2, nil)

	// A side that trusts the signer but cannot sign deletes the catalogs
	// that name the tenant: t0 is only in sets 1 to 3 (the level-2
	// catalog); t1's sets 0 to 2 are then read one by one, and hold it
	// (only its catalog entries were erased here, not its data).
	var idOnly strings.Builder
	for _, l := range strings.Split(ks.identityText, "\n") {
		if !strings.HasPrefix(l, "TENANTVAULT-SIGNING-KEY-") {
			idOnly.WriteString(l + "\n")
		}
	}
	idOnly.WriteString(ks.signer + "\n")
	noSign, err := vault.ParseKeyFile(strings.NewReader(idOnly.String()))
	if err != nil || len(noSign.Signing) != 0 {
		t.Fatalf("identity without a signing key: %v", err)
	}
	if err := openWith(t, b, noSign, false).EraseFromCatalogs(ctx, tenant(0), ""); err != nil {
		t.Fatal(err)
	}
	if got, want := catalogLevels(t, b), []string{"1.tidx", "1.zst"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after erasing without a signing key, catalog objects %v, want %v", got, want)
	}
	check("after erasing t0", noSign, 0, nil)
	check("after erasing t0", noSign, 1, func(k int) bool { return k > 3 })

	// Damage the catalog's header: the history is the sets' own.
	matches, _ := filepath.Glob(filepath.Join(dir, "catalog", "*.zst"))
	for _, p := range matches {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0x01
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{1, 2, 3} {
		check("damaged catalog", ks.reader, i, nil)
	}
}

// TestGCCollectsCatalogsOfPurgedSets: once every set a catalog covers is
// purged, the purge's garbage collection deletes the catalog (header and
// index); a catalog that still covers a live set stays, and so does one
// it cannot read.
func TestGCCollectsCatalogsOfPurgedSets(t *testing.T) {
	defer vault.SetCatalogFanout(4)()
	ctx := context.Background()
	dir, b := newRepoDir(t)
	v := openWith(t, b, nil, true)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for k := range 8 {
		m := catalogSet(vault.NewSetID(start.Add(time.Duration(k)*time.Hour)), k)
		ids = append(ids, m.ID)
		if err := v.WriteManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := v.UpdateCatalog(ctx, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "catalog", "0-"+ids[0]+"-0123456789abcdef.json.zst"), []byte("not a catalog"), 0o644); err != nil {
		t.Fatal(err)
	}
	catalogs := func() []string {
		out := keys(t, b, vault.CatalogPrefix)
		sort.Strings(out)
		return out
	}
	before := catalogs()
	if len(before) != 5 {
		t.Fatalf("catalog objects %v, want two catalogs of 4 sets and a damaged one", before)
	}
	purge := func(sets ...string) []string {
		t.Helper()
		for _, id := range sets {
			if _, err := v.MarkSet(ctx, id, "test", "test", 0); err != nil {
				t.Fatal(err)
			}
		}
		res, err := v.Purge(ctx, vault.PurgeOptions{GC: vault.GCOptions{MinAge: -1}})
		if err != nil || len(res.Purged) != len(sets) {
			t.Fatalf("purge: %+v, %v", res, err)
		}
		var out []string
		for _, g := range res.GC.Collected {
			if strings.HasPrefix(g.Key, vault.CatalogPrefix) {
				out = append(out, g.Key)
			}
		}
		sort.Strings(out)
		return out
	}
	// Two of the second catalog's sets: it still covers two live ones.
	if got := purge(ids[4], ids[5]); len(got) != 0 {
		t.Fatalf("collected %v, a catalog of live sets", got)
	}
	// Every set of the first catalog: it goes, the damaged one stays.
	got := purge(ids[:4]...)
	var first []string
	for _, k := range before {
		if strings.Contains(k, ids[0]) && !strings.Contains(k, "0123456789abcdef") {
			first = append(first, k)
		}
	}
	if len(first) != 2 || !reflect.DeepEqual(got, first) {
		t.Fatalf("collected %v, want the first catalog %v", got, first)
	}
	if left := catalogs(); len(left) != 3 {
		t.Fatalf("catalog objects left: %v", left)
	}
	if h := history(t, v, "t001"); len(h) != 2 || h[0].set != ids[6] {
		t.Fatalf("history after the purges: %+v", h)
	}
}
