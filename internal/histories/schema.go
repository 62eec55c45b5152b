// Package histories generates random multi-tenant schemas and workloads, records tenants' states by plain SQL while the change capture runs, and checks that a point-in-time restore to each recorded instant gives exactly that state.
package histories

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
)

// Features select what a history may contain, so that a subset known to
// pass can run while a class of bugs is being fixed.
type Features uint

const (
	// NarrowKeys: tables whose primary key lacks the tenant column (direct
	// tables) or the first hop's columns (tables scoped through foreign
	// keys), so that a default replica identity does not carry the tenant.
	NarrowKeys Features = 1 << iota
	// Moves: rows that other tenant rows reference change tenant (tenant
	// column updates), and rows re-parented to another tenant's row.
	Moves
	// Truncates: TRUNCATE ... CASCADE of a table.
	Truncates
	// Concurrent: several transactions at once on several connections.
	Concurrent
	// SecondSet: a second snapshot set in the middle of the history.
	SecondSet
	// TenantDeletes: whole tenants deleted (cascading) and created again.
	TenantDeletes
	// Toast: out-of-line values that updates leave unchanged.
	Toast
	// KeylessChains: tables scoped through foreign keys without a primary
	// key (the capture gives them REPLICA IDENTITY FULL).
	KeylessChains

	// All is every feature.
	All = NarrowKeys | Moves | Truncates | Concurrent | SecondSet | TenantDeletes | Toast | KeylessChains
)

var featureNames = []string{"narrow-keys", "moves", "truncates", "concurrent", "second-set", "tenant-deletes", "toast", "keyless-chains"}

// ParseFeatures reads a comma-separated list of feature names (as String
// writes them), "all" or "none"; "" means all.
func ParseFeatures(s string) (Features, error) {
	if s == "" || s == "all" {
		return All, nil
	}
	var f Features
	for _, name := range strings.Split(s, ",") {
		if name == "none" {
			continue
		}
		found := false
		for i, n := range featureNames {
			if n == name {
				f |= 1 << i
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown feature %q (known: %s)", name, All)
		}
	}
	return f, nil
}

func (f Features) String() string {
	var out []string
	for i, n := range featureNames {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

type kind int

const (
	kindTenant kind = iota // the tenants table: its key is the tenant ID
	kindDirect             // has the tenant column
	kindChain              // reaches its tenant through foreign keys
)

// Table is one generated table. Every table has an "id bigserial" column
// (unique in practice, constrained only where something references it),
// which the workload uses to pick rows.
type Table struct {
	Name        string
	Kind        kind
	Parent      *Table // chain: the table of the first hop
	FK          string // chain: the column referencing Parent(id)
	OnDelete    string // chain: CASCADE or SET NULL
	Key         []string
	SelfRef     bool // parent_id references this table's id
	Partitioned bool // direct only: partitioned by range of day
	Toast       bool // has a doc column that holds out-of-line values
	Children    []*Table
	// Named says what the table is, for the history's description.
	Named string
}

// Schema is a generated schema in the column tenancy model.
type Schema struct {
	TenantTable *Table
	TenantCol   string
	// ViaTenantTable: the tenant column is not named to tenantvault, so
	// tables with it are scoped by their foreign key to the tenant table
	// (one hop) instead of by the column.
	ViaTenantTable bool
	Tables         []*Table // creation order: parents first
	Tenants        []string // tenants loaded initially
	Spare          []string // tenant IDs that do not exist initially
}

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// q is a table's quoted name.
func (t *Table) q() string { return ident("public", t.Name) }

// Referenced reports whether chain-scoped tables reference t's rows.
func (t *Table) Referenced() bool { return len(t.Children) > 0 }

// tenantIDs holds IDs with characters that break naive quoting, paths and
// LIKE patterns.
var tenantIDs = []string{"acme", "o'brien & co", "tab\there", "Ünïcödé GmbH", "a/../b", `back\slash "q"`, "sp ace", "UPPER", "x,y;z", "%_like", "new\nline", "😀"}

// names gives each role a plain name and some that need quoting.
var names = map[string][]string{
	"tenants":     {"tenants", "Tenant Orgs"},
	"projects":    {"projects", "Projects"},
	"members":     {"members", "team-members"},
	"events":      {"events", "Events Log"},
	"logs":        {"logs", "audit logs"},
	"comments":    {"comments", "Comments"},
	"labels":      {"labels", "issue labels"},
	"notes":       {"notes", "Notes!"},
	"reactions":   {"reactions", "Reactions"},
	"attachments": {"attachments", "Attach Ments"},
	"marks":       {"marks", "marks$"},
	"subtasks":    {"subtasks", "Sub Tasks"},
}

// generateSchema draws a schema. The tables present, their keys, delete
// rules and names depend on the seed; features decide which risky shapes
// may appear.
func generateSchema(rng *rand.Rand, f Features) *Schema {
	pick := func(role string) string {
		n := names[role]
		if rng.IntN(3) == 0 {
			return n[1]
		}
		return n[0]
	}
	s := &Schema{TenantCol: "tenant_id"}
	if rng.IntN(4) == 0 {
		s.TenantCol = "tenantId"
	}
	ids := append([]string(nil), tenantIDs...)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	n := 3 + rng.IntN(2)
	s.Tenants, s.Spare = ids[:n], ids[n:n+2]
	s.ViaTenantTable = s.TenantCol != "tenant_id" && n == 3
	s.TenantTable = &Table{Name: pick("tenants"), Kind: kindTenant, Key: []string{"id"}, Named: "tenant table"}
	s.Tables = append(s.Tables, s.TenantTable)

	narrow := func() bool { return f&NarrowKeys != 0 && rng.IntN(2) == 0 }
	// A direct table that chains hang off.
	p := &Table{Name: pick("projects"), Kind: kindDirect, SelfRef: rng.IntN(2) == 0, Toast: f&Toast != 0 && rng.IntN(2) == 0}
	if narrow() {
		p.Key, p.Named = []string{"id"}, "direct, key without the tenant column"
	} else {
		p.Key, p.Named = []string{s.TenantCol, "id"}, "direct, key with the tenant column"
	}
	s.Tables = append(s.Tables, p)
	// Other direct tables: a second keyed one, a partitioned one, one
	// without a primary key.
	if rng.IntN(2) == 0 {
		m := &Table{Name: pick("members"), Kind: kindDirect}
		if narrow() {
			m.Key, m.Named = []string{"id"}, "direct, key without the tenant column"
		} else {
			m.Key, m.Named = []string{s.TenantCol, "id"}, "direct, key with the tenant column"
		}
		s.Tables = append(s.Tables, m)
	}
	if rng.IntN(2) == 0 {
		e := &Table{Name: pick("events"), Kind: kindDirect, Partitioned: true}
		if narrow() {
			e.Key, e.Named = []string{"id", "day"}, "partitioned, key without the tenant column"
		} else {
			e.Key, e.Named = []string{s.TenantCol, "id", "day"}, "partitioned, key with the tenant column"
		}
		s.Tables = append(s.Tables, e)
	}
	if rng.IntN(3) == 0 {
		s.Tables = append(s.Tables, &Table{Name: pick("logs"), Kind: kindDirect, Named: "direct, no primary key"})
	}

	chain := func(parent *Table, role string) *Table {
		c := &Table{Name: pick(role), Kind: kindChain, Parent: parent, FK: strings.TrimSuffix(parent.Name, "s") + "_id", OnDelete: "CASCADE"}
		if rng.IntN(4) == 0 {
			c.FK = "Parent Ref"
		}
		switch k := rng.IntN(3); {
		case k == 0 && f&NarrowKeys != 0:
			c.Key, c.Named = []string{"id"}, "key without the foreign key"
			if rng.IntN(3) == 0 {
				c.OnDelete = "SET NULL"
			}
		case k == 1 || k == 0 || f&KeylessChains == 0:
			c.Key, c.Named = []string{c.FK, "name"}, "key with the foreign key"
		default:
			c.Key, c.Named = nil, "no primary key"
			if rng.IntN(3) == 0 {
				c.OnDelete = "SET NULL"
			}
		}
		c.Named = fmt.Sprintf("%d-hop, %s, ON DELETE %s", len(c.path()), c.Named, c.OnDelete)
		parent.Children = append(parent.Children, c)
		s.Tables = append(s.Tables, c)
		return c
	}
	// One hop: always a table with children of its own, plus others.
	c := chain(p, "comments")
	c.SelfRef = rng.IntN(2) == 0
	c.Toast = f&Toast != 0 && rng.IntN(3) == 0
	for _, role := range []string{"labels", "notes"} {
		if rng.IntN(2) == 0 {
			chain(p, role)
		}
	}
	// Two hops.
	for _, role := range []string{"reactions", "attachments", "marks"} {
		if rng.IntN(2) == 0 {
			chain(c, role)
		}
	}
	if len(c.Children) == 0 {
		chain(c, "subtasks")
	}
	return s
}

// GenerateSchema draws the schema of the history with this seed, as Run
// does.
func GenerateSchema(seed uint64, f Features) *Schema {
	return generateSchema(newRand(seed), f)
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x7e5a17)) }

// Populate is the SQL of the initial rows.
func (s *Schema) Populate() string { return s.populate() }

// CheckScopes compares the scope tenantvault discovered for each table
// with the path the oracle joins along: the oracle is only an oracle if
// both mean the same rows.
func (s *Schema) CheckScopes(tables []manifest.Table) error {
	found := map[string]*manifest.Table{}
	for i := range tables {
		found[tables[i].Name] = &tables[i]
	}
	for _, t := range s.Tables {
		m := found[t.Name]
		if m == nil || m.Kind != manifest.TableScoped || m.Scope == nil {
			return fmt.Errorf("%s is not scoped", t.q())
		}
		switch t.Kind {
		case kindTenant:
			if len(m.Scope.Hops) != 0 || m.Scope.Column != "id" {
				return fmt.Errorf("%s: scope %+v, want its key", t.q(), *m.Scope)
			}
		case kindDirect, kindChain:
			path := t.path()
			if s.ViaTenantTable {
				path = append(path, s.TenantTable)
			}
			if len(m.Scope.Hops) != len(path) {
				return fmt.Errorf("%s: %d hops, want %d", t.q(), len(m.Scope.Hops), len(path))
			}
			cur := t
			for i, p := range path {
				h, fk := m.Scope.Hops[i], cur.FK
				if p == s.TenantTable {
					fk = s.TenantCol
				}
				if h.RefTable != p.Name || len(h.Columns) != 1 || h.Columns[0] != fk || len(h.RefCols) != 1 || h.RefCols[0] != "id" {
					return fmt.Errorf("%s: hop %d is %+v, want %s -> %s(id)", t.q(), i, h, fk, p.q())
				}
				cur = p
			}
			want := s.TenantCol
			if s.ViaTenantTable {
				want = "id"
			}
			if m.Scope.Column != want {
				return fmt.Errorf("%s: scope column %s, want %s", t.q(), m.Scope.Column, want)
			}
		}
	}
	return nil
}

// path lists a chain table's hops: its parent, its parent's parent, up to
// the direct table.
func (t *Table) path() []*Table {
	var out []*Table
	for p := t.Parent; p != nil; p = p.Parent {
		out = append(out, p)
	}
	return out
}

// Describe lists the tables and what each is.
func (s *Schema) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tenant column %q, tenants %q", s.TenantCol, s.Tenants)
	if s.ViaTenantTable {
		b.WriteString(" (the column is not named to tenantvault: its tables are scoped through the tenant table)")
	}
	for _, t := range s.Tables {
		fmt.Fprintf(&b, "\n  %s: %s", t.q(), t.Named)
		if t.Parent != nil {
			fmt.Fprintf(&b, " (%s -> %s)", ident(t.FK), t.Parent.q())
		}
		if t.SelfRef {
			b.WriteString(", self reference")
		}
		if t.Toast {
			b.WriteString(", out-of-line values")
		}
	}
	return b.String()
}

// DDL is the schema's SQL, for the source and for the scratch databases.
func (s *Schema) DDL() string {
	var b strings.Builder
	tc := ident(s.TenantCol)
	for _, t := range s.Tables {
		var cols []string
		switch t.Kind {
		case kindTenant:
			cols = append(cols, "id text NOT NULL", "name text")
		case kindDirect:
			cols = append(cols, "id bigserial NOT NULL", tc+" text NOT NULL REFERENCES "+s.TenantTable.q()+" ON DELETE CASCADE")
			if t.Partitioned {
				cols = append(cols, "day date NOT NULL")
			}
		case kindChain:
			null := ""
			if t.OnDelete == "CASCADE" {
				null = " NOT NULL"
			}
			cols = append(cols, "id bigserial NOT NULL", ident(t.FK)+" bigint"+null+" REFERENCES "+t.Parent.q()+"(id) ON DELETE "+t.OnDelete, "name text NOT NULL DEFAULT ''")
		}
		if t.Kind != kindTenant {
			cols = append(cols, "n integer NOT NULL DEFAULT 0", "body text")
		}
		if t.SelfRef {
			cols = append(cols, "parent_id bigint REFERENCES "+t.q()+"(id) ON DELETE SET NULL")
		}
		if t.Toast {
			cols = append(cols, "doc text")
		}
		if len(t.Key) > 0 {
			q := make([]string, len(t.Key))
			for i, k := range t.Key {
				q[i] = ident(k)
			}
			cols = append(cols, "PRIMARY KEY ("+strings.Join(q, ", ")+")")
		}
		if (t.Referenced() || t.SelfRef) && !(len(t.Key) == 1 && t.Key[0] == "id") {
			cols = append(cols, "UNIQUE (id)")
		}
		fmt.Fprintf(&b, "CREATE TABLE %s (\n  %s\n)", t.q(), strings.Join(cols, ",\n  "))
		if t.Partitioned {
			b.WriteString(" PARTITION BY RANGE (day);\n")
			for i, r := range [][2]string{{"2026-01-01", "2026-02-01"}, {"2026-02-01", "2026-03-01"}} {
				fmt.Fprintf(&b, "CREATE TABLE %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s');\n", ident("public", fmt.Sprintf("%s_p%d", t.Name, i)), t.q(), r[0], r[1])
			}
			fmt.Fprintf(&b, "CREATE TABLE %s PARTITION OF %s DEFAULT;\n", ident("public", t.Name+"_other"), t.q())
		} else {
			b.WriteString(";\n")
		}
		if t.Kind == kindChain {
			fmt.Fprintf(&b, "CREATE INDEX ON %s (%s);\n", t.q(), ident(t.FK))
		}
		if t.Toast {
			// Out of line and uncompressed, so that an update which leaves
			// it alone logs it as unchanged.
			fmt.Fprintf(&b, "ALTER TABLE %s ALTER doc SET STORAGE EXTERNAL;\n", t.q())
		}
	}
	return b.String()
}

// ReadSQL reads one tenant's rows of t ($1 is the tenant ID) as text, in a
// stable order, by joining the foreign keys written in the schema: the
// oracle does not use tenantvault's own SQL.
func (s *Schema) ReadSQL(t *Table) string {
	switch t.Kind {
	case kindTenant:
		return fmt.Sprintf(`SELECT x::text FROM %s x WHERE x.id = $1 ORDER BY x::text COLLATE "C"`, t.q())
	case kindDirect:
		return fmt.Sprintf(`SELECT x::text FROM %s x WHERE x.%s = $1 ORDER BY x::text COLLATE "C"`, t.q(), ident(s.TenantCol))
	}
	from, key := s.join(t, "x")
	return fmt.Sprintf(`SELECT x::text FROM %s WHERE %s = $1 ORDER BY x::text COLLATE "C"`, from, key)
}

// join renders t (as alias) joined along its path, and the tenant key
// expression at the end of it.
func (s *Schema) join(t *Table, alias string) (string, string) {
	from := t.q() + " " + alias
	prev, cur := alias, t
	for i, p := range t.path() {
		a := fmt.Sprintf("%s%d", alias, i+1)
		from += fmt.Sprintf(" JOIN %s %s ON %s.id = %s.%s", p.q(), a, a, prev, ident(cur.FK))
		prev, cur = a, p
	}
	if t.Kind == kindTenant {
		return from, alias + ".id"
	}
	return from, prev + "." + ident(s.TenantCol)
}

// State is a tenant's rows, as text, per table.
type State map[string][]string

// Diff describes how got differs from want, or returns "".
func Diff(want, got State) string {
	var out []string
	seen := map[string]bool{}
	var tables []string
	for _, m := range []State{want, got} {
		for n := range m {
			if !seen[n] {
				seen[n] = true
				tables = append(tables, n)
			}
		}
	}
	sort.Strings(tables)
	for _, n := range tables {
		w, g := want[n], got[n]
		wm, gm := map[string]int{}, map[string]int{}
		for _, r := range w {
			wm[r]++
		}
		for _, r := range g {
			gm[r]++
		}
		var missing, extra []string
		for _, r := range w {
			if gm[r] > 0 {
				gm[r]--
			} else {
				missing = append(missing, r)
			}
		}
		for _, r := range g {
			if wm[r] > 0 {
				wm[r]--
			} else {
				extra = append(extra, r)
			}
		}
		if len(missing)+len(extra) == 0 {
			continue
		}
		line := fmt.Sprintf("%s: %d rows, want %d", n, len(g), len(w))
		for i, r := range missing {
			if i == 3 {
				line += fmt.Sprintf("\n    ... %d more missing", len(missing)-3)
				break
			}
			line += "\n    missing " + clip(r)
		}
		for i, r := range extra {
			if i == 3 {
				line += fmt.Sprintf("\n    ... %d more extra", len(extra)-3)
				break
			}
			line += "\n    extra   " + clip(r)
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n  ")
}

func clip(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}
