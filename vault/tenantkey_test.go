package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// TestTenantKeys: one key object per tenant, found again by the next set
// (which reuses every chunk), never two for one tenant when table workers
// meet it at once; a name the writer did not make is ignored; destroying a
// tenant's keys leaves exactly that tenant unreadable, in every set, and
// verify --read-data passes saying what it could not prove.
func TestTenantKeys(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	ks := newKeySet(t)
	w := openWith(t, b, ks.writer, true)
	// Junk under the prefix: a name of the right form made by someone else.
	junk := vault.TenantKeysPrefix + strings.Repeat("a", 32) + "-" + strings.Repeat("b", 32) + "-" + strings.Repeat("c", 32) + ".key"
	if err := b.Put(ctx, junk, bytes.NewReader([]byte("junk")), 4); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const tenants, tables = 40, 3
	m1 := writeKeyedSet(t, w, at, tenants, tables, true, nil, "")
	count := func() int {
		n := 0
		b.List(ctx, vault.TenantKeysPrefix, func(repo.ObjectInfo) error { n++; return nil })
		return n - 1 // the junk
	}
	if n := count(); n != tenants {
		t.Fatalf("%d key objects, want %d", n, tenants)
	}
	w2 := openWith(t, b, ks.writer, false)
	ix, err := w2.PreviousChunks(ctx, &manifest.Manifest{Source: m1.Source, Tenancy: m1.Tenancy})
	if err != nil {
		t.Fatal(err)
	}
	m2 := writeKeyedSet(t, w2, at.Add(time.Hour), tenants, tables, true, ix, "")
	if m2.Stats.ReusedChunks != tenants*tables || count() != tenants {
		t.Fatalf("second set reused %d chunks, %d key objects", m2.Stats.ReusedChunks, count())
	}

	// Workers meeting one new tenant at once make one key.
	w3 := openWith(t, b, ks.writer, false)
	sw, err := w3.NewSetWriter(ctx, vault.NewSetID(at.Add(2*time.Hour)), vault.WriterOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	names := make([]string, 8)
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := sw.NewPacker()
			if err != nil {
				t.Error(err)
				return
			}
			cw, err := p.StartTenantChunk(ctx, "brand-new")
			if err != nil {
				t.Error(err)
				return
			}
			cw.Write([]byte("1\tx\n"))
			ref, err := cw.Finish(nil)
			if err != nil {
				t.Error(err)
			}
			names[i] = ref.Key
			p.Close()
		}()
	}
	wg.Wait()
	sw.Abort()
	for _, n := range names {
		if n != names[0] || !vault.ValidTenantKeyName(n) {
			t.Fatalf("keys %v", names)
		}
	}

	reader := openWith(t, b, ks.reader, false)
	victim := "tenant-000007"
	keys, err := reader.TenantKeys(ctx, victim)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys of %s: %v, %v", victim, keys, err)
	}
	destroyed, err := reader.DestroyTenantKeys(ctx, victim)
	if err != nil || len(destroyed) != 1 {
		t.Fatalf("destroy: %v, %v", destroyed, err)
	}
	fresh := openWith(t, b, ks.reader, false)
	for _, id := range []string{m1.ID, m2.ID} {
		s, err := fresh.OpenSet(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Tenants(ctx, func(tn *manifest.Tenant) error {
			err := fresh.TenantReadable(ctx, tn)
			for _, c := range tn.Chunks {
				_, cerr := readChunk(t, fresh, s.Header(), c)
				if tn.ID == victim {
					if !errors.Is(cerr, vault.ErrTenantKeyDestroyed) || !errors.Is(err, vault.ErrTenantKeyDestroyed) || !errors.As(cerr, new(*tenantvault.InputError)) {
						t.Errorf("%s: shredded tenant read: %v / %v", id, cerr, err)
					}
				} else if cerr != nil || err != nil {
					t.Errorf("%s: tenant %s: %v / %v", id, tn.ID, cerr, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	res, err := fresh.Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) != 0 || res.Shredded != 2*tables || res.ShreddedTenants != 2 {
		t.Fatalf("verify --read-data: %+v, %v", res, err)
	}
	if res, err := openWith(t, b, nil, false).Verify(ctx, nil, true, nil); err != nil || len(res.Problems) != 0 {
		t.Fatalf("verify without keys: %+v, %v", res, err)
	}

}

// TestTenantKeysChangeLog: a tenant's change records are sealed with its
// own key (segment version 2), shared records with the segment's; after
// the tenant's keys are destroyed its records are unreadable to the
// identity holder, scans skip them, verify passes, and other tenants'
// records and the shared ones read as before.
func TestTenantKeysChangeLog(t *testing.T) {
	ctx := context.Background()
	ks := newKeySet(t)
	_, b := newRepoDir(t)
	w := openWith(t, b, ks.writer, true)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	sb := vault.NewSegmentBuilder("sys_db", "slot@0/1", 0x100)
	sb.AddRelation(vault.Relation{OID: 42, Schema: "public", Name: "items", Columns: []string{"tenant_id", "body"}, Types: []string{"text", "text"}})
	for i, tenant := range []string{"acme", "globex"} {
		sb.Add(tenant, false, &vault.Change{LSN: 0x101 + uint64(i), Time: at, Rel: 42, Op: vault.OpInsert,
			New: []vault.Value{{Kind: vault.ValueText, Data: []byte(tenant)}, {Kind: vault.ValueText, Data: []byte(marker)}}})
	}
	sb.Add("", true, &vault.Change{LSN: 0x110, Time: at.Add(time.Second), Rel: 42, Op: vault.OpTruncate, Rels: []uint32{42}})
	if _, err := w.WriteSegment(ctx, sb, 0x200, at.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	ref := vault.SegmentRef{Stream: "sys_db", Start: 0x100, End: 0x200}
	reader := openWith(t, b, ks.reader, false)
	idx, err := reader.ReadSegmentIndex(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if idx.Version != 2 {
		t.Fatalf("segment version %d", idx.Version)
	}
	for _, s := range idx.Streams {
		if s.Shared != (s.Key == "") {
			t.Fatalf("stream %+v", s)
		}
	}
	for _, tenant := range []string{"acme", "globex"} {
		if ch, err := reader.ReadChanges(ctx, idx, tenant); err != nil || len(ch) != 2 {
			t.Fatalf("%s: %d changes, %v", tenant, len(ch), err)
		}
	}
	if _, err := reader.DestroyTenantKeys(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	fresh := openWith(t, b, ks.reader, false)
	idx, err = fresh.ReadSegmentIndex(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.ReadChanges(ctx, idx, "acme"); !errors.Is(err, vault.ErrTenantKeyDestroyed) {
		t.Fatalf("acme's records after shredding: %v", err)
	}
	if ch, err := fresh.ReadChanges(ctx, idx, "globex"); err != nil || len(ch) != 2 {
		t.Fatalf("globex: %d changes, %v", len(ch), err)
	}
	seen := map[string]bool{}
	if err := fresh.ScanSegment(ctx, idx, nil, func(s vault.SegmentStream, _ *vault.ChangeReader) error { seen[s.Tenant] = true; return nil }); err != nil || seen["acme"] || !seen["globex"] || !seen[""] {
		t.Fatalf("scan: %v, %v", seen, err)
	}
	res, err := fresh.VerifySegments(ctx, true)
	if err != nil || len(res.Problems) != 0 {
		t.Fatalf("verify: %+v, %v", res, err)
	}
}

// TestCryptoShredInterrupted: forget in an encrypted repository
// (CryptoShredTenant) failing at any write or delete leaves the other
// tenants readable and, run again, completes: the tenant's keys gone, its
// tombstone and audit record written once erased.
func TestCryptoShredInterrupted(t *testing.T) {
	ctx := context.Background()
	ks := newKeySet(t)
	const victim = "tenant-000002"
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, op := range []repo.Op{repo.OpDelete, repo.OpPut} {
		for k := 0; ; k++ {
			_, b := newRepoDir(t)
			w := openWith(t, b, ks.writer, true)
			m1 := writeKeyedSet(t, w, at, 4, 2, true, nil, "")
			m2 := writeKeyedSet(t, openWith(t, b, ks.writer, false), at.Add(time.Hour), 4, 2, true, nil, "")
			f := repo.NewFaulty(b)
			f.Inject(repo.Fault{Op: op, After: k, Times: 1, Err: repo.Permanent(fmt.Errorf("%w: crash", repo.ErrInjected))})
			v := openWith(t, f, ks.reader, false)
			_, _, err := v.CryptoShredTenant(ctx, victim, "test", "tester")
			crashed := err != nil
			if crashed && !errors.Is(err, repo.ErrInjected) {
				t.Fatalf("%s %d: %v", op, k, err)
			}
			f.Clear()
			// Whatever happened, every other tenant reads as before.
			fresh := openWith(t, b, ks.reader, false)
			for _, id := range []string{m1.ID, m2.ID} {
				m, err := fresh.ReadManifest(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				for _, tn := range m.Tenants {
					if tn.ID == victim {
						continue
					}
					for _, c := range tn.Chunks {
						if _, err := readChunk(t, fresh, m, c); err != nil {
							t.Fatalf("%s %d: tenant %s after an interrupted shred: %v", op, k, tn.ID, err)
						}
					}
				}
			}
			if _, _, err := fresh.CryptoShredTenant(ctx, victim, "test", "tester"); err != nil {
				t.Fatalf("%s %d: rerun: %v", op, k, err)
			}
			if keys, err := fresh.TenantKeys(ctx, victim); err != nil || len(keys) != 0 {
				t.Fatalf("%s %d: keys left: %v, %v", op, k, keys, err)
			}
			if err := fresh.RefuseErased(ctx, []string{victim}); !errors.Is(err, vault.ErrErased) {
				t.Fatalf("%s %d: not refused after the rerun: %v", op, k, err)
			}
			m, _ := fresh.ReadManifest(ctx, m2.ID)
			if err := fresh.TenantReadable(ctx, m.Tenant(victim)); !errors.Is(err, vault.ErrTenantKeyDestroyed) {
				t.Fatalf("%s %d: the victim still reads: %v", op, k, err)
			}
			if !crashed {
				if k == 0 {
					t.Fatalf("no %s to interrupt", op)
				}
				t.Logf("%s: interrupted at each of %d calls", op, k)
				break // past the last call of that kind
			}
		}
	}
}
