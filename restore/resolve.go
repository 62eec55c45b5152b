package restore

import (
	"context"

	"github.com/tenantvault/tenantvault/vault"
)

// Resolve finds, for each tenant, the set a restore with sel would read
// and, when sel.At lies after that set, the change-log replay that takes
// it there (Item.Replay; nil when the set is itself the state as of
// sel.At, or when its source has no change log). It refuses what Run
// refuses before writing anything: unknown tenants, a log with a gap or
// not reaching sel.At, a replay past a row that moved between tenants.
// Export uses it to read exactly what a restore would put back.
func Resolve(ctx context.Context, v *vault.Vault, tenants []string, sel Selector) ([]Item, error) {
	items, err := selectSets(ctx, v, dedupe(tenants), sel)
	if err != nil {
		return nil, err
	}
	if sel.At.IsZero() {
		return items, nil
	}
	replays := map[string]*Replay{}
	for i := range items {
		set := items[i].Set
		rp, ok := replays[set.ID]
		if !ok {
			if rp, err = planReplay(ctx, v, set, sel.At); err != nil {
				return nil, err
			}
			replays[set.ID] = rp
		}
		items[i].Replay = rp
		if rp != nil {
			if err := checkMoves(rp, items[i].Tenant); err != nil {
				return nil, err
			}
		}
	}
	return items, nil
}
