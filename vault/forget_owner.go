package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Who held a referenced key at a shared record's LSN
// (docs/SECURITY.md, "Shared change records").
//
// Replay of a tenant applies a shared record exactly when the row it
// references (by its first foreign key, in the old or the new tuple) is
// the tenant's at that point of the log, in the rows the replay holds:
// the tenant's rows of its base set, advanced through the log. So a
// record that no other tenant's replay applies is one whose parent keys,
// at its LSN, were held by the erased tenant or by no one. Forget follows
// the same: the owner of every key shared records reference, from each
// set taken at an exact LSN (which tenant's chunk holds it, or no one),
// carried forward through the log's records in commit order (a tenant's
// insert takes the key, its delete frees it; a shared insert of a row
// whose parent is T's gives T the row's own keys; a TRUNCATE frees its
// tables' keys), and unknown after a gap until the next set. Within one
// transaction every owner the key had counts (a cascade deletes the
// parent before the rows scoped through it, which replay still finds by
// the keys the tenant lost in that transaction).

// owner is who held a key: no one, a tenant, or not known.
type owner struct {
	tenant string
	state  byte
}

const (
	ownNobody byte = iota
	ownTenant
	ownUnknown
)

var (
	nobody  = owner{state: ownNobody}
	unknown = owner{state: ownUnknown}
)

// anchor is who held the keys at one set's LSN. partial sets (some
// tenants, pre-restore sets) say nothing of the keys of the others.
type anchor struct {
	lsn     uint64
	partial bool
	tenants []string
	owners  map[string]string
}

// keyEvent is a tenant record that frees or takes referenced keys, or
// (moved) a move record: a row other tables are scoped through changed
// tenant, and the rows scoped through it with it, unlogged.
type keyEvent struct {
	lsn           uint64
	seq           uint32
	tenant        string
	moved         bool
	release, hold []string
}

// tenantEvents reads, per stream, the tenants' own records that free or
// take a key in held, in log order. Records of tenants whose keys are
// destroyed are beyond anyone's use (an erased tenant's) and skipped.
func (v *Vault) tenantEvents(ctx context.Context, streams []segmentStreams, schemas map[string]*attrSchema, held map[string]keyFlags) (map[SegmentRef][]keyEvent, error) {
	out := map[SegmentRef][]keyEvent{}
	only := func(ks []string) []string {
		return slices.DeleteFunc(ks, func(k string) bool { _, ok := held[k]; return !ok })
	}
	for _, st := range streams {
		sc := schemas[st.stream]
		if sc == nil {
			continue
		}
		for _, idx := range st.segs {
			rels := relationsOf(idx)
			var evs []keyEvent
			err := v.ScanSegment(ctx, idx, func(s SegmentStream) bool { return !s.Shared }, func(s SegmentStream, cr *ChangeReader) error {
				return eachChange(idx, cr, func(c *Change) error {
					rel := rels[c.Rel]
					if c.Op == OpMoved {
						evs = append(evs, keyEvent{lsn: c.LSN, seq: c.Seq, tenant: s.Tenant, moved: true})
						return nil
					}
					if rel == nil || c.Op == OpTruncate {
						return nil
					}
					e := keyEvent{lsn: c.LSN, seq: c.Seq, tenant: s.Tenant}
					if c.Op != OpInsert {
						e.release = only(sc.ownKeys(rel, c.Old))
					}
					if c.Op != OpDelete {
						e.hold = only(sc.ownKeys(rel, FillUnchanged(c.New, c.Old)))
					}
					if len(e.release)+len(e.hold) > 0 {
						evs = append(evs, e)
					}
					return nil
				})
			})
			if errors.Is(err, ErrTenantKeyDestroyed) {
				err = nil
			}
			if err != nil {
				return nil, fmt.Errorf("forget reads the change log (nothing was changed): %w", err)
			}
			out[SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}] = evs
		}
	}
	return out, nil
}

// decideCovered decides the covered shared records of one stream from
// who held their parent keys at their LSN: dropped when only the erased
// tenant (or no one) did; split when the row moved between the erased
// tenant and others (the tenant's side blanked, BlankRecord); kept when
// no key was the tenant's; undecided when a key was both the tenant's
// and another's on the same side of the record (it passed between them in
// that very transaction) or its owner is not known.
func decideCovered(vd *sharedVerdict, tenant string, segs []*SegmentIndex, recs []*sharedRecord, events map[SegmentRef][]keyEvent, anchors []anchor, held map[string]keyFlags) {
	state := map[string]owner{}
	bySeg := map[SegmentRef][]*sharedRecord{}
	for _, r := range recs {
		bySeg[r.seg] = append(bySeg[r.seg], r)
	}
	// tainted are the tenants a row moved between the erased tenant and
	// since the last set: rows scoped through it changed tenant with no
	// record of theirs, so whose keys are whose is not known, but neither
	// tenant's replay goes past that move (restore's MovedError) until a
	// set taken after it.
	tainted := map[string]bool{}
	apply := func(a anchor) {
		if !a.partial {
			clear(tainted)
			for k := range held {
				state[k] = nobody
			}
		} else {
			for _, t := range a.tenants {
				delete(tainted, t)
			}
			for k, o := range state {
				if o.state == ownTenant && slices.Contains(a.tenants, o.tenant) {
					state[k] = nobody
				}
			}
		}
		for k, t := range a.owners {
			if _, ok := held[k]; ok {
				state[k] = owner{tenant: t, state: ownTenant}
			}
		}
	}
	next := 0
	for si, idx := range segs {
		if si == 0 || idx.Start != segs[si-1].End {
			// The log starts, or resumes after a gap: no one knows who
			// holds what until the next set.
			for k := range held {
				state[k] = unknown
			}
			clear(tainted)
			for next < len(anchors) && anchors[next].lsn < idx.Start {
				next++
			}
		}
		ref := SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}
		evs := events[ref]
		type item struct {
			lsn uint64
			seq uint32
			e   *keyEvent
			r   *sharedRecord
		}
		var items []item
		for i := range evs {
			items = append(items, item{evs[i].lsn, evs[i].seq, &evs[i], nil})
		}
		for _, r := range bySeg[ref] {
			items = append(items, item{r.id[0], uint32(r.id[1]), nil, r})
		}
		sort.SliceStable(items, func(i, j int) bool {
			if items[i].lsn != items[j].lsn {
				return items[i].lsn < items[j].lsn
			}
			return items[i].seq < items[j].seq
		})
		for i := 0; i < len(items); {
			lsn := items[i].lsn
			for next < len(anchors) && anchors[next].lsn <= lsn {
				// A set at lsn holds what committed before it: replay
				// applies the records from lsn on.
				apply(anchors[next])
				next++
			}
			j := i
			for j < len(items) && items[j].lsn == lsn {
				j++
			}
			var batch []keyChange
			for _, it := range items[i:j] {
				batch = append(batch, keyChange{e: it.e, r: it.r})
			}
			seen := advanceTxn(state, batch)
			var movers []string
			for _, it := range items[i:j] {
				if it.e != nil && it.e.moved && !slices.Contains(movers, it.e.tenant) {
					movers = append(movers, it.e.tenant)
				}
			}
			if slices.Contains(movers, tenant) {
				for _, t := range movers {
					if t != tenant {
						tainted[t] = true
					}
				}
			}
			for _, it := range items[i:j] {
				if r := it.r; r != nil && r.kind == 0 && r.covered {
					vd.decide(r, tenant, tainted, seen[r.pOld], seen[r.pNew])
				}
			}
			i = j
		}
		for next < len(anchors) && anchors[next].lsn <= idx.End {
			apply(anchors[next])
			next++
		}
	}
}

// keyChange is one record of a transaction: a tenant's (e) or a shared
// one (r).
type keyChange struct {
	e *keyEvent
	r *sharedRecord
}

// advanceTxn carries state through one transaction's records, in order,
// and returns every owner each key it touched or references had in it,
// the one before it first.
func advanceTxn(state map[string]owner, txn []keyChange) map[string][]owner {
	seen := map[string][]owner{}
	note := func(k string) {
		if _, ok := state[k]; !ok {
			return
		}
		if _, ok := seen[k]; !ok {
			seen[k] = []owner{state[k]}
		}
	}
	set := func(k string, o owner) {
		if _, ok := state[k]; !ok {
			return
		}
		note(k)
		state[k] = o
		if !slices.Contains(seen[k], o) {
			seen[k] = append(seen[k], o)
		}
	}
	for _, c := range txn {
		if e := c.e; e != nil {
			for _, k := range e.release {
				set(k, nobody)
			}
			for _, k := range e.hold {
				set(k, owner{tenant: e.tenant, state: ownTenant})
			}
			continue
		}
		r := c.r
		switch r.kind {
		case OpTruncate:
			for k := range state {
				if r.truncs[keyTable(k)] {
					set(k, nobody)
				}
			}
			continue
		case 'u':
			for _, k := range r.ownOld {
				set(k, nobody)
			}
			for _, k := range r.ownNew {
				set(k, unknown)
			}
			continue
		case 'c':
			for _, k := range r.ownOld {
				set(k, nobody)
			}
			for _, k := range r.ownNew {
				set(k, owner{tenant: r.colTenant, state: ownTenant})
			}
			continue
		}
		note(r.pOld)
		note(r.pNew)
		o := nobody
		if r.pNew != "" {
			o = state[r.pNew]
		}
		for _, k := range r.ownOld {
			set(k, nobody)
		}
		for _, k := range r.ownNew {
			set(k, o)
		}
	}
	return seen
}

// keyTable is the table (tableKey) a keyString names a key of.
func keyTable(k string) string {
	i := 0
	for n := 0; i < len(k); i++ {
		if k[i] == 0 {
			if n++; n == 2 {
				break
			}
		}
	}
	return k[:i]
}

// decide files one covered record by the owners its old and new parent
// key had in its transaction.
//
// A key held by a tainted tenant may be the erased tenant's (it moved
// with a row, unlogged) and no replay of that tenant reads the record: it
// counts as possibly the tenant's, never as another's.
func (vd *sharedVerdict) decide(r *sharedRecord, tenant string, tainted map[string]bool, so, sn []owner) {
	side := func(os []owner) (mine, other, unk bool) {
		for _, o := range os {
			switch o.state {
			case ownUnknown:
				unk = true
			case ownTenant:
				if o.tenant == tenant || tainted[o.tenant] {
					mine = true
				} else {
					other = true
				}
			}
		}
		return
	}
	mo, oo, uo := side(so)
	mn, on, un := side(sn)
	switch {
	case !mo && !mn && !uo && !un:
		// Never the tenant's: every replay that needs it keeps it.
	case uo || un:
		vd.undecided++
		vd.unknown++
	case !oo && !on:
		vd.drop[r.seg] = append(vd.drop[r.seg], r.id)
		vd.dropped++
	case r.op == OpUpdate && mo && !oo && !mn && on:
		vd.blank[r.seg] = append(vd.blank[r.seg], BlankRecord{ID: r.id, Old: true, Keep: r.keepOld})
		vd.blanked++
	case r.op == OpUpdate && mn && !on && !mo && oo:
		vd.blank[r.seg] = append(vd.blank[r.seg], BlankRecord{ID: r.id, Keep: r.keepNew})
		vd.blanked++
	default:
		vd.undecided++
		vd.other++
	}
}

// moveBlanks finds, in the segments where the erased tenant's stream has
// a move record, the other tenants' move records of the same transaction
// and table (the capture numbers each tenant's copy apart, so the commit
// LSN and relation pair them; another move of the same table in that
// transaction is blanked too, harmless: replay never reads their rows):
// their old and new rows are the row before and
// after it moved between them, one side the erased tenant's. Replay reads
// only where they are (restore's MovedError), so both sides are blanked
// but for the row's key.
func (v *Vault) moveBlanks(ctx context.Context, tenant string, streams []segmentStreams, schemas map[string]*attrSchema, vd *sharedVerdict) error {
	for _, st := range streams {
		sc := schemas[st.stream]
		for _, idx := range st.segs {
			has := false
			for _, s := range idx.Streams {
				has = has || !s.Shared && s.Tenant == tenant && s.Moved != nil
			}
			if !has {
				continue
			}
			rels := relationsOf(idx)
			type moveAt struct {
				lsn uint64
				rel uint32
			}
			mine := map[moveAt]bool{}
			type rec struct {
				tenant string
				id     RecordID
				at     moveAt
				keep   []int
			}
			var theirs []rec
			err := v.ScanSegment(ctx, idx, func(s SegmentStream) bool { return !s.Shared && s.Moved != nil }, func(s SegmentStream, cr *ChangeReader) error {
				return eachChange(idx, cr, func(c *Change) error {
					if c.Op != OpMoved {
						return nil
					}
					id, at := RecordID{c.LSN, uint64(c.Seq)}, moveAt{c.LSN, c.Rel}
					if s.Tenant == tenant {
						mine[at] = true
						return nil
					}
					var keep []int
					if rel := rels[c.Rel]; rel != nil && sc != nil {
						if t := sc.tables[tableKey(rel.Schema, rel.Name)]; t != nil {
							keep = columnsAt(rel, t.Key)
						}
					}
					theirs = append(theirs, rec{s.Tenant, id, at, keep})
					return nil
				})
			})
			if err != nil {
				return fmt.Errorf("forget reads the change log's move records (nothing was changed): %w", err)
			}
			ref := SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}
			for _, r := range theirs {
				if mine[r.at] {
					vd.moves[ref] = append(vd.moves[ref], BlankRecord{ID: r.id, Keep: r.keep, Move: true, Stream: v.TenantHash(r.tenant)})
					vd.movesN++
				}
			}
		}
	}
	return nil
}
