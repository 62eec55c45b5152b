package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// parentMap is the (key, tenant) pairs of the table a foreign-key chain
// ends in, read once in the set's snapshot: a routed export looks up each
// row's last-hop key in it instead of the server joining every row. 16
// bytes per parent row, plus each distinct tenant ID once.
type parentMap struct {
	pairs []parentPair // by key
	names [][]byte     // tenant keys, COPY-escaped
}

type parentPair struct {
	key    int64
	tenant int32 // into names; -1: the parent's tenant key is NULL
}

var nullPrefix = []byte(`\N`)

// tenant maps a COPY-escaped last-hop key to the COPY-escaped tenant key,
// `\N` for a NULL key, a dangling one or a parent without a tenant: what
// the outer join of the ordered export gives such rows.
func (m *parentMap) tenant(key []byte) ([]byte, error) {
	if string(key) == `\N` {
		return nullPrefix, nil
	}
	v, ok := parseInt(key)
	if !ok {
		return nil, fmt.Errorf("foreign key value %q is not an integer", key)
	}
	i, found := slices.BinarySearchFunc(m.pairs, v, func(p parentPair, v int64) int {
		switch {
		case p.key < v:
			return -1
		case p.key > v:
			return 1
		}
		return 0
	})
	if !found || m.pairs[i].tenant < 0 {
		return nullPrefix, nil
	}
	return m.names[m.pairs[i].tenant], nil
}

// parentMaps caches the maps of one snapshot (every export session sees
// the same snapshot, so any of them may read a map for all), within
// maxParentRows pairs in all.
type parentMaps struct {
	mu    sync.Mutex
	maps  map[string]*parentEntry
	pairs int64
}

type parentEntry struct {
	once sync.Once
	m    *parentMap
	err  error
}

// get returns the map of hop's table, or nil when it would exceed the
// budget (the caller then lets the server join).
func (pm *parentMaps) get(ctx context.Context, conn *pgx.Conn, database string, h manifest.Hop, tenantColumn string) (*parentMap, error) {
	id := fmt.Sprintf("%q.%q.%q.%q.%q", database, h.RefSchema, h.RefTable, h.RefCols[0], tenantColumn)
	pm.mu.Lock()
	if pm.maps == nil {
		pm.maps = map[string]*parentEntry{}
	}
	e, ok := pm.maps[id]
	if !ok {
		e = &parentEntry{}
		pm.maps[id] = e
	}
	pm.mu.Unlock()
	e.once.Do(func() { e.m, e.err = pm.read(ctx, conn, h, tenantColumn) })
	return e.m, e.err
}

func (pm *parentMaps) read(ctx context.Context, conn *pgx.Conn, h manifest.Hop, tenantColumn string) (*parentMap, error) {
	pm.mu.Lock()
	left := maxParentRows - pm.pairs
	pm.mu.Unlock()
	var est float64
	if err := conn.QueryRow(ctx, "SELECT coalesce(sum(c.reltuples), 0)::float8 FROM pg_class c WHERE c.oid = $1::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)",
		tenancy.Ident(h.RefSchema, h.RefTable)).Scan(&est); err != nil {
		return nil, fmt.Errorf("estimate rows of %s.%s: %w", h.RefSchema, h.RefTable, err)
	}
	if est > float64(left) {
		return nil, nil
	}
	b := &mapBuilder{m: &parentMap{}, ids: map[string]int32{}, limit: left}
	if _, err := conn.PgConn().CopyTo(ctx, b, tenancy.ParentTenantsSQL(h, tenantColumn)); err != nil {
		if b.err != nil {
			return nil, b.err
		}
		return nil, fmt.Errorf("read tenants of %s.%s: %w", h.RefSchema, h.RefTable, err)
	}
	if b.over {
		return nil, nil
	}
	if len(b.carry) > 0 {
		return nil, fmt.Errorf("read tenants of %s.%s: COPY output ended inside a row", h.RefSchema, h.RefTable)
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	if pm.pairs+int64(len(b.m.pairs)) > maxParentRows {
		return nil, nil
	}
	pm.pairs += int64(len(b.m.pairs))
	slices.SortFunc(b.m.pairs, func(x, y parentPair) int {
		switch {
		case x.key < y.key:
			return -1
		case x.key > y.key:
			return 1
		}
		return 0
	})
	b.m.pairs = slices.Clip(b.m.pairs)
	return b.m, nil
}

type mapBuilder struct {
	m     *parentMap
	ids   map[string]int32
	limit int64
	over  bool // more rows than the budget: the rest is read and dropped
	carry []byte
	err   error
}

func (b *mapBuilder) Write(p []byte) (int, error) {
	n := len(p)
	if len(b.carry) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			b.carry = append(b.carry, p...)
			return n, nil
		}
		b.carry = append(b.carry, p[:i]...)
		b.line(b.carry)
		b.carry = b.carry[:0]
		p = p[i+1:]
	}
	for len(p) > 0 && b.err == nil {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			b.carry = append(b.carry, p...)
			break
		}
		b.line(p[:i])
		p = p[i+1:]
	}
	return n, b.err
}

func (b *mapBuilder) line(l []byte) {
	tab := bytes.IndexByte(l, '\t')
	if tab < 0 {
		b.err = fmt.Errorf("malformed (key, tenant) row %q", l)
		return
	}
	if b.over {
		return
	}
	k, t := l[:tab], l[tab+1:]
	if string(k) == `\N` {
		return // a NULL key is never referenced
	}
	v, ok := parseInt(k)
	if !ok {
		b.err = fmt.Errorf("key value %q is not an integer", k)
		return
	}
	if int64(len(b.m.pairs)) >= b.limit {
		// Failing the Write would close the session; drain instead.
		b.over, b.m = true, &parentMap{}
		return
	}
	ti := int32(-1)
	if string(t) != `\N` {
		id, ok := b.ids[string(t)]
		if !ok {
			id = int32(len(b.m.names))
			b.m.names = append(b.m.names, append([]byte(nil), t...))
			b.ids[string(t)] = id
		}
		ti = id
	}
	b.m.pairs = append(b.m.pairs, parentPair{key: v, tenant: ti})
}
