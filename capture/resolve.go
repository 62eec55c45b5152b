package capture

import (
	"context"
	"fmt"
	"strings"

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
// then in a bounded cache, then by a lookup in the source. A change whose
// parent is already gone is archived as shared: replay attributes it from
// the tenant's own rows.
type resolver struct {
	conn   *pgx.Conn
	cfg    tenancy.Config
	tables map[string]*manifest.Table
	txn    map[string]string
	cache  map[string]string
}

const maxCache = 200_000

func newResolver(conn *pgx.Conn, tables []manifest.Table, cfg tenancy.Config) *resolver {
	r := &resolver{conn: conn, cfg: cfg, tables: map[string]*manifest.Table{}, cache: map[string]string{}}
	for i := range tables {
		t := &tables[i]
		if t.Kind == manifest.TableScoped {
			r.tables[t.Schema+"\x00"+t.Name] = t
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

// forget drops a deleted row from the long-lived cache (it stays in the
// transaction's, where its children's deletes still look for it).
func (r *resolver) forget(t *manifest.Table, ri *relInfo, tuple []vault.Value) {
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

// tenantsOf attributes a change: to one tenant, to two (an update that
// moves a row between tenants becomes a delete and an insert), to none
// (rows that belong to no tenant), or shared when the tenant is unknown.
func (r *resolver) tenantsOf(ctx context.Context, ri *relInfo, ch *vault.Change) ([]tenantChange, bool, error) {
	t := ri.table
	switch {
	case t.Owner != "":
		return []tenantChange{{t.Owner, ch}}, false, nil
	case ri.tcol >= 0:
		return r.direct(ri, ch)
	case len(ri.hop) > 0:
		return r.chain(ctx, ri, ch)
	}
	return nil, true, nil
}

func (r *resolver) direct(ri *relInfo, ch *vault.Change) ([]tenantChange, bool, error) {
	t := ri.table
	newV, hasNew := valueAt(ch.New, ri.tcol)
	oldV, hasOld := valueAt(ch.Old, ri.tcol)
	switch ch.Op {
	case vault.OpInsert:
		if !hasNew {
			return nil, false, nil // no tenant: not tenant data
		}
		r.remember(t, ri, ch.New, string(newV.Data))
		return []tenantChange{{string(newV.Data), ch}}, false, nil
	case vault.OpDelete:
		if !hasOld {
			if ch.Old != nil && ri.tcol < len(ch.Old) && ch.Old[ri.tcol].Kind == vault.ValueNull {
				return nil, false, nil
			}
			return nil, false, identityError(t, t.Scope.Column)
		}
		r.remember(t, ri, ch.Old, string(oldV.Data))
		r.forget(t, ri, ch.Old)
		return []tenantChange{{string(oldV.Data), ch}}, false, nil
	}
	// Update.
	if !hasNew {
		if newV.Kind == vault.ValueUnchanged && hasOld {
			newV, hasNew = oldV, true
		} else {
			return nil, false, nil
		}
	}
	if !hasOld || string(oldV.Data) == string(newV.Data) {
		r.remember(t, ri, ch.New, string(newV.Data))
		return []tenantChange{{string(newV.Data), ch}}, false, nil
	}
	// The row moves from one tenant to another: a delete for the old one
	// and an insert of the whole new row for the new one.
	full := make([]vault.Value, len(ch.New))
	for i, v := range ch.New {
		if v.Kind == vault.ValueUnchanged {
			o, ok := valueAt(ch.Old, i)
			if !ok {
				return nil, false, identityError(t, "")
			}
			v = o
		}
		full[i] = v
	}
	del := &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpDelete, Old: ch.Old}
	ins := &vault.Change{LSN: ch.LSN, Time: ch.Time, Rel: ch.Rel, Op: vault.OpInsert, New: full}
	r.remember(t, ri, ch.New, string(newV.Data))
	return []tenantChange{{string(oldV.Data), del}, {string(newV.Data), ins}}, false, nil
}

func (r *resolver) chain(ctx context.Context, ri *relInfo, ch *vault.Change) ([]tenantChange, bool, error) {
	t := ri.table
	tuple := ch.New
	if ch.Op == vault.OpDelete {
		tuple = ch.Old
		if tuple == nil {
			return nil, false, identityError(t, strings.Join(t.Scope.Hops[0].Columns, ", "))
		}
	}
	vals := make([][]byte, len(ri.hop))
	for i, p := range ri.hop {
		v, ok := valueAt(tuple, p)
		if !ok {
			if v.Kind == vault.ValueNull {
				return nil, false, nil // references nothing: belongs to no tenant
			}
			if v.Kind == vault.ValueAbsent || tuple == nil {
				return nil, false, identityError(t, strings.Join(t.Scope.Hops[0].Columns, ", "))
			}
			return nil, true, nil
		}
		vals[i] = v.Data
	}
	h := t.Scope.Hops[0]
	k := cacheKey(h.RefSchema, h.RefTable, h.RefCols, vals)
	tenant, ok := r.txn[k]
	if !ok {
		tenant, ok = r.cache[k]
	}
	if !ok {
		var err error
		tenant, ok, err = r.lookup(ctx, t, vals)
		if err != nil {
			return nil, false, err
		}
		if ok {
			r.cache[k] = tenant
		}
	}
	if !ok {
		return nil, true, nil
	}
	r.remember(t, ri, tuple, tenant)
	if ch.Op == vault.OpDelete {
		r.forget(t, ri, ch.Old)
	}
	return []tenantChange{{tenant, ch}}, false, nil
}

// lookup reads the tenant of the row a chain-scoped row references.
func (r *resolver) lookup(ctx context.Context, t *manifest.Table, vals [][]byte) (string, bool, error) {
	parent := tenancy.ParentScope(t)
	sql := tenancy.TenantByKeySQL(parent, t.Scope.Hops[0].RefCols)
	res := r.conn.PgConn().ExecParams(ctx, sql, vals, nil, nil, nil).Read()
	if res.Err != nil {
		return "", false, fmt.Errorf("look up the tenant of a %s row: %w", t.QualifiedName(), res.Err)
	}
	if len(res.Rows) == 0 || res.Rows[0][0] == nil {
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
