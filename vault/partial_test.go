package vault_test

import (
	"context"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
)

// Partial sets of the schema model written before ExactTenants held an
// entry without chunks for every tenant schema they did not capture.
// Restore, list, diff and drill must not take such an entry for the
// tenant's state (restoring "the newest set" of one of them restored it
// empty, reported verified); forget must still find and erase it.
func TestPartialSchemaSetEntries(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	v := openWith(t, b, nil, true)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	schema := func(m *manifest.Manifest) { m.Tenancy = manifest.Tenancy{Model: "schema", SchemaPattern: "t%"} }
	full := writeTenantSet(t, v, tenantSet{at: t0, tenants: map[string]string{"t_a": "1\ta\n", "t'b": "2\tb\n3\tc\n"}, edit: schema})
	partial := func(at time.Time, exact bool) string {
		m := writeTenantSet(t, v, tenantSet{at: at, tenants: map[string]string{"t_a": "1\tA\n"}, edit: func(m *manifest.Manifest) {
			schema(m)
			m.Partial, m.ExactTenants = true, exact
			m.Tenants = append(m.Tenants, manifest.Tenant{ID: "t'b"}, manifest.Tenant{ID: "t_c"})
			m.SortTenants()
		}})
		return m.ID
	}
	old := partial(t0.Add(time.Hour), false)

	entry := func(set, id string) (held, raw bool) {
		t.Helper()
		s, err := v.OpenSet(ctx, set)
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.Tenant(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Entry(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return e != nil, r != nil
	}
	if held, raw := entry(old, "t'b"); held || !raw {
		t.Fatalf("old partial set, other tenant: held %v, entry %v; want false, true", held, raw)
	}
	if held, _ := entry(old, "t_a"); !held {
		t.Fatal("old partial set: the captured tenant is not held")
	}
	history := func(tenant string) []string {
		t.Helper()
		ids, err := v.ListSets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		h, err := v.TenantHistory(ctx, ids, tenant)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range h {
			out = append(out, x.Set.ID)
		}
		return out
	}
	for _, fold := range []bool{false, true} {
		if fold {
			if err := v.UpdateCatalog(ctx, t.TempDir()); err != nil {
				t.Fatal(err)
			}
		}
		if got := history("t'b"); len(got) != 1 || got[0] != full.ID {
			t.Fatalf("catalog %v: history of t'b = %v, want only %s", fold, got, full.ID)
		}
		if got := history("t_a"); len(got) != 2 {
			t.Fatalf("catalog %v: history of t_a = %v, want both sets", fold, got)
		}
	}
	// Marked sets hold every entry they have: a requested tenant schema
	// without rows is that tenant's state.
	exact := partial(t0.Add(2*time.Hour), true)
	if held, _ := entry(exact, "t'b"); !held {
		t.Fatal("exact partial set: an entry without chunks is not held")
	}
}
