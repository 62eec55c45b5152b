package restore

import (
	"context"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

// Item is one tenant to restore and the set it comes from.
type Item struct {
	Tenant string
	Set    *manifest.Manifest
	// T is the tenant's entry in Set.
	T *manifest.Tenant
	// Existing counts the rows the tenant already has in the target, per
	// table (qualified name); empty when it has none.
	Existing map[string]int64
	// MissingSchema is set when the tenant's schema or database does not
	// exist in the target (schema and database models).
	MissingSchema bool
	// Replay, when set, takes the tenant from the set's instant to the
	// requested time through the change log.
	Replay *Replay
}

// ExistingRows sums Existing.
func (it *Item) ExistingRows() int64 {
	var n int64
	for _, v := range it.Existing {
		n += v
	}
	return n
}

// Shard selects a deterministic slice of a tenant list: tenant IDs whose
// FNV-1a hash modulo Of equals Index. The zero value selects everything.
type Shard struct{ Index, Of int }

// ParseShard reads "i/N" with 0 <= i < N.
func ParseShard(s string) (Shard, error) {
	var sh Shard
	if s == "" {
		return sh, nil
	}
	if _, err := fmt.Sscanf(s, "%d/%d", &sh.Index, &sh.Of); err != nil || sh.Of < 1 || sh.Index < 0 || sh.Index >= sh.Of || fmt.Sprintf("%d/%d", sh.Index, sh.Of) != s {
		return sh, tenantvault.Inputf("--shard %q: want i/N with 0 <= i < N, e.g. 0/4", s)
	}
	return sh, nil
}

// Has reports whether the shard includes tenant id.
func (sh Shard) Has(id string) bool {
	if sh.Of <= 1 {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return int(h.Sum64()%uint64(sh.Of)) == sh.Index
}

// UnknownTenantsError lists tenant IDs that no usable snapshot set holds.
type UnknownTenantsError struct {
	IDs    []string
	Reason string
}

func (e *UnknownTenantsError) Error() string {
	q := make([]string, len(e.IDs))
	for i, id := range e.IDs {
		q[i] = fmt.Sprintf("%q", id)
	}
	return fmt.Sprintf("%d unknown tenant(s) %s: %s", len(e.IDs), e.Reason, strings.Join(q, ", "))
}

// Selector chooses the set each tenant is restored from.
type Selector struct {
	// SetID restores every tenant from this set (pre-restore sets and sets
	// marked for deletion too).
	SetID string
	// At restores each tenant from the newest set taken at or before it.
	At time.Time
}

// selectSets resolves every tenant to a set, or fails listing every tenant
// it could not resolve; nothing has been written at that point.
func selectSets(ctx context.Context, v *vault.Vault, tenants []string, sel Selector) ([]Item, error) {
	if sel.SetID != "" {
		set, err := v.OpenSet(ctx, sel.SetID)
		if err != nil {
			return nil, err
		}
		m := set.Header()
		var items []Item
		var missing []string
		for _, id := range tenants {
			t, err := set.Tenant(ctx, id)
			if err != nil {
				return nil, err
			}
			if t != nil {
				items = append(items, Item{Tenant: id, Set: m, T: t})
			} else {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return nil, &tenantvault.InputError{Err: &UnknownTenantsError{IDs: missing, Reason: "in snapshot set " + m.ID}}
		}
		return readable(ctx, v, items)
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, tenantvault.Inputf("repository %s holds no snapshot sets", v.Location())
	}
	// Sets marked for deletion are on their way out: like pre-restore sets
	// they are restored only when asked for by ID (until purged).
	marks, err := v.Marks(ctx)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range tenants {
		want[id] = true
	}
	found := map[string]Item{}
	var oldest *manifest.Manifest
	// Newest first; a set's ID starts with its start time, and its instant
	// is later still, so sets started after At are skipped unread.
	for i := len(ids) - 1; i >= 0 && len(found) < len(want); i-- {
		if !sel.At.IsZero() && vault.StartedAfter(ids[i], sel.At) {
			continue
		}
		if _, marked := marks[ids[i]]; marked {
			continue
		}
		set, err := v.OpenSet(ctx, ids[i])
		if err != nil {
			return nil, err
		}
		m := set.Header()
		if m.Kind == manifest.KindPreRestore {
			continue // only ever chosen by ID: it holds the state a restore replaced
		}
		if !sel.At.IsZero() && m.ConsistentAt.After(sel.At) {
			continue
		}
		oldest = m
		for id := range want {
			if _, done := found[id]; done {
				continue
			}
			t, err := set.Tenant(ctx, id)
			if err != nil {
				return nil, err
			}
			if t != nil {
				found[id] = Item{Tenant: id, Set: m, T: t}
			}
		}
	}
	var missing []string
	for _, id := range tenants {
		if _, ok := found[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		if !sel.At.IsZero() && oldest == nil {
			firstSet, err := v.OpenSet(ctx, ids[0])
			if err != nil {
				return nil, err
			}
			first := firstSet.Header()
			return nil, tenantvault.Inputf("--at %s is before the oldest snapshot set (%s, taken at %s)",
				sel.At.UTC().Format(time.RFC3339), first.ID, first.ConsistentAt.Format(time.RFC3339))
		}
		reason := "in any snapshot set of " + v.Location()
		if !sel.At.IsZero() {
			reason = "in the snapshot sets taken at or before " + sel.At.UTC().Format(time.RFC3339)
		}
		return nil, &tenantvault.InputError{Err: &UnknownTenantsError{IDs: missing, Reason: reason}}
	}
	items := make([]Item, 0, len(tenants))
	for _, id := range tenants {
		items = append(items, found[id])
	}
	return readable(ctx, v, items)
}

// readable makes sure every item's data can be decrypted (a tenant whose
// own key was destroyed cannot) before anything is written.
func readable(ctx context.Context, v *vault.Vault, items []Item) ([]Item, error) {
	for _, it := range items {
		if err := v.TenantReadable(ctx, it.T); err != nil {
			return nil, err
		}
	}
	return items, nil
}

// dedupe sorts ids and drops repeats.
func dedupe(ids []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}
