package histories

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// move is a committed change that took a row other tenant rows reference
// (through the scope's foreign keys) from one tenant to another: the
// referencing rows changed tenant without a change of their own.
type move struct {
	what     string
	from, to string // "" for no tenant
}

// op is one statement (or a few) of a transaction, run inside a savepoint
// so that a failure (a unique key, a lock timeout, a row another
// transaction deleted) undoes only itself.
type op struct {
	desc string
	run  func(ctx context.Context, tx pgx.Tx) (*move, error)
}

type txnPlan struct {
	ops      []op
	rollback bool
}

// round is what happens between two instants: transactions that run at
// once on different connections.
type round struct {
	txns []txnPlan
	mark bool // record the state afterwards
	set  bool // take a second snapshot set afterwards
	fast bool // record with no pause: the capture may still be behind
}

var bodies = []string{"plain", "it's", "tab\there", "new\nline", `back\slash`, "ünï €😀", `"quoted"`, "", "a,b;c", "\\N"}

// gen draws a history's workload.
type gen struct {
	s   *Schema
	f   Features
	rng *rand.Rand
	all []string // every tenant ID that may appear
}

func (g *gen) tenant() string {
	if g.rng.IntN(8) == 0 {
		return g.s.Spare[g.rng.IntN(len(g.s.Spare))]
	}
	return g.s.Tenants[g.rng.IntN(len(g.s.Tenants))]
}

func (g *gen) other(not string) string {
	for range 10 {
		if t := g.tenant(); t != not {
			return t
		}
	}
	return g.s.Tenants[0]
}

func (g *gen) salt() string { return fmt.Sprintf("s%d", g.rng.Uint32()) }

func (g *gen) body() any {
	if g.rng.IntN(10) == 0 {
		return nil
	}
	return bodies[g.rng.IntN(len(bodies))] + " " + g.salt()
}

func (g *gen) rounds(n int) []round {
	out := make([]round, n)
	setAt := -1
	if g.f&SecondSet != 0 && g.rng.IntN(2) == 0 {
		setAt = 1 + g.rng.IntN(n-2)
	}
	for i := range out {
		r := &out[i]
		k := 1
		if g.f&Concurrent != 0 {
			k = 1 + g.rng.IntN(3)
		}
		for range k {
			t := txnPlan{rollback: g.rng.IntN(10) == 0}
			for range 1 + g.rng.IntN(3) {
				t.ops = append(t.ops, g.op())
			}
			r.txns = append(r.txns, t)
		}
		r.mark = i == n-1 || g.rng.IntN(3) != 0
		r.fast = r.mark && g.rng.IntN(4) == 0
		r.set = i == setAt
	}
	return out
}

// op draws one operation.
func (g *gen) op() op {
	s := g.s
	for {
		t := s.Tables[g.rng.IntN(len(s.Tables))]
		tenant := g.tenant()
		switch w := g.rng.IntN(100); {
		case w < 28:
			return g.insert(t, tenant)
		case w < 50:
			return g.update(t, tenant)
		case w < 64:
			if t.Kind == kindTenant && g.f&TenantDeletes == 0 {
				continue
			}
			return g.delete(t, tenant)
		case w < 78:
			if t.Kind != kindChain {
				continue
			}
			dst := tenant
			if g.f&Moves != 0 && g.rng.IntN(3) != 0 {
				dst = g.other(tenant)
			}
			return g.reparent(t, tenant, dst)
		case w < 92:
			if t.Kind != kindDirect || t.Referenced() && g.f&Moves == 0 {
				continue
			}
			return g.moveDirect(t, tenant, g.other(tenant))
		case w < 97:
			if g.f&Truncates == 0 || t.Kind == kindTenant {
				continue
			}
			return op{desc: "truncate " + t.q() + " cascade", run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
				_, err := tx.Exec(ctx, "TRUNCATE "+t.q()+" CASCADE")
				return nil, err
			}}
		default:
			if g.f&Moves == 0 {
				continue
			}
			if t.Kind == kindChain && t.OnDelete == "SET NULL" {
				return g.detach(t, tenant)
			}
		}
	}
}

// pick is a subquery choosing one row of t (its id) that belongs to the
// tenant in parameter $tp, pseudo-randomly by the salt in $sp.
func (g *gen) pick(t *Table, tp, sp int) string {
	from, key := g.s.join(t, "x")
	return fmt.Sprintf("SELECT x.id FROM %s WHERE %s = $%d ORDER BY md5(x.id::text || $%d) LIMIT 1", from, key, tp, sp)
}

// docSQL makes an out-of-line value (storage external, over the toast
// threshold) from a salt parameter.
func docSQL(p int) string {
	return fmt.Sprintf("(SELECT string_agg(md5(i::text || $%d), '') FROM generate_series(1, 80) i)", p)
}

func (g *gen) insert(t *Table, tenant string) op {
	s := g.s
	salt, body := g.salt(), g.body()
	n := 1 + g.rng.IntN(3)
	desc := fmt.Sprintf("insert %d into %s for %q", n, t.q(), tenant)
	var sql string
	var args []any
	switch t.Kind {
	case kindTenant:
		desc = fmt.Sprintf("create tenant %q", tenant)
		sql, args = fmt.Sprintf("INSERT INTO %s (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", t.q()), []any{tenant, body}
	case kindDirect:
		cols := []string{ident(s.TenantCol), "n", "body"}
		vals := []string{"$1", "g", "$3"}
		args = []any{tenant, salt, body}
		if t.Partitioned {
			cols, vals = append(cols, "day"), append(vals, fmt.Sprintf("DATE '2026-01-05' + (g * %d %% 80)", 1+g.rng.IntN(40)))
		}
		if t.SelfRef {
			cols, vals = append(cols, "parent_id"), append(vals, fmt.Sprintf("(SELECT x.id FROM %s x WHERE x.%s = $1 ORDER BY md5(x.id::text || $2) LIMIT 1)", t.q(), ident(s.TenantCol)))
		}
		if t.Toast {
			cols, vals = append(cols, "doc"), append(vals, docSQL(2))
		}
		sql = fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM generate_series(1, %d) g WHERE $2::text IS NOT NULL", t.q(), strings.Join(cols, ", "), strings.Join(vals, ", "), n)
	case kindChain:
		cols := []string{ident(t.FK), "name", "n", "body"}
		vals := []string{"p.id", "$2 || g", "g", "$3"}
		args = []any{tenant, salt, body}
		if t.SelfRef {
			cols, vals = append(cols, "parent_id"), append(vals, fmt.Sprintf("(SELECT c.id FROM %s c WHERE c.%s = p.id ORDER BY md5(c.id::text || $2) LIMIT 1)", t.q(), ident(t.FK)))
		}
		if t.Toast {
			cols, vals = append(cols, "doc"), append(vals, docSQL(2))
		}
		sql = fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM (%s) p, generate_series(1, %d) g ON CONFLICT DO NOTHING",
			t.q(), strings.Join(cols, ", "), strings.Join(vals, ", "), g.pick(t.Parent, 1, 2), n)
	}
	return op{desc: desc, run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		_, err := tx.Exec(ctx, sql, args...)
		return nil, err
	}}
}

func (g *gen) update(t *Table, tenant string) op {
	salt, body := g.salt(), g.body()
	if t.Kind == kindTenant {
		sql := fmt.Sprintf("UPDATE %s SET name = $2 WHERE id = $1", t.q())
		return op{desc: fmt.Sprintf("rename tenant %q", tenant), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
			_, err := tx.Exec(ctx, sql, tenant, body)
			return nil, err
		}}
	}
	sets := []string{"n = n + 1", "body = $3"}
	what := "one row"
	switch {
	case t.Partitioned && g.rng.IntN(2) == 0:
		sets, what = append(sets, fmt.Sprintf("day = DATE '2026-01-03' + %d", g.rng.IntN(90))), "one row into another partition"
	case t.Toast && g.rng.IntN(3) == 0:
		sets, what = append(sets, "doc = "+docSQL(2)), "one row and its out-of-line value"
	case t.Kind == kindChain && len(t.Key) == 2 && g.rng.IntN(3) == 0:
		sets, what = append(sets, "name = name || 'k'"), "one row's key"
	}
	where := "id = (" + g.pick(t, 1, 2) + ")"
	if g.rng.IntN(5) == 0 {
		from, key := g.s.join(t, "x")
		where, what = fmt.Sprintf("id IN (SELECT x.id FROM %s WHERE %s = $1 AND md5(x.id::text || $2) > '8')", from, key), "about half of the rows"
	}
	sql := fmt.Sprintf("UPDATE %s SET %s WHERE %s", t.q(), strings.Join(sets, ", "), where)
	return op{desc: fmt.Sprintf("update %s of %s for %q", what, t.q(), tenant), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		_, err := tx.Exec(ctx, sql, tenant, salt, body)
		return nil, err
	}}
}

func (g *gen) delete(t *Table, tenant string) op {
	salt := g.salt()
	detaches := g.s.detaches(t)
	deleted := func(tag pgconn.CommandTag, err error) (*move, error) {
		if err != nil || !detaches || tag.RowsAffected() == 0 {
			return nil, err
		}
		return &move{what: fmt.Sprintf("a delete of %s rows set referenced rows' foreign keys to NULL", t.q()), from: tenant}, nil
	}
	if t.Kind == kindTenant {
		sql := fmt.Sprintf("DELETE FROM %s WHERE id = $1", t.q())
		return op{desc: fmt.Sprintf("delete tenant %q (cascades)", tenant), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
			return deleted(tx.Exec(ctx, sql, tenant))
		}}
	}
	where, what := "id = ("+g.pick(t, 1, 2)+")", "one row"
	if g.rng.IntN(4) == 0 {
		from, key := g.s.join(t, "x")
		where, what = fmt.Sprintf("id IN (SELECT x.id FROM %s WHERE %s = $1 AND md5(x.id::text || $2) < '6')", from, key), "about a third of the rows"
	}
	if t.Referenced() {
		what += " (cascades)"
	}
	sql := fmt.Sprintf("DELETE FROM %s WHERE %s", t.q(), where)
	return op{desc: fmt.Sprintf("delete %s of %s for %q", what, t.q(), tenant), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		return deleted(tx.Exec(ctx, sql, tenant, salt))
	}}
}

// detaches reports whether deleting rows of t may set the foreign key of
// rows that others are scoped through to NULL (ON DELETE SET NULL): those
// rows leave their tenant, and what references them with them.
func (s *Schema) detaches(t *Table) bool {
	var children []*Table
	if t.Kind == kindTenant {
		for _, d := range s.Tables {
			if d.Kind == kindDirect {
				children = append(children, d)
			}
		}
	} else {
		children = t.Children
	}
	for _, c := range children {
		if c.Kind == kindChain && c.OnDelete == "SET NULL" && c.Referenced() || (c.Kind == kindDirect || c.OnDelete == "CASCADE") && s.detaches(c) {
			return true
		}
	}
	return false
}

// tenantOf reads the tenant a row of t belongs to now ("" for none).
func (g *gen) tenantOf(ctx context.Context, tx pgx.Tx, t *Table, id int64) (string, error) {
	from, key := g.s.join(t, "x")
	// The join drops a row that references nothing: no tenant.
	var tenant string
	err := tx.QueryRow(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE x.id = $1", key, from), id).Scan(&tenant)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return tenant, err
}

// unlinkSelf clears the self references from and to a row that leaves its
// parent, so that no reference outside the scope's own crosses tenants.
func unlinkSelf(ctx context.Context, tx pgx.Tx, t *Table, id int64) error {
	if !t.SelfRef {
		return nil
	}
	_, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET parent_id = NULL WHERE (parent_id = $1 OR id = $1) AND parent_id IS NOT NULL", t.q()), id)
	return err
}

// reparent points a chain row at another parent, of the same or of
// another tenant.
func (g *gen) reparent(t *Table, tenant, dst string) op {
	salt, salt2 := g.salt(), g.salt()
	desc := fmt.Sprintf("re-parent a %s row of %q to a %s row of %q", t.q(), tenant, t.Parent.q(), dst)
	pick, newParent := g.pick(t, 1, 2), g.pick(t.Parent, 1, 2)
	return op{desc: desc, run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		var id int64
		if err := tx.QueryRow(ctx, pick+" FOR UPDATE OF x", tenant, salt).Scan(&id); err != nil {
			return nil, err
		}
		var pid int64
		if err := tx.QueryRow(ctx, newParent, dst, salt2).Scan(&pid); err != nil {
			return nil, err
		}
		from, err := g.tenantOf(ctx, tx, t, id)
		if err != nil {
			return nil, err
		}
		if err := unlinkSelf(ctx, tx, t, id); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET %s = $2 WHERE id = $1", t.q(), ident(t.FK)), id, pid); err != nil {
			return nil, err
		}
		to, err := g.tenantOf(ctx, tx, t, id)
		if err != nil || from == to || !t.Referenced() {
			return nil, err
		}
		return &move{what: fmt.Sprintf("%s id %d re-parented", t.q(), id), from: from, to: to}, nil
	}}
}

// detach sets a nullable foreign key to NULL: the row (and what references
// it) leaves its tenant.
func (g *gen) detach(t *Table, tenant string) op {
	salt := g.salt()
	pick := g.pick(t, 1, 2)
	return op{desc: fmt.Sprintf("detach a %s row of %q (foreign key to NULL)", t.q(), tenant), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		var id int64
		if err := tx.QueryRow(ctx, pick+" FOR UPDATE OF x", tenant, salt).Scan(&id); err != nil {
			return nil, err
		}
		if err := unlinkSelf(ctx, tx, t, id); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET %s = NULL WHERE id = $1", t.q(), ident(t.FK)), id); err != nil {
			return nil, err
		}
		if !t.Referenced() {
			return nil, nil
		}
		return &move{what: fmt.Sprintf("%s id %d detached", t.q(), id), from: tenant}, nil
	}}
}

// moveDirect changes a direct row's tenant column.
func (g *gen) moveDirect(t *Table, tenant, dst string) op {
	salt := g.salt()
	pick := g.pick(t, 1, 2)
	return op{desc: fmt.Sprintf("move a %s row from %q to %q", t.q(), tenant, dst), run: func(ctx context.Context, tx pgx.Tx) (*move, error) {
		var id int64
		if err := tx.QueryRow(ctx, pick+" FOR UPDATE OF x", tenant, salt).Scan(&id); err != nil {
			return nil, err
		}
		if err := unlinkSelf(ctx, tx, t, id); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET %s = $2 WHERE id = $1", t.q(), ident(g.s.TenantCol)), id, dst); err != nil {
			return nil, err
		}
		if !t.Referenced() {
			return nil, nil
		}
		return &move{what: fmt.Sprintf("%s id %d moved", t.q(), id), from: tenant, to: dst}, nil
	}}
}

// populate is the initial data: every tenant has a few rows in every table.
func (s *Schema) populate() string {
	var b strings.Builder
	lits := make([]string, len(s.Tenants))
	for i, id := range s.Tenants {
		lits[i] = "(" + literal(id) + ", " + literal("Tenant "+id) + ")"
	}
	fmt.Fprintf(&b, "INSERT INTO %s (id, name) VALUES %s;\n", s.TenantTable.q(), strings.Join(lits, ", "))
	tc := ident(s.TenantCol)
	for _, t := range s.Tables {
		switch t.Kind {
		case kindDirect:
			cols, vals := []string{tc, "n", "body"}, []string{"t.id", "g", "'init ' || g || ' of ' || t.id"}
			if t.Partitioned {
				cols, vals = append(cols, "day"), append(vals, "DATE '2026-01-10' + (g * 23 % 75)")
			}
			if t.Toast {
				cols, vals = append(cols, "doc"), append(vals, "(SELECT string_agg(md5(i::text || t.id || g), '') FROM generate_series(1, 80) i)")
			}
			fmt.Fprintf(&b, "INSERT INTO %s (%s) SELECT %s FROM %s t, generate_series(1, 3) g ORDER BY t.id, g;\n", t.q(), strings.Join(cols, ", "), strings.Join(vals, ", "), s.TenantTable.q())
			if t.SelfRef {
				fmt.Fprintf(&b, "UPDATE %[1]s x SET parent_id = (SELECT min(y.id) FROM %[1]s y WHERE y.%[2]s = x.%[2]s) WHERE x.id %% 3 = 0;\n", t.q(), tc)
			}
		case kindChain:
			cols, vals := []string{ident(t.FK), "name", "n", "body"}, []string{"p.id", "'n' || g || '.' || p.id", "g", "E'init\\t' || g"}
			if t.Toast {
				cols, vals = append(cols, "doc"), append(vals, "(SELECT string_agg(md5(i::text || p.id || g), '') FROM generate_series(1, 80) i)")
			}
			fmt.Fprintf(&b, "INSERT INTO %s (%s) SELECT %s FROM %s p, generate_series(1, 2) g ORDER BY p.id, g;\n", t.q(), strings.Join(cols, ", "), strings.Join(vals, ", "), t.Parent.q())
			if t.SelfRef {
				fk := ident(t.FK)
				fmt.Fprintf(&b, "UPDATE %[1]s x SET parent_id = (SELECT min(y.id) FROM %[1]s y WHERE y.%[2]s = x.%[2]s AND y.id < x.id);\n", t.q(), fk)
			}
		}
	}
	return b.String()
}

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
