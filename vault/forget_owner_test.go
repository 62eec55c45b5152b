package vault

import "testing"

// TestDecideCoveredOwnership: decisions by who held a key at a record's
// LSN, on a written timeline: unknown before the first set (undecided);
// another's at a set (kept); after a move between the erased tenant and
// that other tenant, whose replay cannot cross it, possibly the erased
// tenant's (dropped) until the next set (kept again); a gap makes it
// unknown again.
func TestDecideCoveredOwnership(t *testing.T) {
	const k = "public\x00docs\x00id\x001:7"
	ref := SegmentRef{Stream: "s", Start: 0, End: 100}
	ref2 := SegmentRef{Stream: "s", Start: 200, End: 300}
	segs := []*SegmentIndex{{Stream: "s", Start: 0, End: 100}, {Stream: "s", Start: 200, End: 300}}
	rec := func(seg SegmentRef, lsn uint64) *sharedRecord {
		return &sharedRecord{seg: seg, id: RecordID{lsn, 1}, op: OpInsert, pNew: k, parents: []string{k}, covered: true}
	}
	recs := []*sharedRecord{rec(ref, 5), rec(ref, 15), rec(ref, 30), rec(ref, 50), rec(ref2, 250)}
	events := map[SegmentRef][]keyEvent{ref: {
		{lsn: 20, seq: 1, tenant: "e", moved: true},
		{lsn: 20, seq: 1, tenant: "x", moved: true},
	}}
	anchors := []anchor{{lsn: 10, owners: map[string]string{k: "x"}}, {lsn: 40, owners: map[string]string{k: "x"}}}
	vd := &sharedVerdict{tenant: "e", drop: map[SegmentRef][]RecordID{}, blank: map[SegmentRef][]BlankRecord{}}
	decideCovered(vd, "e", segs, recs, events, anchors, map[string]keyFlags{k: 0})
	if vd.unknown != 2 || vd.undecided != 2 || vd.dropped != 1 || len(vd.drop[ref]) != 1 || vd.drop[ref][0] != (RecordID{30, 1}) {
		t.Fatalf("verdict: %+v", vd)
	}
}

// TestDecideMoves: an update whose old parent was the erased tenant's and
// new parent another's is split (old side blanked), the reverse too (new
// side), and one whose key passed between them on the same side inside
// the transaction stays undecided.
func TestDecideMoves(t *testing.T) {
	mine, other := owner{tenant: "e", state: ownTenant}, owner{tenant: "x", state: ownTenant}
	vd := &sharedVerdict{tenant: "e", drop: map[SegmentRef][]RecordID{}, blank: map[SegmentRef][]BlankRecord{}}
	r := &sharedRecord{op: OpUpdate, keepOld: []int{0, 1, 2}, keepNew: []int{0, 1}}
	vd.decide(r, "e", nil, []owner{mine}, []owner{other})
	vd.decide(r, "e", nil, []owner{other}, []owner{mine, nobody})
	vd.decide(r, "e", nil, []owner{mine, other}, []owner{other})
	vd.decide(r, "e", nil, []owner{nobody}, []owner{other})
	b := vd.blank[SegmentRef{}]
	if vd.blanked != 2 || len(b) != 2 || !b[0].Old || len(b[0].Keep) != 3 || b[1].Old || len(b[1].Keep) != 2 || vd.other != 1 || vd.undecided != 1 || vd.dropped != 0 {
		t.Fatalf("verdict: %+v %+v", vd, b)
	}
}

// TestBlankSide: blanking leaves the kept columns and reports a record
// already blank as unchanged (a resumed forget).
func TestBlankSide(t *testing.T) {
	txt := func(s string) Value { return Value{Kind: ValueText, Data: []byte(s)} }
	c := &Change{Op: OpUpdate, Old: []Value{txt("40"), txt("4"), txt("secret")}, New: []Value{txt("40"), txt("5"), txt("theirs")}}
	b := BlankRecord{Old: true, Keep: []int{0, 1}}
	if !blankSide(c, b) || c.Old[2].Kind != ValueAbsent || string(c.Old[1].Data) != "4" || string(c.New[2].Data) != "theirs" {
		t.Fatalf("blanked: %+v", c)
	}
	if blankSide(c, b) {
		t.Fatal("a blank record changed again")
	}
	b = BlankRecord{Keep: []int{0, 1}}
	if !blankSide(c, b) || c.New[2].Kind != ValueUnchanged || string(c.New[1].Data) != "5" {
		t.Fatalf("blanked new: %+v", c)
	}
}
