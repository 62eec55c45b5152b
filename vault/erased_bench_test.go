package vault_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// BenchmarkErasedCheck100k: what a snapshot of 100,000 tenants pays to
// find erased tenants among them, with 1,000 tombstones: one listing, then
// a keyed hash per tenant.
func BenchmarkErasedCheck100k(b *testing.B) {
	ctx := context.Background()
	_, be := newRepoDir(b)
	v := openWith(b, be, nil, true)
	for i := range 1000 {
		key := vault.TombstoneKey(v.TenantHash(fmt.Sprintf("erased-%d", i)))
		if err := be.Put(ctx, key, strings.NewReader("{}"), 2); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]string, 100000)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant-%06d", i)
	}
	cb := &countingBackend{Backend: be, bytes: map[string]int64{}}
	lists := 0
	counted := &listCounter{Backend: cb, n: &lists}
	rv := openWith(b, counted, nil, false)
	b.ResetTimer()
	for b.Loop() {
		ix, err := rv.ErasedTenants(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			if ix.Has(id) {
				b.Fatal("not erased")
			}
		}
	}
	b.ReportMetric(float64(cb.gets)/float64(b.N), "GETs/op")
	b.ReportMetric(float64(lists)/float64(b.N), "lists/op")
}

type listCounter struct {
	repo.Backend
	n *int
}

func (l *listCounter) List(ctx context.Context, prefix string, fn func(repo.ObjectInfo) error) error {
	*l.n++
	return l.Backend.List(ctx, prefix, fn)
}

// BenchmarkErasedHas100k is the per-tenant part alone.
func BenchmarkErasedHas100k(b *testing.B) {
	ctx := context.Background()
	_, be := newRepoDir(b)
	v := openWith(b, be, nil, true)
	if err := be.Put(ctx, vault.TombstoneKey(v.TenantHash("gone")), strings.NewReader("{}"), 2); err != nil {
		b.Fatal(err)
	}
	ix, err := v.ErasedTenants(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 100000)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant-%06d", i)
	}
	for b.Loop() {
		for _, id := range ids {
			if ix.Has(id) {
				b.Fatal("not erased")
			}
		}
	}
}
