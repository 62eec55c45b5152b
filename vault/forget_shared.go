package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// Attributing the change log's shared records at forget time
// (docs/SECURITY.md, "Shared change records").
//
// A shared record is one whose tenant the capture could not tell: a change
// to a table scoped through foreign keys whose parent row it could not
// resolve (deleted by the same cascade, written since its horizon), and
// every TRUNCATE. Every tenant's replay reads them and applies one when the
// row it references is the tenant's. Forget decides the same from what the
// repository holds: the referenced (unique) keys the erased tenant held in
// any set (its chunks of the parent tables), in its own change records, and
// in shared records already attributed to it, transitively along the
// chains. A record is the tenant's, and dropped, when the parent keys it
// references (old and new tuple) were held by the tenant and by no one
// else, ever, and the log continues a set up to it (so the tenant's rows at
// its instant are all known). Otherwise it is kept and counted as
// undecided: a key another tenant also held at some point, a parent no set
// or record shows, a record before any set the log continues, a table
// without a foreign-key scope. TRUNCATEs hold no row data and are kept.
//
// Memory: a few keys per shared record, and nothing per row of the sets.

// RecordID names one record of a segment: its commit LSN and its position
// in the transaction, unique among a segment's shared records.
type RecordID [2]uint64

// BlankRecord is a shared record forget keeps with one side blanked: a row
// that moved between the erased tenant and another. Old blanks the old
// tuple (the row left the erased tenant: its values before are the
// tenant's), else the new one (it joined the erased tenant). Keep are the
// columns left as they are: the row's key and its first foreign key's
// columns, which replay attributes the record by, and, in the old tuple,
// those the new one takes from it (unchanged TOAST values).
//
// Move records (OpMoved) in another tenant's own stream are blanked on
// both sides (Move): replay reads only their position and relation. Such
// entries name their stream by the tenant's hash (Stream): journals name
// no tenant.
type BlankRecord struct {
	ID     RecordID `json:"id"`
	Old    bool     `json:"old"`
	Keep   []int    `json:"keep"`
	Move   bool     `json:"move,omitempty"`
	Stream string   `json:"stream,omitempty"`
}

type keyFlags uint8

const (
	heldByTenant keyFlags = 1 << iota // the erased tenant held the key
	heldByOther                       // someone else did (or may have)
)

// sharedRecord is what attribution keeps of one shared record.
type sharedRecord struct {
	seg        SegmentRef
	id         RecordID
	op         byte
	kind       byte     // 0: by its first hop; 'T': TRUNCATE; 'c': by its tenant column; 'u': no scope to follow
	colTenant  string   // kind 'c': the tenant its tuples name
	parents    []string // parent keys its first hop references (old and new tuple)
	pOld, pNew string   // the same, per tuple ("" references nothing)
	// ownOld and ownNew are its own referenced keys (other tables' first
	// hops reference its table by them) in the old and new tuple.
	ownOld, ownNew   []string
	truncs           map[string]bool // a TRUNCATE's tables
	covered          bool            // a set the log continues lies before it
	keepOld, keepNew []int           // the columns a split keeps (BlankRecord)
}

// sharedVerdict is what attribution decided.
type sharedVerdict struct {
	tenant string
	drop   map[SegmentRef][]RecordID
	blank  map[SegmentRef][]BlankRecord
	// moves are the move records in other tenants' streams of rows that
	// moved between them and the erased tenant.
	moves     map[SegmentRef][]BlankRecord
	movesN    int
	total     int
	dropped   int
	blanked   int
	undecided int
	truncates int
	// Why the undecided were kept, by reason.
	other, unknown, unscoped int
}

// attrSchema is what attribution knows of a source's tables: the newest
// definition of each scoped table in any set of the source, and the keys
// first hops reference each table by.
type attrSchema struct {
	tables map[string]*manifest.Table // schema\0name
	refs   map[string][][]string
	// tenantCol is the tenant key column of the column model (tables that
	// carry it name their tenant in every tuple).
	tenantCol string
}

func tableKey(schema, name string) string { return schema + "\x00" + name }

// tupleKey reads cols from a logged tuple: ok is false when a value is
// NULL (the tuple references nothing by it); missing when one is not in
// the tuple.
func tupleKey(rel *Relation, tuple []Value, cols []string) (vals [][]byte, ok, missing bool) {
	for _, c := range cols {
		i := slices.Index(rel.Columns, c)
		if i < 0 || i >= len(tuple) {
			return nil, false, true
		}
		switch tuple[i].Kind {
		case ValueText:
			vals = append(vals, tuple[i].Data)
		case ValueNull:
			return nil, false, false
		default:
			return nil, false, true
		}
	}
	return vals, true, false
}

// schemas reads the table definitions of every set, per change stream,
// newest last, and where each stream's log continues a set exactly.
func schemasOf(headers []*manifest.Manifest) (map[string]*attrSchema, map[string][]uint64) {
	sorted := slices.Clone(headers)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].ConsistentAt.Before(sorted[j].ConsistentAt) })
	out := map[string]*attrSchema{}
	exact := map[string][]uint64{}
	for _, m := range sorted {
		stream := StreamName(m.Source.SystemID, m.Source.Database)
		sc := out[stream]
		if sc == nil {
			sc = &attrSchema{tables: map[string]*manifest.Table{}, refs: map[string][][]string{}}
			out[stream] = sc
		}
		if m.Tenancy.Model == "column" {
			sc.tenantCol = m.Tenancy.TenantColumn
		}
		for i := range m.Tables {
			if t := &m.Tables[i]; t.Kind == manifest.TableScoped {
				sc.tables[tableKey(t.Schema, t.Name)] = t
			}
		}
		if m.LSNExact {
			if lsn, err := ParseLSN(m.LSN); err == nil {
				exact[stream] = append(exact[stream], lsn)
			}
		}
	}
	for _, sc := range out {
		for _, t := range sc.tables {
			if t.Scope == nil || len(t.Scope.Hops) == 0 {
				continue
			}
			h := t.Scope.Hops[0]
			k := tableKey(h.RefSchema, h.RefTable)
			if !slices.ContainsFunc(sc.refs[k], func(c []string) bool { return slices.Equal(c, h.RefCols) }) {
				sc.refs[k] = append(sc.refs[k], h.RefCols)
			}
		}
	}
	for _, l := range exact {
		slices.Sort(l)
	}
	return out, exact
}

// ownKeys are the referenced keys a logged row of table (schema, name)
// holds: what rows of other tables reference it by.
func (sc *attrSchema) ownKeys(rel *Relation, tuples ...[]Value) []string {
	var out []string
	for _, cols := range sc.refs[tableKey(rel.Schema, rel.Name)] {
		for _, tp := range tuples {
			if tp == nil {
				continue
			}
			if vals, ok, _ := tupleKey(rel, tp, cols); ok {
				out = append(out, RowKey(rel.Schema, rel.Name, cols, vals))
			}
		}
	}
	return out
}

// segmentStreams is one stream's segments, in order, with their indexes.
type segmentStreams struct {
	stream string
	segs   []*SegmentIndex
}

// coverage returns, for a stream's segments, from which LSN on the log
// continues a set exactly: per contiguous run of segments, the first
// exact set LSN inside it. covered(i, lsn) reports it for segment i. It
// is exactly what restore's planReplay accepts: a base set taken at an
// exact LSN, the log from there without a gap; no restore (nor verify
// --replay, nor export --at) replays a record that is not covered.
func coverage(segs []*SegmentIndex, exact []uint64) func(i int, lsn uint64) bool {
	from := make([]uint64, len(segs))
	const never = ^uint64(0)
	cur := never
	for i, s := range segs {
		if i == 0 || s.Start != segs[i-1].End {
			cur = never
		}
		for _, e := range exact {
			if e >= s.Start && e <= s.End && e < cur {
				cur = e
			}
		}
		from[i] = cur
	}
	return func(i int, lsn uint64) bool { return lsn >= from[i] }
}

// columnTenant is the one tenant the tuples of a row of a table with the
// tenant column name; ok is false when a tuple lacks it or they differ
// (the row moved: the capture attributes those itself).
func columnTenant(rel *Relation, col string, tuples ...[]Value) (string, bool) {
	i := slices.Index(rel.Columns, col)
	if col == "" || i < 0 {
		return "", false
	}
	who, n := "", 0
	for _, tp := range tuples {
		if tp == nil {
			continue
		}
		if i >= len(tp) || tp[i].Kind != ValueText || n > 0 && string(tp[i].Data) != who {
			return "", false
		}
		who, n = string(tp[i].Data), n+1
	}
	return who, n > 0
}

// columnsAt are the positions of cols in rel.
func columnsAt(rel *Relation, cols ...[]string) []int {
	var out []int
	for _, cs := range cols {
		for _, c := range cs {
			if i := slices.Index(rel.Columns, c); i >= 0 && !slices.Contains(out, i) {
				out = append(out, i)
			}
		}
	}
	slices.Sort(out)
	return out
}

// attributeShared decides which shared records of the log are tenant's.
// holding are the tenant's entries in the sets that hold it (with their
// set's header); headers are every set's.
//
// Covered records (a restore can replay them) are decided by who held
// the parent keys they reference at their LSN (ownership.go): the owner
// of every key at each set's LSN, carried through the log's changes.
// Uncovered ones no restore can replay: they are dropped unless provably
// another's.
func (v *Vault) attributeShared(ctx context.Context, tenant string, headers []*manifest.Manifest, holding []setScan, streams []segmentStreams) (*sharedVerdict, error) {
	verdict := &sharedVerdict{tenant: tenant, drop: map[SegmentRef][]RecordID{}, blank: map[SegmentRef][]BlankRecord{}, moves: map[SegmentRef][]BlankRecord{}}
	schemas, exact := schemasOf(headers)
	if err := v.moveBlanks(ctx, tenant, streams, schemas, verdict); err != nil {
		return nil, err
	}
	recs := map[string][]*sharedRecord{} // per stream, in log order
	held := map[string]keyFlags{}        // only the keys shared records reference
	parentTables := map[string]bool{}
	uncovered := false
	for _, st := range streams {
		sc := schemas[st.stream]
		covered := coverage(st.segs, exact[st.stream])
		for i, idx := range st.segs {
			rels := relationsOf(idx)
			err := v.ScanSegment(ctx, idx, func(s SegmentStream) bool { return s.Shared }, func(s SegmentStream, cr *ChangeReader) error {
				return eachChange(idx, cr, func(c *Change) error {
					verdict.total++
					r := &sharedRecord{seg: SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}, id: RecordID{c.LSN, uint64(c.Seq)}, op: c.Op, covered: covered(i, c.LSN)}
					recs[st.stream] = append(recs[st.stream], r)
					if c.Op == OpTruncate {
						r.kind = OpTruncate
						r.truncs = map[string]bool{}
						for _, oid := range c.Rels {
							if rel := rels[oid]; rel != nil {
								r.truncs[tableKey(rel.Schema, rel.Name)] = true
							}
						}
						return nil
					}
					rel := rels[c.Rel]
					var t *manifest.Table
					if rel != nil && sc != nil {
						t = sc.tables[tableKey(rel.Schema, rel.Name)]
					}
					newT := FillUnchanged(c.New, c.Old)
					if rel != nil && sc != nil {
						r.ownOld, r.ownNew = sc.ownKeys(rel, c.Old), sc.ownKeys(rel, newT)
					}
					if t != nil && (t.Scope == nil || len(t.Scope.Hops) == 0) {
						// A table that carries the tenant column: its
						// tuples name their tenant.
						col := sc.tenantCol
						if t.Scope != nil && t.Scope.Column != "" {
							col = t.Scope.Column
						}
						if who, ok := columnTenant(rel, col, c.Old, newT); ok {
							r.kind, r.colTenant = 'c', who
							return nil
						}
					}
					if t == nil || t.Scope == nil || len(t.Scope.Hops) == 0 {
						r.kind = 'u'
						uncovered = uncovered || !r.covered
						return nil
					}
					h := t.Scope.Hops[0]
					oldT := c.Old
					if c.Op == OpUpdate && oldT == nil {
						oldT = newT // the identity, which holds the first hop, did not change
					}
					if c.Op == OpInsert {
						oldT = nil
					}
					if c.Op == OpDelete {
						newT = nil
					}
					for j, tp := range [][]Value{oldT, newT} {
						if tp == nil {
							continue
						}
						vals, ok, missing := tupleKey(rel, tp, h.Columns)
						if missing {
							r.kind = 'u'
							uncovered = uncovered || !r.covered
							return nil
						}
						if ok {
							k := RowKey(h.RefSchema, h.RefTable, h.RefCols, vals)
							if j == 0 {
								r.pOld = k
							} else {
								r.pNew = k
							}
							if !slices.Contains(r.parents, k) {
								r.parents = append(r.parents, k)
							}
							held[k] |= 0
						}
					}
					parentTables[tableKey(h.RefSchema, h.RefTable)] = true
					if c.Op == OpUpdate {
						r.keepNew = columnsAt(rel, t.Key, h.Columns)
						r.keepOld = slices.Clone(r.keepNew)
						for j, val := range c.New {
							if val.Kind == ValueUnchanged && j < len(rel.Columns) && !slices.Contains(r.keepOld, j) {
								r.keepOld = append(r.keepOld, j)
							}
						}
						slices.Sort(r.keepOld)
					}
					uncovered = uncovered || !r.covered
					return nil
				})
			})
			if err != nil {
				return nil, fmt.Errorf("forget reads the change log's shared records (nothing was changed): %w", err)
			}
		}
	}
	if len(held) == 0 {
		verdict.classifyUncovered(recs, held)
		return verdict, nil
	}
	mark := func(f keyFlags) func(k string) {
		return func(k string) {
			if old, ok := held[k]; ok {
				held[k] = old | f
			}
		}
	}
	// Did the tenant ever hold one of those keys? Its chunks of the
	// parent tables in every set, and its own change records.
	cache := map[string][]string{}
	for _, sc := range holding {
		keys, err := v.chunksHeld(ctx, sc.s.Header(), sc.entry.Chunks, schemas, parentTables, held, cache)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			mark(heldByTenant)(k)
		}
	}
	events, err := v.tenantEvents(ctx, streams, schemas, held)
	if err != nil {
		return nil, err
	}
	for _, evs := range events {
		for _, e := range evs {
			f := heldByOther
			if e.tenant == tenant {
				f = heldByTenant
			}
			for _, k := range append(slices.Clone(e.release), e.hold...) {
				mark(f)(k)
			}
		}
	}
	propagate(recs, held, heldByTenant)
	candidate := false
	for _, f := range held {
		candidate = candidate || f&heldByTenant != 0
	}
	if !candidate && !uncovered {
		// The tenant never held a key a shared record references: none
		// is its.
		verdict.classifyUncovered(recs, held)
		return verdict, nil
	}
	// Who held the keys at each set: every tenant's chunks of the parent
	// tables in every set (reused chunks read once).
	anchors := map[string][]anchor{}
	for _, m := range headers {
		s, err := v.OpenSet(ctx, m.ID)
		if err != nil {
			return nil, err
		}
		var ts []*manifest.Tenant
		err = s.Tenants(ctx, func(t *manifest.Tenant) error {
			cp := *t
			ts = append(ts, &cp)
			return nil
		})
		s.release()
		if err != nil {
			return nil, err
		}
		a := anchor{owners: map[string]string{}, partial: m.Partial || m.Kind == manifest.KindPreRestore}
		for _, t := range ts {
			a.tenants = append(a.tenants, t.ID)
			keys, err := v.chunksHeld(ctx, m, t.Chunks, schemas, parentTables, held, cache)
			if err != nil {
				return nil, err
			}
			for _, k := range keys {
				a.owners[k] = t.ID
				if t.ID != tenant {
					mark(heldByOther)(k)
				}
			}
		}
		if lsn, err := ParseLSN(m.LSN); err == nil && m.LSNExact {
			a.lsn = lsn
			stream := StreamName(m.Source.SystemID, m.Source.Database)
			anchors[stream] = append(anchors[stream], a)
		}
	}
	verdict.classifyUncovered(recs, held)
	for _, st := range streams {
		as := anchors[st.stream]
		slices.SortStableFunc(as, func(a, b anchor) int { return cmpLSN(a.lsn, b.lsn) })
		decideCovered(verdict, tenant, st.segs, recs[st.stream], events, as, held)
	}
	return verdict, nil
}

func cmpLSN(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// propagate passes flag f from the parent keys of shared records to their
// own keys until nothing changes: a record whose parent the tenant (or
// another tenant) held made a row of that tenant's, which rows of tables
// further down the chain reference.
func propagate(recs map[string][]*sharedRecord, held map[string]keyFlags, f keyFlags) {
	for changed := true; changed; {
		changed = false
		for _, rs := range recs {
			for _, r := range rs {
				if r.kind != 0 || len(r.ownOld)+len(r.ownNew) == 0 {
					continue
				}
				has := false
				for _, p := range r.parents {
					has = has || held[p]&f != 0
				}
				if !has {
					continue
				}
				for _, k := range append(slices.Clone(r.ownOld), r.ownNew...) {
					if old, ok := held[k]; ok && old&f == 0 {
						held[k] = old | f
						changed = true
					}
				}
			}
		}
	}
}

// classifyUncovered decides the records no restore can replay (see
// coverage), from who ever held their keys: the tenant's, or possibly
// its (a key no set or record shows, a table without a scope), are
// dropped: dropping them changes no one's restore. Those provably
// another's (every key they reference held by other tenants, never by
// the erased one) stay, for `changes`. TRUNCATEs are counted wherever
// they lie.
func (vd *sharedVerdict) classifyUncovered(recs map[string][]*sharedRecord, held map[string]keyFlags) {
	propagate(recs, held, heldByOther)
	for _, rs := range recs {
		for _, r := range rs {
			if r.kind == OpTruncate {
				vd.truncates++
				continue
			}
			if r.kind == 'c' {
				// Its tuples name its tenant: the erased one's are
				// dropped (no other tenant's replay finds that row as
				// theirs), the others' kept.
				if r.colTenant == vd.tenant {
					vd.drop[r.seg] = append(vd.drop[r.seg], r.id)
					vd.dropped++
				}
				continue
			}
			if r.covered {
				if r.kind == 'u' {
					vd.undecided++
					vd.unscoped++
				}
				continue
			}
			drop := r.kind == 'u'
			for _, p := range r.parents {
				drop = drop || held[p]&heldByTenant != 0 || held[p]&heldByOther == 0
			}
			if drop {
				vd.drop[r.seg] = append(vd.drop[r.seg], r.id)
				vd.dropped++
			}
		}
	}
}

func relationsOf(idx *SegmentIndex) map[uint32]*Relation {
	rels := map[uint32]*Relation{}
	for i := range idx.Relations {
		rels[idx.Relations[i].OID] = &idx.Relations[i]
	}
	return rels
}

func eachChange(idx *SegmentIndex, cr *ChangeReader, fn func(*Change) error) error {
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return tenantvault.Integrityf("change segment %s: %v", idx.Key(), err)
		}
		if err := fn(c); err != nil {
			return err
		}
	}
}

// chunksHeld returns the keys in held that the rows of chunks hold, for
// the chunks of parentTables; cache keeps what each chunk held (reuse
// makes sets share chunks).
func (v *Vault) chunksHeld(ctx context.Context, m *manifest.Manifest, chunks []manifest.Chunk, schemas map[string]*attrSchema, parentTables map[string]bool, held map[string]keyFlags, cache map[string][]string) ([]string, error) {
	sc := schemas[StreamName(m.Source.SystemID, m.Source.Database)]
	if sc == nil {
		return nil, nil
	}
	var out []string
	for _, c := range chunks {
		if c.Table < 0 || c.Table >= len(m.Tables) || c.Pack < 0 || c.Pack >= len(m.Packs) {
			continue
		}
		t := &m.Tables[c.Table]
		tk := tableKey(t.Schema, t.Name)
		if !parentTables[tk] || len(sc.refs[tk]) == 0 {
			continue
		}
		id := fmt.Sprintf("%s@%d", m.Packs[c.Pack], c.Offset)
		if keys, ok := cache[id]; ok {
			out = append(out, keys...)
			continue
		}
		cols := tenancy.Exported(t)
		var names []string
		for _, col := range cols {
			names = append(names, col.Name)
		}
		rel := &Relation{Schema: t.Schema, Name: t.Name, Columns: names}
		rc, err := v.OpenChunk(ctx, m, c)
		if errors.Is(err, ErrTenantKeyDestroyed) {
			cache[id] = nil
			continue // an erased tenant's: beyond anyone's use
		}
		if err != nil {
			return nil, fmt.Errorf("forget reads the rows of %s to attribute shared change records (nothing was changed): %w", chunkName(m, c), err)
		}
		var keys []string
		sr := bufio.NewScanner(rc)
		sr.Buffer(make([]byte, 64<<10), 1<<30)
		for sr.Scan() {
			fields := bytes.Split(sr.Bytes(), []byte{'\t'})
			tuple := make([]Value, len(fields))
			for i, f := range fields {
				if string(f) == `\N` {
					tuple[i] = Value{Kind: ValueNull}
				} else {
					tuple[i] = Value{Kind: ValueText, Data: []byte(tenancy.UnescapeCopy(f))}
				}
			}
			for _, k := range sc.ownKeys(rel, tuple) {
				if _, ok := held[k]; ok {
					keys = append(keys, k)
				}
			}
		}
		err = sr.Err()
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("forget reads the rows of %s (nothing was changed): %w", chunkName(m, c), err)
		}
		cache[id] = keys
		out = append(out, keys...)
	}
	return out, nil
}

// filterRecords returns the records of a decoded stream without those in
// drop and with those in blank blanked, how many it kept, dropped and
// blanked (a record already blank is not counted: a resumed forget finds
// it done).
func filterRecords(raw []byte, drop map[RecordID]bool, blank map[RecordID]BlankRecord) ([]byte, int, int, int, error) {
	cr := NewChangeReader(bytes.NewReader(raw))
	var out []byte
	kept, dropped, blanked := 0, 0, 0
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return out, kept, dropped, blanked, nil
		}
		if err != nil {
			return nil, 0, 0, 0, err
		}
		id := RecordID{c.LSN, uint64(c.Seq)}
		if drop[id] {
			dropped++
			continue
		}
		if b, ok := blank[id]; ok && c.Op == OpUpdate {
			if blankSide(c, b) {
				blanked++
			}
		}
		if b, ok := blank[id]; ok && b.Move && c.Op == OpMoved {
			o, n := b, b
			o.Old, n.Old = true, false
			if x, y := blankSide(c, o), blankSide(c, n); x || y {
				blanked++
			}
		}
		out = EncodeChange(out, c)
		kept++
	}
}

// blankSide blanks the erased tenant's side of a moved row's record: in
// the old tuple its values become absent (not part of the tuple, as in a
// key-only old tuple), in the new one unchanged (taken from the old
// tuple, which the other tenant's replay reads them from). It reports
// whether anything changed.
func blankSide(c *Change, b BlankRecord) bool {
	tuple, to := c.New, ValueUnchanged
	if b.Old {
		tuple, to = c.Old, ValueAbsent
	}
	changed := false
	for i := range tuple {
		if slices.Contains(b.Keep, i) || tuple[i].Kind == to {
			continue
		}
		tuple[i] = Value{Kind: to}
		changed = true
	}
	return changed
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
