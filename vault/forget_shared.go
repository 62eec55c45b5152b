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
	"strings"

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

type keyFlags uint8

const (
	heldByTenant keyFlags = 1 << iota // the erased tenant held the key
	heldByOther                       // someone else did (or may have)
)

// sharedRecord is what attribution keeps of one shared record.
type sharedRecord struct {
	seg     SegmentRef
	id      RecordID
	kind    byte     // 0: attributable; 'T': TRUNCATE; 'u': no scope to follow
	parents []string // parent keys its first hop references (old and new tuple)
	own     []string // its own referenced keys (other tables' first hops reference its table)
	covered bool     // a set the log continues lies before it
}

// sharedVerdict is what attribution decided.
type sharedVerdict struct {
	drop      map[SegmentRef][]RecordID
	total     int
	dropped   int
	undecided int
	truncates int
	// Why the undecided were kept, by reason.
	other, uncovered, unscoped int
}

// attrSchema is what attribution knows of a source's tables: the newest
// definition of each scoped table in any set of the source, and the keys
// first hops reference each table by.
type attrSchema struct {
	tables map[string]*manifest.Table // schema\0name
	refs   map[string][][]string
}

func tableKey(schema, name string) string { return schema + "\x00" + name }

// keyString names the values of a referenced key of table schema.name
// (as replay's goneKey does).
func keyString(schema, name string, cols []string, vals [][]byte) string {
	var k strings.Builder
	k.WriteString(schema + "\x00" + name + "\x00" + strings.Join(cols, "\x00") + "\x00")
	for _, v := range vals {
		fmt.Fprintf(&k, "%d:%s", len(v), v)
	}
	return k.String()
}

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
				out = append(out, keyString(rel.Schema, rel.Name, cols, vals))
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
// exact set LSN inside it. covered(i, lsn) reports it for segment i.
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

// attributeShared decides which shared records of the log are tenant's.
// holding are the tenant's entries in the sets that hold it (with their
// set's header); headers are every set's.
func (v *Vault) attributeShared(ctx context.Context, tenant string, headers []*manifest.Manifest, holding []setScan, streams []segmentStreams) (*sharedVerdict, error) {
	verdict := &sharedVerdict{drop: map[SegmentRef][]RecordID{}}
	schemas, exact := schemasOf(headers)
	var recs []*sharedRecord
	held := map[string]keyFlags{} // only the keys shared records reference
	parentTables := map[string]bool{}
	for _, st := range streams {
		sc := schemas[st.stream]
		covered := coverage(st.segs, exact[st.stream])
		for i, idx := range st.segs {
			rels := relationsOf(idx)
			err := v.ScanSegment(ctx, idx, func(s SegmentStream) bool { return s.Shared }, func(s SegmentStream, cr *ChangeReader) error {
				return eachChange(idx, cr, func(c *Change) error {
					verdict.total++
					r := &sharedRecord{seg: SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}, id: RecordID{c.LSN, uint64(c.Seq)}, covered: covered(i, c.LSN)}
					recs = append(recs, r)
					if c.Op == OpTruncate {
						r.kind = OpTruncate
						return nil
					}
					rel := rels[c.Rel]
					var t *manifest.Table
					if rel != nil && sc != nil {
						t = sc.tables[tableKey(rel.Schema, rel.Name)]
					}
					if t == nil || t.Scope == nil || len(t.Scope.Hops) == 0 {
						r.kind = 'u'
						return nil
					}
					h := t.Scope.Hops[0]
					for _, tp := range [][]Value{c.Old, FillUnchanged(c.New, c.Old)} {
						if tp == nil {
							continue
						}
						vals, ok, missing := tupleKey(rel, tp, h.Columns)
						if missing {
							r.kind = 'u'
							return nil
						}
						if ok {
							k := keyString(h.RefSchema, h.RefTable, h.RefCols, vals)
							r.parents = append(r.parents, k)
							held[k] |= 0
						}
					}
					parentTables[tableKey(h.RefSchema, h.RefTable)] = true
					r.own = sc.ownKeys(rel, c.Old, FillUnchanged(c.New, c.Old))
					return nil
				})
			})
			if err != nil {
				return nil, fmt.Errorf("forget reads the change log's shared records (nothing was changed): %w", err)
			}
		}
	}
	if len(held) == 0 {
		verdict.classify(recs, held)
		return verdict, nil
	}
	mark := func(f keyFlags) func(k string) {
		return func(k string) {
			if old, ok := held[k]; ok {
				held[k] = old | f
			}
		}
	}
	// The tenant's own keys: its chunks of the parent tables in every
	// set, and its own change records.
	seen := map[string]bool{}
	for _, sc := range holding {
		m := sc.s.Header()
		if err := v.chunkKeys(ctx, m, sc.entry.Chunks, schemas, parentTables, seen, mark(heldByTenant)); err != nil {
			return nil, err
		}
	}
	if err := v.streamKeys(ctx, streams, schemas, func(s SegmentStream) bool { return !s.Shared && s.Tenant == tenant }, mark(heldByTenant)); err != nil {
		return nil, err
	}
	propagate(recs, held, heldByTenant)
	candidate := false
	for _, f := range held {
		candidate = candidate || f&heldByTenant != 0
	}
	if candidate {
		// Did anyone else ever hold one of those keys? Every other
		// tenant's chunks of the parent tables and change records.
		for _, m := range headers {
			s, err := v.OpenSet(ctx, m.ID)
			if err != nil {
				return nil, err
			}
			var chunks []manifest.Chunk
			err = s.Tenants(ctx, func(t *manifest.Tenant) error {
				if t.ID != tenant {
					chunks = append(chunks, t.Chunks...)
				}
				return nil
			})
			s.release()
			if err != nil {
				return nil, err
			}
			if err := v.chunkKeys(ctx, m, chunks, schemas, parentTables, seen, mark(heldByOther)); err != nil {
				return nil, err
			}
		}
		if err := v.streamKeys(ctx, streams, schemas, func(s SegmentStream) bool { return !s.Shared && s.Tenant != tenant }, mark(heldByOther)); err != nil {
			return nil, err
		}
	}
	verdict.classify(recs, held)
	return verdict, nil
}

// propagate passes flag f from the parent keys of shared records to their
// own keys until nothing changes: a record whose parent the tenant held
// made a row of the tenant's, which rows of tables further down the chain
// reference. For heldByOther, a covered record whose parent no one is
// known to hold is another's too.
func propagate(recs []*sharedRecord, held map[string]keyFlags, f keyFlags) {
	for changed := true; changed; {
		changed = false
		for _, r := range recs {
			if r.kind != 0 || len(r.own) == 0 {
				continue
			}
			has := false
			for _, p := range r.parents {
				has = has || held[p]&f != 0 || f == heldByOther && held[p] == 0
			}
			if !has {
				continue
			}
			for _, k := range r.own {
				if old, ok := held[k]; ok && old&f == 0 {
					held[k] = old | f
					changed = true
				}
			}
		}
	}
}

// classify decides each record, after the tenant's and others' keys are
// known.
func (vd *sharedVerdict) classify(recs []*sharedRecord, held map[string]keyFlags) {
	propagate(recs, held, heldByOther)
	for _, r := range recs {
		switch r.kind {
		case OpTruncate:
			vd.truncates++
			continue
		case 'u':
			vd.undecided++
			vd.unscoped++
			continue
		}
		mine, other := false, false
		for _, p := range r.parents {
			mine = mine || held[p]&heldByTenant != 0
			other = other || held[p]&heldByOther != 0 || held[p] == 0
		}
		switch {
		case mine && !other && r.covered:
			vd.drop[r.seg] = append(vd.drop[r.seg], r.id)
			vd.dropped++
		case mine && other:
			vd.undecided++
			vd.other++
		case !r.covered:
			vd.undecided++
			vd.uncovered++
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

// streamKeys marks the referenced keys that the records of the streams
// want picks hold.
func (v *Vault) streamKeys(ctx context.Context, streams []segmentStreams, schemas map[string]*attrSchema, want func(SegmentStream) bool, mark func(string)) error {
	for _, st := range streams {
		sc := schemas[st.stream]
		if sc == nil {
			continue
		}
		for _, idx := range st.segs {
			rels := relationsOf(idx)
			err := v.ScanSegment(ctx, idx, want, func(s SegmentStream, cr *ChangeReader) error {
				return eachChange(idx, cr, func(c *Change) error {
					if rel := rels[c.Rel]; rel != nil && c.Op != OpTruncate {
						for _, k := range sc.ownKeys(rel, c.Old, FillUnchanged(c.New, c.Old)) {
							mark(k)
						}
					}
					return nil
				})
			})
			if errors.Is(err, ErrTenantKeyDestroyed) {
				continue
			}
			if err != nil {
				return fmt.Errorf("forget reads the change log (nothing was changed): %w", err)
			}
		}
	}
	return nil
}

// chunkKeys marks the referenced keys the rows of chunks hold, for the
// chunks of parentTables; seen skips chunks read before (reuse makes
// sets share them).
func (v *Vault) chunkKeys(ctx context.Context, m *manifest.Manifest, chunks []manifest.Chunk, schemas map[string]*attrSchema, parentTables map[string]bool, seen map[string]bool, mark func(string)) error {
	sc := schemas[StreamName(m.Source.SystemID, m.Source.Database)]
	if sc == nil {
		return nil
	}
	for _, c := range chunks {
		if c.Table < 0 || c.Table >= len(m.Tables) {
			continue
		}
		t := &m.Tables[c.Table]
		tk := tableKey(t.Schema, t.Name)
		if !parentTables[tk] || len(sc.refs[tk]) == 0 {
			continue
		}
		id := fmt.Sprintf("%s@%d", m.Packs[c.Pack], c.Offset)
		if seen[id] {
			continue
		}
		seen[id] = true
		cols := tenancy.Exported(t)
		var names []string
		for _, col := range cols {
			names = append(names, col.Name)
		}
		rel := &Relation{Schema: t.Schema, Name: t.Name, Columns: names}
		rc, err := v.OpenChunk(ctx, m, c)
		if errors.Is(err, ErrTenantKeyDestroyed) {
			continue // an erased tenant's: beyond anyone's use
		}
		if err != nil {
			return fmt.Errorf("forget reads the rows of %s to attribute shared change records (nothing was changed): %w", chunkName(m, c), err)
		}
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
				mark(k)
			}
		}
		err = sr.Err()
		rc.Close()
		if err != nil {
			return fmt.Errorf("forget reads the rows of %s (nothing was changed): %w", chunkName(m, c), err)
		}
	}
	return nil
}

// filterRecords returns the records of a decoded stream without those in
// drop, and how many it dropped.
func filterRecords(raw []byte, drop map[RecordID]bool) ([]byte, int, int, error) {
	cr := NewChangeReader(bytes.NewReader(raw))
	var out []byte
	kept, dropped := 0, 0
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return out, kept, dropped, nil
		}
		if err != nil {
			return nil, 0, 0, err
		}
		if drop[RecordID{c.LSN, uint64(c.Seq)}] {
			dropped++
			continue
		}
		out = EncodeChange(out, c)
		kept++
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
