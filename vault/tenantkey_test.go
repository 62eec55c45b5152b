package vault_test

import (
	"bytes"
	"context"
	"errors"
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
