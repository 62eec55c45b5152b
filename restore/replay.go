package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Replay is the part of the change log a tenant's restore applies on top
// of its set: changes committed at or after the set's exact LSN and no
// later than At.
type Replay struct {
	From uint64 // the set's LSN
	At   time.Time
	// To, when set, ends the replay at a WAL position instead: changes
	// with commit LSN < To (verify --replay stops at the next set's LSN).
	To       uint64
	Segments []*vault.SegmentIndex

	// moved: each tenant's first move record within the replay, and the
	// relations that name its table; built once by checkMoves, which a
	// mass restore calls for every tenant.
	moved map[string]movedAt
}

type movedAt struct {
	m    *vault.Move
	rels []vault.Relation
}

// replayStats counts what a replay did; delta is the change in each
// table's rows (by table), to check the counts afterwards.
type replayStats struct {
	applied, skipped int
	delta            map[*manifest.Table]int64
	truncated        map[*manifest.Table]bool
	// last is the newest change applied: its commit LSN and time.
	lastLSN  uint64
	lastTime time.Time
}

// MovedError refuses a replay past a row that changed tenant while rows of
// other tables are scoped through it: those rows moved with it without a
// record of their own, so the change log alone cannot say where they were.
type MovedError struct {
	Tenant string
	Table  string
	LSN    uint64
	Time   time.Time
}

func (e *MovedError) Error() string {
	return fmt.Sprintf("tenant %q cannot be replayed past %s (%s): a row of %s, which rows of other tables belong to through foreign keys, moved between tenants then, and the rows that moved with it have no change records",
		e.Tenant, e.Time.UTC().Format(time.RFC3339Nano), vault.LSNString(e.LSN), e.Table)
}

// planReplay finds the change-log segments that take a set to time at, or
// nil when the source has no change log (the set alone is restored, as of
// its instant). It refuses, before anything is written, when the log has a
// gap, does not reach at yet, or a table changed shape in between.
func planReplay(ctx context.Context, v *vault.Vault, set *manifest.Manifest, at time.Time) (*Replay, error) {
	return planReplayTo(ctx, v, set, at, 0)
}

// planReplayTo plans a replay that ends at time at, or, when to is set, at
// that WAL position (exclusive).
func planReplayTo(ctx context.Context, v *vault.Vault, set *manifest.Manifest, at time.Time, to uint64) (*Replay, error) {
	stream := vault.StreamName(set.Source.SystemID, set.Source.Database)
	refs, err := v.ListSegments(ctx, stream)
	if err != nil {
		return nil, err
	}
	if len(refs) == 0 || !set.ConsistentAt.Before(at) {
		return nil, nil
	}
	if !set.LSNExact {
		return nil, tenantvault.WithHint(fmt.Sprintf("snapshot set %s was not taken at an exact LSN, so the change log cannot continue it to %s", set.ID, at.UTC().Format(time.RFC3339)),
			"sets taken by an agent with capture enabled (or snapshot --exact-lsn) can be continued; restore this one as of its own instant with --snapshot "+set.ID)
	}
	from, err := vault.ParseLSN(set.LSN)
	if err != nil {
		return nil, tenantvault.Integrityf("snapshot set %s has a bad LSN %q", set.ID, set.LSN)
	}
	rp := &Replay{From: from, At: at, To: to}
	var prev *vault.SegmentIndex
	for _, ref := range refs {
		if ref.End <= from && ref.Start != ref.End {
			continue
		}
		if ref.End < from {
			continue
		}
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			return nil, err
		}
		switch {
		case prev == nil && idx.Start > from:
			return nil, tenantvault.Inputf("the change log of %s starts at %s, after snapshot set %s (%s): changes in between were not captured; restore as of the set with --snapshot %s",
				set.Source.Database, vault.LSNString(idx.Start), set.ID, set.LSN, set.ID)
		case prev != nil && idx.Start != prev.End:
			return nil, tenantvault.Inputf("the change log of %s has a gap from %s (%s) to %s: restore to a time before %s, or from a set taken after the gap",
				set.Source.Database, vault.LSNString(prev.End), prev.Until.Format(time.RFC3339), vault.LSNString(idx.Start), prev.Until.Format(time.RFC3339))
		}
		rp.Segments = append(rp.Segments, idx)
		prev = idx
		if to != 0 && idx.End >= to || to == 0 && !idx.Until.Before(at) {
			break
		}
	}
	if to != 0 {
		if prev == nil || prev.End < to {
			return nil, tenantvault.Inputf("the change log of %s does not reach %s", set.Source.Database, vault.LSNString(to))
		}
		return rp, checkShapes(rp, set, at)
	}
	if prev != nil && prev.Until.Before(at) {
		// An idle source: the head may say the log reaches further.
		if h, err := v.ReadHead(ctx, stream); err != nil {
			return nil, err
		} else if h != nil && h.Epoch == prev.Epoch && h.End == prev.End && h.Until.After(prev.Until) {
			last := *prev
			last.Until = h.Until
			rp.Segments[len(rp.Segments)-1] = &last
			prev = &last
		}
	}
	if prev == nil || prev.Until.Before(at) {
		until := set.ConsistentAt
		if prev != nil {
			until = prev.Until
		}
		return nil, tenantvault.Inputf("changes of %s are archived up to %s; --at %s is later (wait for the capture to catch up, or choose an earlier time)",
			set.Source.Database, until.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	return rp, checkShapes(rp, set, at)
}

// checkShapes refuses a replay across a change of a table's shape: a
// column added, dropped or retyped cannot be replayed safely.
func checkShapes(rp *Replay, set *manifest.Manifest, at time.Time) error {
	for _, idx := range rp.Segments {
		for _, rel := range idx.Relations {
			t := findTable(set, rel.Schema, rel.Name)
			if t == nil {
				continue
			}
			if p := shapeChange(t, rel); p != "" {
				return tenantvault.WithHint(fmt.Sprintf("table %s changed between snapshot set %s and %s: %s", t.QualifiedName(), set.ID, at.UTC().Format(time.RFC3339), p),
					"restore to a time before the schema change, or from a set taken after it")
			}
		}
	}
	return nil
}

func findTable(set *manifest.Manifest, schema, name string) *manifest.Table {
	for i := range set.Tables {
		t := &set.Tables[i]
		if t.Schema == schema && t.Name == name && t.Kind == manifest.TableScoped {
			return t
		}
	}
	return nil
}

// shapeChange compares a table's columns in a set with a relation of the
// change log (which, like the set's chunks, leaves generated columns out).
func shapeChange(t *manifest.Table, rel vault.Relation) string {
	cols := tenancy.Exported(t)
	var diffs []string
	if len(cols) != len(rel.Columns) {
		diffs = append(diffs, fmt.Sprintf("%d columns in the set, %d in the change log", len(cols), len(rel.Columns)))
	}
	for i := range min(len(cols), len(rel.Columns)) {
		if cols[i].Name != rel.Columns[i] || cols[i].Type != rel.Types[i] {
			diffs = append(diffs, fmt.Sprintf("column %d is %s %s in the set, %s %s in the change log", i+1, cols[i].Name, cols[i].Type, rel.Columns[i], rel.Types[i]))
		}
	}
	return strings.Join(diffs, "; ")
}

// replay applies a tenant's changes inside its restore transaction, in
// commit order, sending them in pipelined batches: one round trip per
// batch, not per change. Changes archived as shared (their tenant was
// unknown when captured) are applied only when they touch this tenant's
// rows, which the transaction holds exactly as they were at that point of
// the log; the batch is flushed before each such decision.
func (r *runner) replay(ctx context.Context, conn *pgx.Conn, set *manifest.Manifest, it *Item) (replayStats, error) {
	st := replayStats{delta: map[*manifest.Table]int64{}, truncated: map[*manifest.Table]bool{}}
	rp := it.Replay
	mine := map[string]*manifest.Table{}
	for _, ti := range tenancy.TablesOf(set.Tables, it.Tenant) {
		t := &set.Tables[ti]
		mine[t.Schema+"\x00"+t.Name] = t
	}
	// Tables other tables are scoped through: a shared change that moves
	// one of their rows between tenants moves rows the log never names.
	parents := map[*manifest.Table]bool{}
	for i := range set.Tables {
		if sc := set.Tables[i].Scope; sc != nil && len(sc.Hops) > 0 {
			if t := mine[sc.Hops[0].RefSchema+"\x00"+sc.Hops[0].RefTable]; t != nil {
				parents[t] = true
			}
		}
	}
	b := &batch{conn: conn, st: &st, parents: parents, refs: referencedKeys(set, mine)}
	for _, idx := range rp.Segments {
		rels := map[uint32]*vault.Relation{}
		for i := range idx.Relations {
			rels[idx.Relations[i].OID] = &idx.Relations[i]
		}
		changes, err := r.o.Vault.ReadChanges(ctx, idx, it.Tenant)
		if err != nil {
			return st, err
		}
		for _, ch := range changes {
			if ch.LSN < rp.From || rp.To == 0 && ch.Time.After(rp.At) || rp.To != 0 && ch.LSN >= rp.To {
				continue
			}
			if ch.Op == vault.OpMoved {
				return st, movedError(it.Tenant, idx.Relations, ch.Rel, ch.LSN, ch.Time)
			}
			if err := b.apply(ctx, ch, rels, mine, it.Tenant); err != nil {
				return st, err
			}
			st.lastLSN, st.lastTime = ch.LSN, ch.Time
		}
	}
	return st, b.flush(ctx)
}

// referencedKeys returns, for each of the tenant's tables that first hops
// reference, the distinct column lists they reference it by (its primary
// key or another unique key).
func referencedKeys(set *manifest.Manifest, mine map[string]*manifest.Table) map[*manifest.Table][][]string {
	out := map[*manifest.Table][][]string{}
	for i := range set.Tables {
		sc := set.Tables[i].Scope
		if sc == nil || len(sc.Hops) == 0 {
			continue
		}
		h := sc.Hops[0]
		if t := mine[h.RefSchema+"\x00"+h.RefTable]; t != nil && !slices.ContainsFunc(out[t], func(c []string) bool { return slices.Equal(c, h.RefCols) }) {
			out[t] = append(out[t], h.RefCols)
		}
	}
	return out
}

func movedError(tenant string, rels []vault.Relation, oid uint32, lsn uint64, at time.Time) error {
	name := fmt.Sprintf("relation %d", oid)
	for _, r := range rels {
		if r.OID == oid {
			name = tenancy.Ident(r.Schema, r.Name)
		}
	}
	return &tenantvault.InputError{Err: &MovedError{Tenant: tenant, Table: name, LSN: lsn, Time: at},
		Hint: "restore to a time before it, or from a snapshot set taken after it"}
}

// checkMoves refuses, at plan time, a tenant whose replay would cross a
// move record (see MovedError); replay checks each record again.
func checkMoves(rp *Replay, tenant string) error {
	if rp.moved == nil {
		rp.moved = map[string]movedAt{}
		for _, idx := range rp.Segments {
			for _, s := range idx.Streams {
				m := s.Moved
				if s.Shared || m == nil || m.LSN < rp.From {
					continue
				}
				if rp.To != 0 && m.LSN >= rp.To || rp.To == 0 && m.Time.After(rp.At) {
					continue
				}
				if _, seen := rp.moved[s.Tenant]; !seen {
					rp.moved[s.Tenant] = movedAt{m, idx.Relations}
				}
			}
		}
	}
	if mv, ok := rp.moved[tenant]; ok {
		return movedError(tenant, mv.rels, mv.m.Rel, mv.m.LSN, mv.m.Time)
	}
	return nil
}

// errDiverged means the target did not hold the row a change expects: the
// log and the base do not fit together.
var errDiverged = errors.New("the change does not match the tenant's rows")

// batch queues statements of a replay and runs them in one pipeline.
type batch struct {
	conn    *pgx.Conn
	st      *replayStats
	parents map[*manifest.Table]bool
	// refs: the keys rows of the tenant's tables are referenced by.
	refs map[*manifest.Table][][]string
	// gone holds the referenced keys that rows of the tenant lost (deleted,
	// or re-keyed) in the transaction that committed at goneLSN: a cascade
	// deletes, detaches or re-keys the rows scoped through a row after the
	// row itself, and those changes, when archived shared, are the
	// tenant's exactly when the row they referenced was.
	gone    map[string]bool
	goneLSN uint64
	pending []stmt
}

type stmt struct {
	sql   string
	args  [][]byte
	t     *manifest.Table
	op    byte
	lsn   uint64
	ret   [][]string // referenced keys the statement returns (see batch.gone)
	where string     // for errors: which change
	// sets and match are an update's SET list and WHERE clause.
	sets, match string
}

const batchSize = 1000

func (b *batch) apply(ctx context.Context, ch vault.TenantChange, rels map[uint32]*vault.Relation, mine map[string]*manifest.Table, tenant string) error {
	where := fmt.Sprintf("change at %s (%s)", vault.LSNString(ch.LSN), ch.Time.Format(time.RFC3339Nano))
	if ch.Op == vault.OpTruncate {
		if err := b.flush(ctx); err != nil {
			return err
		}
		var ts []*manifest.Table
		for _, oid := range ch.Rels {
			if rel := rels[oid]; rel != nil {
				if t := mine[rel.Schema+"\x00"+rel.Name]; t != nil {
					ts = append(ts, t)
				}
			}
		}
		// The tenant's rows are found through their chains: rows scoped
		// through others go first, while the rows they reference are still
		// there (TRUNCATE ... CASCADE names the parents first), or they
		// would stay behind, orphaned.
		slices.SortStableFunc(ts, func(a, c *manifest.Table) int { return hops(c) - hops(a) })
		for _, t := range ts {
			if _, err := b.conn.Exec(ctx, tenancy.DeleteSQL(t), tenant); err != nil {
				return fmt.Errorf("replay %s: %w", where, err)
			}
			b.st.truncated[t], b.st.delta[t] = true, 0
			b.st.applied++
		}
		return nil
	}
	rel := rels[ch.Rel]
	if rel == nil {
		return tenantvault.Integrityf("replay %s: it refers to relation %d the segment does not describe", where, ch.Rel)
	}
	t := mine[rel.Schema+"\x00"+rel.Name]
	if t == nil {
		b.st.skipped++
		return nil
	}
	change := ch.Change
	if ch.Shared {
		if err := b.flush(ctx); err != nil {
			return err
		}
		var err error
		if change, err = b.attribute(ctx, t, rel, ch.Change, tenant); err != nil {
			return fmt.Errorf("replay %s: %w", where, err)
		}
		if ch.Op == vault.OpUpdate && b.parents[t] && change != nil && change.Op != vault.OpUpdate {
			// The row joins or leaves the tenant, and rows scoped
			// through it go with it: what a move record would say.
			return movedError(tenant, []vault.Relation{*rel}, rel.OID, ch.LSN, ch.Time)
		}
		if change == nil {
			b.st.skipped++
			return nil
		}
	}
	s, err := statement(t, rel, change)
	if err != nil {
		return fmt.Errorf("replay %s: %w", where, err)
	}
	s.where, s.lsn = where, ch.LSN
	if refs := b.refs[t]; len(refs) > 0 && s.op != vault.OpInsert {
		// The row's referenced keys as they were: a delete returns them;
		// an update returns them from before (a CTE reads the row as the
		// statement found it) and after, as an ON UPDATE CASCADE of the
		// key changes the referencing rows after it.
		var cols, olds, aliases []string
		for _, rk := range refs {
			for _, c := range rk {
				cols = append(cols, tenancy.Ident(c)+"::text")
				olds = append(olds, tenancy.Ident(c))
				aliases = append(aliases, tenancy.Ident(fmt.Sprintf("tenantvault_old_%d", len(aliases))))
			}
		}
		s.ret = refs
		if s.op == vault.OpDelete {
			s.sql += " RETURNING " + strings.Join(cols, ", ")
		} else {
			name := tenancy.Ident(t.Schema, t.Name)
			ret := make([]string, len(aliases))
			for i, a := range aliases {
				ret[i] = a + "::text"
			}
			s.sql = fmt.Sprintf("WITH tenantvault_old (%s) AS (SELECT %s FROM %s WHERE %s) UPDATE %s SET %s FROM tenantvault_old WHERE %s RETURNING %s, %s",
				strings.Join(aliases, ", "), strings.Join(olds, ", "), name, s.match, name, s.sets, s.match, strings.Join(ret, ", "), strings.Join(cols, ", "))
		}
	}
	b.pending = append(b.pending, s)
	if len(b.pending) >= batchSize {
		return b.flush(ctx)
	}
	return nil
}

// flush runs the queued statements; each must touch exactly one row.
func (b *batch) flush(ctx context.Context) error {
	if len(b.pending) == 0 {
		return nil
	}
	p := b.conn.PgConn().StartPipeline(ctx)
	for _, s := range b.pending {
		p.SendQueryParams(s.sql, s.args, nil, nil, nil)
	}
	p.SendPipelineSync()
	if err := p.Flush(); err != nil {
		p.Close()
		return err
	}
	var first error
	for _, s := range b.pending {
		res, err := p.GetResults()
		if err == nil {
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				err = fmt.Errorf("unexpected pipeline result %T", res)
			} else {
				for rr.NextRow() {
					b.noteGone(s, rr.Values())
				}
				var tag pgconn.CommandTag
				tag, err = rr.Close()
				if err == nil && tag.RowsAffected() != 1 {
					err = tenantvault.Integrityf("%s of %s affected %d rows: %v", opName(s.op), s.t.QualifiedName(), tag.RowsAffected(), errDiverged)
				}
			}
		}
		if err != nil {
			if first == nil {
				first = fmt.Errorf("replay %s: %w", s.where, err)
			}
			continue
		}
		b.st.applied++
		switch s.op {
		case vault.OpInsert:
			b.st.delta[s.t]++
		case vault.OpDelete:
			b.st.delta[s.t]--
		}
	}
	if _, err := p.GetResults(); err != nil && first == nil {
		first = err
	}
	if err := p.Close(); err != nil && first == nil {
		first = err
	}
	b.pending = b.pending[:0]
	return first
}

func hops(t *manifest.Table) int {
	if t.Scope == nil {
		return 0
	}
	return len(t.Scope.Hops)
}

// noteGone records the referenced keys a row of the tenant no longer has:
// those of a deleted row, the old values of an updated one that changed
// (vals: what the statement's RETURNING clause read: the keys, for an
// update before then after).
func (b *batch) noteGone(s stmt, vals [][]byte) {
	if b.gone == nil || b.goneLSN != s.lsn {
		b.gone, b.goneLSN = map[string]bool{}, s.lsn
	}
	n := 0
	for _, cols := range s.ret {
		n += len(cols)
	}
	if len(vals) < n {
		return
	}
	i := 0
	for _, cols := range s.ret {
		kv := vals[i : i+len(cols)]
		if s.op == vault.OpUpdate && len(vals) >= 2*n && slices.EqualFunc(kv, vals[n+i:n+i+len(cols)], sameValue) {
			kv = nil // the key did not change
		}
		i += len(cols)
		if kv == nil || slices.ContainsFunc(kv, func(v []byte) bool { return v == nil }) {
			continue // a NULL key: nothing references the row through it
		}
		b.gone[vault.RowKey(s.t.Schema, s.t.Name, cols, kv)] = true
	}
}

// sameValue compares two text values, NULL (nil) included.
func sameValue(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// statement renders the SQL that applies one change.
func statement(t *manifest.Table, rel *vault.Relation, ch *vault.Change) (stmt, error) {
	s := stmt{t: t, op: ch.Op}
	switch ch.Op {
	case vault.OpInsert:
		var cols, ph []string
		for i, v := range ch.New {
			if v.Kind != vault.ValueText && v.Kind != vault.ValueNull {
				continue
			}
			cols = append(cols, tenancy.Ident(rel.Columns[i]))
			s.args = append(s.args, valueArg(v))
			ph = append(ph, fmt.Sprintf("$%d", len(s.args)))
		}
		// The row keeps its identity value, as COPY does.
		s.sql = fmt.Sprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s)", tenancy.Ident(t.Schema, t.Name), strings.Join(cols, ", "), strings.Join(ph, ", "))
	case vault.OpUpdate:
		always := map[string]bool{}
		for _, c := range t.Columns {
			always[c.Name] = c.Identity == "always"
		}
		var sets []string
		for i, v := range ch.New {
			// An identity column that is always generated can only be
			// set to DEFAULT, so an UPDATE never changes it.
			if v.Kind != vault.ValueText && v.Kind != vault.ValueNull || always[rel.Columns[i]] {
				continue
			}
			s.args = append(s.args, valueArg(v))
			sets = append(sets, fmt.Sprintf("%s = $%d", tenancy.Ident(rel.Columns[i]), len(s.args)))
		}
		where, wargs, err := rowMatch(t, rel, ch, len(s.args))
		if err != nil {
			return s, err
		}
		s.args = append(s.args, wargs...)
		s.sql = fmt.Sprintf("UPDATE %s SET %s WHERE %s", tenancy.Ident(t.Schema, t.Name), strings.Join(sets, ", "), where)
		s.sets, s.match = strings.Join(sets, ", "), where
	case vault.OpDelete:
		where, wargs, err := rowMatch(t, rel, ch, 0)
		if err != nil {
			return s, err
		}
		s.args = wargs
		s.sql = fmt.Sprintf("DELETE FROM %s WHERE %s", tenancy.Ident(t.Schema, t.Name), where)
	default:
		return s, tenantvault.Integrityf("unknown change operation %q", ch.Op)
	}
	return s, nil
}

func opName(op byte) string {
	switch op {
	case vault.OpInsert:
		return "insert"
	case vault.OpUpdate:
		return "update"
	case vault.OpDelete:
		return "delete"
	}
	return "truncate"
}

func valueArg(v vault.Value) []byte {
	if v.Kind == vault.ValueNull {
		return nil
	}
	if v.Data == nil {
		return []byte{}
	}
	return v.Data
}

// rowMatch renders the WHERE clause that finds the row a change updates or
// deletes: by primary key (from the old key tuple, else the new row), or,
// for a table without one (or whose replica identity is another unique
// index, so the old tuple lacks the primary key), by every column the old
// tuple carries, one row.
func rowMatch(t *manifest.Table, rel *vault.Relation, ch *vault.Change, argBase int) (string, [][]byte, error) {
	pos := map[string]int{}
	for i, c := range rel.Columns {
		pos[c] = i
	}
	var conds []string
	var args [][]byte
	byKey := len(t.Key) > 0
	for _, k := range t.Key {
		p, ok := pos[k]
		if !ok {
			return "", nil, tenantvault.Integrityf("key column %s of %s is not in the change log", k, t.QualifiedName())
		}
		v, ok := keyValue(ch, p)
		if !ok {
			if ch.Old == nil {
				return "", nil, tenantvault.Integrityf("the change to %s does not carry its key column %s", t.QualifiedName(), k)
			}
			byKey = false
			break
		}
		args = append(args, valueArg(v))
		conds = append(conds, fmt.Sprintf("%s = $%d", tenancy.Ident(k), argBase+len(args)))
	}
	if byKey {
		return strings.Join(conds, " AND "), args, nil
	}
	if ch.Old == nil {
		return "", nil, tenantvault.Integrityf("a change to %s (no primary key) lacks its old row: set REPLICA IDENTITY FULL", t.QualifiedName())
	}
	conds, args = nil, nil
	for i, v := range ch.Old {
		if v.Kind != vault.ValueText && v.Kind != vault.ValueNull {
			continue
		}
		args = append(args, valueArg(v))
		conds = append(conds, fmt.Sprintf("%s::text IS NOT DISTINCT FROM $%d::text", tenancy.Ident(rel.Columns[i]), argBase+len(args)))
	}
	name := tenancy.Ident(t.Schema, t.Name)
	return fmt.Sprintf("(tableoid, ctid) = (SELECT tableoid, ctid FROM %s WHERE %s LIMIT 1)", name, strings.Join(conds, " AND ")), args, nil
}

// keyValue reads a key column from the old key tuple, else the new row.
func keyValue(ch *vault.Change, p int) (vault.Value, bool) {
	for _, t := range [][]vault.Value{ch.Old, ch.New} {
		if p < len(t) && (t[p].Kind == vault.ValueText || t[p].Kind == vault.ValueNull) {
			return t[p], true
		}
	}
	return vault.Value{}, false
}

// attribute decides what a shared change (one whose tenant was not known
// when it was captured) does to this tenant, from the tenant's own rows,
// which the transaction holds as they were at this point of the log: the
// change itself when the row is the tenant's before and after it; a delete
// when the row leaves the tenant; an insert of the whole row when it joins;
// nil when it never was the tenant's.
func (b *batch) attribute(ctx context.Context, t *manifest.Table, rel *vault.Relation, ch *vault.Change, tenant string) (*vault.Change, error) {
	conn := b.conn
	pos := map[string]int{}
	for i, c := range rel.Columns {
		pos[c] = i
	}
	var before, after bool
	var err error
	if ch.Op != vault.OpInsert {
		if before, err = rowIsTenants(ctx, conn, t, pos, ch, tenant); err != nil {
			return nil, err
		}
		if !before {
			if before, err = b.orphaned(ctx, t, pos, ch); err != nil {
				return nil, err
			}
		}
	}
	switch ch.Op {
	case vault.OpInsert:
		if after, err = parentIsTenants(ctx, conn, t, pos, ch.New, tenant); err != nil {
			return nil, err
		}
	case vault.OpUpdate:
		after = before
		if ch.Old != nil && t.Scope != nil && len(t.Scope.Hops) > 0 {
			if after, err = parentIsTenants(ctx, conn, t, pos, vault.FillUnchanged(ch.New, ch.Old), tenant); err != nil {
				return nil, err
			}
		}
	}
	switch {
	case before == after && before:
		return ch, nil
	case before:
		if ch.Op == vault.OpDelete {
			return ch, nil
		}
		return &vault.Change{LSN: ch.LSN, Seq: ch.Seq, Time: ch.Time, Rel: ch.Rel, Op: vault.OpDelete, Old: ch.Old}, nil
	case after:
		if ch.Op == vault.OpInsert {
			return ch, nil
		}
		full := vault.FillUnchanged(ch.New, ch.Old)
		for _, v := range full {
			if v.Kind == vault.ValueUnchanged {
				return nil, tenantvault.Integrityf("a row of %s joins the tenant, but the change log lacks some of its values", t.QualifiedName())
			}
		}
		return &vault.Change{LSN: ch.LSN, Seq: ch.Seq, Time: ch.Time, Rel: ch.Rel, Op: vault.OpInsert, New: full}, nil
	}
	return nil, nil
}

// orphaned reports whether the row a shared update or delete finds was the
// tenant's until earlier in the same transaction, when this replay deleted
// (or re-keyed) the tenant's row its first hop references: a cascade
// changes a row before the rows scoped through it, so by then their chain
// no longer reaches the tenant in the target, and the capture could not
// look it up either. The row the target holds (its key's row, or, for a
// table without a key, the whole old row the change carries) references
// exactly that row: the referenced key is unique, so no other row held it
// while the tenant's did.
func (b *batch) orphaned(ctx context.Context, t *manifest.Table, pos map[string]int, ch *vault.Change) (bool, error) {
	if len(b.gone) == 0 || b.goneLSN != ch.LSN || t.Scope == nil || len(t.Scope.Hops) == 0 {
		return false, nil
	}
	h := t.Scope.Hops[0]
	var sel, conds []string
	var args [][]byte
	for _, k := range t.Key {
		p, ok := pos[k]
		v, text := keyValue(ch, p)
		if !ok || !text || v.Kind != vault.ValueText {
			break
		}
		args = append(args, v.Data)
		conds = append(conds, fmt.Sprintf("%s = $%d", tenancy.Ident(k), len(args)))
	}
	var vals [][]byte
	if len(t.Key) > 0 && len(conds) == len(t.Key) {
		for _, c := range h.Columns {
			sel = append(sel, tenancy.Ident(c)+"::text")
		}
		sql := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(sel, ", "), tenancy.Ident(t.Schema, t.Name), strings.Join(conds, " AND "))
		res := b.conn.PgConn().ExecParams(ctx, sql, args, nil, nil, nil).Read()
		if res.Err != nil {
			return false, res.Err
		}
		if len(res.Rows) != 1 || slices.ContainsFunc(res.Rows[0], func(v []byte) bool { return v == nil }) {
			return false, nil
		}
		vals = res.Rows[0]
	} else {
		// Found by its whole old row (no key, or the change does not carry
		// it): that row's own foreign key.
		for _, c := range h.Columns {
			p, ok := pos[c]
			v, text := valueAt(ch.Old, p)
			if !ok || !text {
				return false, nil
			}
			vals = append(vals, v.Data)
		}
	}
	return b.gone[vault.RowKey(h.RefSchema, h.RefTable, h.RefCols, vals)], nil
}

// rowIsTenants reports whether the row an update or delete finds is the
// tenant's: by its key, or, for a table without one, by what its old row
// references.
func rowIsTenants(ctx context.Context, conn *pgx.Conn, t *manifest.Table, pos map[string]int, ch *vault.Change, tenant string) (bool, error) {
	if len(t.Key) == 0 {
		if t.Scope == nil || len(t.Scope.Hops) == 0 || ch.Old == nil {
			return false, tenantvault.Integrityf("cannot attribute a change to %s: no primary key", t.QualifiedName())
		}
		return parentIsTenants(ctx, conn, t, pos, ch.Old, tenant)
	}
	var vals [][]byte
	for _, k := range t.Key {
		v, ok := keyValue(ch, pos[k])
		if !ok && ch.Old != nil && t.Scope != nil && len(t.Scope.Hops) > 0 {
			// The key was not sent (an identity on another index): the
			// row is found by its old row, as rowMatch does, and its
			// tenant by what that references.
			return parentIsTenants(ctx, conn, t, pos, ch.Old, tenant)
		}
		if !ok || v.Kind != vault.ValueText {
			return false, nil
		}
		vals = append(vals, v.Data)
	}
	return tenantIs(ctx, conn, t, t.Key, vals, tenant)
}

// parentIsTenants reports whether the row a chain-scoped tuple references
// is the tenant's.
func parentIsTenants(ctx context.Context, conn *pgx.Conn, t *manifest.Table, pos map[string]int, tuple []vault.Value, tenant string) (bool, error) {
	if t.Scope == nil || len(t.Scope.Hops) == 0 {
		return false, nil
	}
	var vals [][]byte
	for _, c := range t.Scope.Hops[0].Columns {
		v, ok := valueAt(tuple, pos[c])
		if !ok {
			return false, nil
		}
		vals = append(vals, v.Data)
	}
	return tenantIs(ctx, conn, tenancy.ParentScope(t), t.Scope.Hops[0].RefCols, vals, tenant)
}

func valueAt(t []vault.Value, i int) (vault.Value, bool) {
	if i < 0 || i >= len(t) {
		return vault.Value{}, false
	}
	return t[i], t[i].Kind == vault.ValueText
}

func tenantIs(ctx context.Context, conn *pgx.Conn, t *manifest.Table, cols []string, vals [][]byte, tenant string) (bool, error) {
	res := conn.PgConn().ExecParams(ctx, tenancy.TenantByKeySQL(t, cols), vals, nil, nil, nil).Read()
	if res.Err != nil {
		return false, res.Err
	}
	return len(res.Rows) > 0 && res.Rows[0][0] != nil && string(res.Rows[0][0]) == tenant, nil
}

// checkCounts compares each table's rows after a replay with what the base
// and the applied changes add up to: nothing but the replay touched them.
func checkCounts(ctx context.Context, conn *pgx.Conn, set *manifest.Manifest, it *Item, st replayStats) (int64, error) {
	base := map[int]int64{}
	for _, c := range it.T.Chunks {
		base[c.Table] = c.Rows
	}
	var total int64
	for _, ti := range tenancy.TablesOf(set.Tables, it.Tenant) {
		t := &set.Tables[ti]
		want := base[ti] + st.delta[t]
		if st.truncated[t] {
			want = st.delta[t]
		}
		var got int64
		if err := conn.QueryRow(ctx, tenancy.CountSQL(t), it.Tenant).Scan(&got); err != nil {
			return 0, err
		}
		if got != want {
			return 0, tenantvault.Integrityf("%s holds %d rows of the tenant after replay, the set and the change log add up to %d", t.QualifiedName(), got, want)
		}
		total += got
	}
	return total, nil
}
