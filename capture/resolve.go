package capture

import (
	"context"
	"fmt"
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
	// referenced holds the tables that chain-scoped tables reach with
	// their first hop.
	referenced map[string]bool
	txn        map[string]string
	cache      map[string]string
	horizons   []horizon
	lastTaken  time.Time
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
	r := &resolver{conn: conn, cfg: cfg, tables: map[string]*manifest.Table{}, referenced: map[string]bool{}, cache: map[string]string{}}
	for i := range tables {
		t := &tables[i]
		if t.Kind == manifest.TableScoped {
			r.tables[t.Schema+"\x00"+t.Name] = t
			if t.Scope != nil && len(t.Scope.Hops) > 0 {
				r.referenced[t.Scope.Hops[0].RefSchema+"\x00"+t.Scope.Hops[0].RefTable] = true
			}
		}
	}
	return r
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

func cacheKey(schema, name string, cols []string, vals [][]byte) string {
	var b strings.Builder
	b.WriteString(schema + "\x00" + name + "\x00" + strings.Join(cols, ",") + "\x00")
	for _, v := range vals {
		fmt.Fprintf(&b, "%d:%s", len(v), v)
	}
	return b.String()
}

// remember notes which tenant the row with this key belongs to.
func (r *resolver) remember(t *manifest.Table, ri *relInfo, tuple []vault.Value, tenant string) {
	if len(ri.key) == 0 || len(ri.key) != len(t.Key) {
		return
	}
	vals, ok := keyValues(ri, tuple)
	if !ok {
		return
	}
	k := cacheKey(t.Schema, t.Name, t.Key, vals)
	r.txn[k] = tenant
	if len(r.cache) >= maxCache {
		r.cache = map[string]string{} // bounded memory beats a perfect cache
	}
	r.cache[k] = tenant
}

// forget drops a row from the long-lived cache (a deleted row stays in the
// transaction's, where its children's deletes still look for it).
func (r *resolver) forget(t *manifest.Table, ri *relInfo, tuple []vault.Value) {
	if len(ri.key) == 0 || len(ri.key) != len(t.Key) {
		return
	}
	if vals, ok := keyValues(ri, tuple); ok {
		delete(r.cache, cacheKey(t.Schema, t.Name, t.Key, vals))
	}
}

// keyValues returns the key columns of a logged tuple; false when one was
// not sent.
func keyValues(ri *relInfo, tuple []vault.Value) ([][]byte, bool) {
	vals := make([][]byte, len(ri.key))
	for i, p := range ri.key {
		v, ok := valueAt(tuple, p)
		if !ok {
			return nil, false
		}
		vals[i] = v.Data
	}
	return vals, true
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
	k := cacheKey(h.RefSchema, h.RefTable, h.RefCols, vals)
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
	if before.state == ownerUnsure || after.state == ownerUnsure {
		return nil, true, nil
	}
	// The cache follows the row: later changes to rows that reference it
	// find its tenant here.
	switch {
	case ch.Op == vault.OpDelete:
		if before.state == ownedBy {
			r.remember(t, ri, ch.Old, before.tenant)
		}
		r.forget(t, ri, ch.Old)
	case after.state == ownedBy:
		r.remember(t, ri, ch.New, after.tenant)
	default:
		r.forget(t, ri, ch.New)
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
