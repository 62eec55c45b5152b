package capture

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// resolver finds the tenant of each change. Rows of tables with the tenant
// column carry it; rows of tables scoped through foreign keys are resolved
// through the row they reference: first among rows seen earlier in the same
// transaction (a cascade delete removes the parent before the children),
// then in a bounded cache of rows seen in the stream, then by a lookup in
// the source. The source is read as it is now, not as it was when the
// change committed, so a lookup is trusted only when every row it read was
// last written by a transaction that committed before that change (see
// horizon); otherwise, or when the parent is gone, the change is archived
// as shared, and replay attributes it from the tenant's own rows, which it
// holds exactly as they were at that point of the log.
type resolver struct {
	conn   *pgx.Conn
	cfg    tenancy.Config
	tables map[string]*manifest.Table
	// referenced holds, for each table that chain-scoped tables reach with
	// their first hop, the distinct column lists those hops reference: the
	// primary key or any other unique key. The resolver remembers parents'
	// tenants by exactly these, since that is how children look them up.
	referenced map[string][][]string
	// carriers holds the tables whose rows other remembered rows reach
	// their tenant through: a table that first hops reference, which
	// itself references a row of this one with its first hop. When a row
	// of a carrier changes tenant, so do rows remembered under other keys.
	carriers  map[string]bool
	txn       map[string]string
	cache     map[string]string
	horizons  []horizon
	lastTaken time.Time
}

// horizon is a transaction horizon read together with the WAL insert
// position: every transaction with an ID below xmin had finished when
// the position was read, so those that committed did so before any
// commit record at or after lsn.
type horizon struct {
	xmin uint64 // full (epoch-qualified) transaction ID
	lsn  uint64
}

const (
	maxCache    = 200_000
	maxHorizons = 64
	horizonAge  = time.Second
)

func newResolver(conn *pgx.Conn, tables []manifest.Table, cfg tenancy.Config) *resolver {
	r := &resolver{conn: conn, cfg: cfg, tables: map[string]*manifest.Table{}, referenced: map[string][][]string{}, carriers: map[string]bool{}, cache: map[string]string{}}
	for i := range tables {
		t := &tables[i]
		if t.Kind == manifest.TableScoped {
			r.tables[t.Schema+"\x00"+t.Name] = t
			if t.Scope != nil && len(t.Scope.Hops) > 0 {
				h := t.Scope.Hops[0]
				k := h.RefSchema + "\x00" + h.RefTable
				if !slices.ContainsFunc(r.referenced[k], func(c []string) bool { return slices.Equal(c, h.RefCols) }) {
					r.referenced[k] = append(r.referenced[k], h.RefCols)
				}
			}
		}
	}
	for i := range tables {
		t := &tables[i]
		if t.Kind == manifest.TableScoped && t.Scope != nil && len(t.Scope.Hops) > 0 && len(r.referenced[t.Schema+"\x00"+t.Name]) > 0 {
			h := t.Scope.Hops[0]
			r.carriers[h.RefSchema+"\x00"+h.RefTable] = true
		}
	}
	return r
}

// refKey is a key of a table that other tables' first hops reference:
// its columns and their positions in the relation.
type refKey struct {
	cols []string
	pos  []int
}

// refKeys returns the keys of schema.name that chain-scoped tables
// reference, located in a relation's columns (pos: name -> position). A
// key with a column the relation lacks is left out: nothing is remembered
// under it, and children's changes are looked up instead.
func (r *resolver) refKeys(schema, name string, pos map[string]int) []refKey {
	var out []refKey
	for _, cols := range r.referenced[schema+"\x00"+name] {
		rk := refKey{cols: cols}
		for _, c := range cols {
			if p, ok := pos[c]; ok {
				rk.pos = append(rk.pos, p)
			}
		}
		if len(rk.pos) == len(cols) {
			out = append(out, rk)
		}
	}
	return out
}

// table returns the tenant table schema.name, or nil. In the schema model a
// table in a schema created since the capture started is a new tenant's.
func (r *resolver) table(schema, name string) *manifest.Table {
	if t := r.tables[schema+"\x00"+name]; t != nil {
		return t
	}
	if r.cfg.Model == tenancy.ModelSchema && like(schema, r.cfg.SchemaPattern) {
		t := &manifest.Table{Schema: schema, Name: name, Kind: manifest.TableScoped, Owner: schema}
		r.tables[schema+"\x00"+name] = t
		return t
	}
	return nil
}

func (r *resolver) beginTxn() { r.txn = map[string]string{} }

// takeHorizon reads a new horizon; the capture takes one before its slot
// exists, and more while lookups need them.
func (r *resolver) takeHorizon(ctx context.Context) error {
	var xmin int64
	var lsn string
	if err := r.conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, pg_current_wal_insert_lsn()::text`).Scan(&xmin, &lsn); err != nil {
		return fmt.Errorf("read transaction horizon: %w", err)
	}
	l, err := vault.ParseLSN(lsn)
	if err != nil {
		return err
	}
	r.lastTaken = time.Now()
	if n := len(r.horizons); n > 0 && r.horizons[n-1].lsn >= l {
		return nil
	}
	if len(r.horizons) >= maxHorizons {
		return nil // far behind: the horizons already held will do
	}
	r.horizons = append(r.horizons, horizon{xmin: uint64(xmin), lsn: l})
	return nil
}

// horizonAt returns the newest horizon read no later than commit position
// lsn, dropping the ones it supersedes; false when none is that old.
func (r *resolver) horizonAt(lsn uint64) (horizon, bool) {
	i := 0
	for i+1 < len(r.horizons) && r.horizons[i+1].lsn <= lsn {
		i++
	}
	r.horizons = r.horizons[i:]
	if len(r.horizons) == 0 || r.horizons[0].lsn > lsn {
		return horizon{}, false
	}
	return r.horizons[0], true
}

type tenantChange struct {
	tenant string
	change *vault.Change
}

func valueAt(t []vault.Value, i int) (vault.Value, bool) {
	if t == nil || i < 0 || i >= len(t) {
		return vault.Value{}, false
	}
	v := t[i]
	return v, v.Kind == vault.ValueText
}

// remember notes which tenant the row of this tuple belongs to, under
// each key its children reference it by. txnOnly keeps it out of the
// long-lived cache: a deleted row (or the old values of a changed key) is
// still found by the changes of its children later in the same
// transaction (a cascade deletes or detaches them after it), and by no
// other. With strict, a key whose values the tuple does not carry (an
// unchanged out-of-line value) drops everything known: its entry may name
// the row's old tenant, and a missing entry only costs a lookup.
func (r *resolver) remember(t *manifest.Table, ri *relInfo, tuple []vault.Value, tenant string, txnOnly, strict bool) {
	for _, rk := range ri.refs {
		vals, ok := refValues(rk, tuple)
		if !ok {
			if strict && !refNull(rk, tuple) {
				r.txn, r.cache = map[string]string{}, map[string]string{}
			}
			continue
		}
		k := vault.RowKey(t.Schema, t.Name, rk.cols, vals)
		r.txn[k] = tenant
		if txnOnly {
			delete(r.cache, k)
			continue
		}
		if len(r.cache) >= maxCache {
			r.cache = map[string]string{} // bounded memory beats a perfect cache
		}
		r.cache[k] = tenant
	}
}

// forget drops what is known of the row of this tuple: it belongs to no
// tenant, or to one not known here. strict is as for remember. (The entry
// of a deleted row whose delete does not carry its key is harmless: no
// child can reference it afterwards, and a new row with those values
// replaces it when inserted.)
func (r *resolver) forget(t *manifest.Table, ri *relInfo, tuple []vault.Value, strict bool) {
	for _, rk := range ri.refs {
		vals, ok := refValues(rk, tuple)
		if !ok {
			if strict && !refNull(rk, tuple) {
				r.txn, r.cache = map[string]string{}, map[string]string{}
			}
			continue
		}
		k := vault.RowKey(t.Schema, t.Name, rk.cols, vals)
		delete(r.txn, k)
		delete(r.cache, k)
	}
}

// refValues returns the values of a referenced key in a logged tuple;
// false when one is NULL (the row is referenced by nothing through this
// key) or was not sent.
func refValues(rk refKey, tuple []vault.Value) ([][]byte, bool) {
	vals := make([][]byte, len(rk.pos))
	for i, p := range rk.pos {
		v, ok := valueAt(tuple, p)
		if !ok {
			return nil, false
		}
		vals[i] = v.Data
	}
	return vals, len(rk.pos) > 0
}

// refNull reports whether a referenced key of a tuple holds a NULL: no
// row references it through that key, so there is nothing to remember.
func refNull(rk refKey, tuple []vault.Value) bool {
	for _, p := range rk.pos {
		if p < len(tuple) && tuple[p].Kind == vault.ValueNull {
			return true
		}
	}
	return false
}

// owner is who a tuple belongs to.
type owner struct {
	state  ownerState
	tenant string
}

type ownerState int

const (
	ownedBy     ownerState = iota // tenant
	ownedNone                     // the row belongs to no tenant (its key column or reference is NULL)
	ownerUnsure                   // not known at capture time: replay decides
	ownerAbsent                   // the tuple lacks the columns that would say
)

// ownerOf finds who a tuple of a directly or chain-scoped table belongs to.
func (r *resolver) ownerOf(ctx context.Context, ri *relInfo, tuple []vault.Value, lsn uint64) (owner, error) {
	t := ri.table
	if ri.tcol >= 0 {
		v, _ := valueAt(tuple, ri.tcol)
		return ownerFromValue(v, func() (owner, error) { return owner{state: ownedBy, tenant: string(v.Data)}, nil })
	}
	vals := make([][]byte, len(ri.hop))
	for i, p := range ri.hop {
		v, ok := valueAt(tuple, p)
		if !ok {
			return ownerFromValue(v, nil)
		}
		vals[i] = v.Data
	}
	h := t.Scope.Hops[0]
	k := vault.RowKey(h.RefSchema, h.RefTable, h.RefCols, vals)
	if tenant, ok := r.txn[k]; ok {
		return owner{state: ownedBy, tenant: tenant}, nil
	}
	if tenant, ok := r.cache[k]; ok {
		return owner{state: ownedBy, tenant: tenant}, nil
	}
	tenant, ok, err := r.lookup(ctx, t, vals, lsn)
	if err != nil || !ok {
		return owner{state: ownerUnsure}, err
	}
	if len(r.cache) >= maxCache {
		r.cache = map[string]string{}
	}
	r.cache[k] = tenant
	return owner{state: ownedBy, tenant: tenant}, nil
}

// ownerFromValue classifies a missing attribution value; known is called
// for a present one.
func ownerFromValue(v vault.Value, known func() (owner, error)) (owner, error) {
	switch v.Kind {
	case vault.ValueText:
		return known()
	case vault.ValueNull:
		return owner{state: ownedNone}, nil
	}
	return owner{state: ownerAbsent}, nil
}

// tenantsOf attributes a change: to one tenant, to two (a row that moves
// between tenants becomes a delete for the one it leaves and an insert of
// the whole row for the one it joins), to none (rows that belong to no
// tenant), or shared when the tenant is not known at capture time.
func (r *resolver) tenantsOf(ctx context.Context, ri *relInfo, ch *vault.Change) ([]tenantChange, bool, error) {
	t := ri.table
	switch {
	case t.Owner != "":
		return []tenantChange{{t.Owner, ch}}, false, nil
	case ri.tcol < 0 && len(ri.hop) == 0:
		return nil, true, nil
	}
	var before, after owner
	var err error
	switch ch.Op {
	case vault.OpInsert:
		before = owner{state: ownedNone}
		after, err = r.ownerOf(ctx, ri, ch.New, ch.LSN)
	case vault.OpDelete:
		after = owner{state: ownedNone}
		before, err = r.ownerOf(ctx, ri, ch.Old, ch.LSN)
	default:
		after, err = r.ownerOf(ctx, ri, vault.FillUnchanged(ch.New, ch.Old), ch.LSN)
		if err == nil {
			if ch.Old == nil {
				// No old tuple: the replica identity, which holds the
				// attribution columns, did not change.
				before = after
			} else {
				before, err = r.ownerOf(ctx, ri, ch.Old, ch.LSN)
			}
		}
	}
	if err != nil {
		return nil, false, err
	}
	if before.state == ownerAbsent || after.state == ownerAbsent {
		return nil, false, identityError(t, strings.Join(attributionColumns(t), ", "))
	}
	r.follow(t, ri, ch, before, after)
	if before.state == ownerUnsure || after.state == ownerUnsure {
		return nil, true, nil
	}
	if before == after {
		if before.state == ownedNone {
			return nil, false, nil
		}
		return []tenantChange{{before.tenant, ch}}, false, nil
	}
	// The row changes tenant (or joins or leaves one).
	var out []tenantChange
	if before.state == ownedBy {
		del := ch
		if ch.Op == vault.OpUpdate {
			del = &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpDelete, Old: ch.Old}
		}
		out = append(out, tenantChange{before.tenant, del})
	}
	if after.state == ownedBy {
		ins := ch
		if ch.Op == vault.OpUpdate {
			full := vault.FillUnchanged(ch.New, ch.Old)
			var unsent []string
			for i, v := range full {
				if v.Kind == vault.ValueUnchanged && i < len(ri.rel.Columns) {
					unsent = append(unsent, ri.rel.Columns[i])
				}
			}
			switch {
			case len(unsent) == 0:
				ins = &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpInsert, New: full}
			case ri.noFull:
				// The row cannot be archived whole for the tenant it joins
				// (no FULL identity possible): replay of that tenant stops
				// here instead of inserting it without its values.
				ins = &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpMoved, New: ch.New, Old: ch.Old}
			default:
				return nil, false, unsentError(t, unsent)
			}
		}
		out = append(out, tenantChange{after.tenant, ins})
	}
	if ri.parent && ch.Op == vault.OpUpdate {
		// Rows scoped through this one changed tenant with it, and no
		// record of theirs says so: replay must not go past this point
		// for either tenant.
		for _, o := range []owner{before, after} {
			if o.state == ownedBy {
				out = append(out, tenantChange{o.tenant, &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpMoved, New: ch.New, Old: ch.Old}})
			}
		}
	}
	return out, false, nil
}

// follow keeps what is known of a referenced row in step with its change,
// so that later changes to rows that reference it find its tenant: the
// tenant it had before the change stays in the transaction's map under the
// old values (children deleted or detached by a cascade come after it),
// the one it has after under the new values, in both maps.
func (r *resolver) follow(t *manifest.Table, ri *relInfo, ch *vault.Change, before, after owner) {
	if ch.Op == vault.OpUpdate && r.carriers[t.Schema+"\x00"+t.Name] && (before != after || (before.state == ownerUnsure || after.state == ownerUnsure) && reattributed(ri, ch)) {
		// Rows scoped through this one changed tenant with it (or may
		// have), and what is remembered of them, and of the rows scoped
		// through them, by their own keys still names the old one: a
		// later child of theirs would be archived for the tenant they
		// left (issue 14, seed 1370). Nothing is kept; lookups decide.
		r.txn, r.cache = map[string]string{}, map[string]string{}
	}
	if len(ri.refs) == 0 {
		return
	}
	if ch.Op != vault.OpInsert && ch.Old != nil {
		if before.state == ownedBy {
			r.remember(t, ri, ch.Old, before.tenant, true, false)
		} else {
			r.forget(t, ri, ch.Old, false)
		}
	}
	if ch.Op == vault.OpDelete {
		return
	}
	// A value the change does not carry keeps its entry: right while the
	// row keeps its tenant, stale when the tenant changes.
	full := vault.FillUnchanged(ch.New, ch.Old)
	strict := before != after || before.state == ownerUnsure
	if after.state == ownedBy {
		r.remember(t, ri, full, after.tenant, false, strict)
	} else {
		r.forget(t, ri, full, strict)
	}
}

// reattributed reports whether an update changes the columns that say
// whose its row is (the tenant column, or the first hop's foreign key):
// only then can its tenant have changed when neither side is known.
func reattributed(ri *relInfo, ch *vault.Change) bool {
	if ch.Old == nil {
		return false // the identity, which holds those columns, did not change
	}
	full := vault.FillUnchanged(ch.New, ch.Old)
	cols := ri.hop
	if ri.tcol >= 0 {
		cols = []int{ri.tcol}
	}
	for _, p := range cols {
		if p >= len(full) || p >= len(ch.Old) {
			return true
		}
		a, b := full[p], ch.Old[p]
		if a.Kind != b.Kind || !bytes.Equal(a.Data, b.Data) {
			return true
		}
	}
	return false
}

// lookup reads the tenant of the row a chain-scoped row references, from
// the source as it is now. The answer holds for a change that committed at
// lsn only if no row it read has been written since: each row's xmin must
// be older than a horizon read before that commit. Otherwise it reports
// not found, and the change is archived as shared.
func (r *resolver) lookup(ctx context.Context, t *manifest.Table, vals [][]byte, lsn uint64) (string, bool, error) {
	if time.Since(r.lastTaken) >= horizonAge {
		if err := r.takeHorizon(ctx); err != nil {
			return "", false, err
		}
	}
	h, ok := r.horizonAt(lsn)
	if !ok {
		return "", false, nil
	}
	parent := tenancy.ParentScope(t)
	sql := tenancy.TenantByKeyWithXminSQL(parent, t.Scope.Hops[0].RefCols)
	res := r.conn.PgConn().ExecParams(ctx, sql, vals, nil, nil, nil).Read()
	if res.Err != nil {
		return "", false, fmt.Errorf("look up the tenant of a %s row: %w", t.QualifiedName(), res.Err)
	}
	if len(res.Rows) == 0 || res.Rows[0][0] == nil {
		return "", false, nil
	}
	newest, err := strconv.ParseUint(string(res.Rows[0][1]), 10, 64)
	if err != nil {
		return "", false, fmt.Errorf("look up the tenant of a %s row: bad xmin %q", t.QualifiedName(), res.Rows[0][1])
	}
	if newest >= h.xmin {
		return "", false, nil
	}
	return string(res.Rows[0][0]), true, nil
}

func identityError(t *manifest.Table, cols string) error {
	what := "its tenant"
	if cols != "" {
		what = cols
	}
	return &tenantvault.InputError{
		Msg:  fmt.Sprintf("a change to %s does not carry %s: its replica identity is too narrow", t.QualifiedName(), what),
		Hint: fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY FULL, or start the capture with --set-replica-identity", tenancy.Ident(t.Schema, t.Name)),
	}
}

// unsentError refuses a row that changes tenant while the log lacks some
// of its values: unchanged out-of-line (TOASTed) values are sent only in a
// FULL old row, and the tenant it joins needs the whole row.
func unsentError(t *manifest.Table, cols []string) error {
	return &tenantvault.InputError{
		Msg: fmt.Sprintf("a row of %s changed tenant, and the change does not carry the unchanged out-of-line value of %s that the tenant it joins needs: its replica identity is not FULL",
			t.QualifiedName(), strings.Join(cols, ", ")),
		Hint: fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY FULL, or start the capture with --set-replica-identity", tenancy.Ident(t.Schema, t.Name)),
	}
}

// like matches s against a SQL LIKE pattern (%, _ and \ escapes).
func like(s, pattern string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '%':
		for i := 0; i <= len(s); i++ {
			if like(s[i:], pattern[1:]) {
				return true
			}
		}
		return false
	case '_':
		return s != "" && like(s[1:], pattern[1:])
	case '\\':
		if len(pattern) > 1 {
			return s != "" && s[0] == pattern[1] && like(s[1:], pattern[2:])
		}
	}
	return s != "" && s[0] == pattern[0] && like(s[1:], pattern[1:])
}
