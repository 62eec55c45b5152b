package tenancy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// Querier is what discovery needs: a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Catalog is what discovery found in one database.
type Catalog struct {
	Tables []manifest.Table
	// Bytes estimates each table's size on disk (partitions included), to
	// schedule large tables first.
	Bytes []int64
	// ForeignKeys are all foreign keys between the discovered tables.
	ForeignKeys []ForeignKey
}

// ForeignKey is one foreign key constraint, by table index.
type ForeignKey struct {
	Name    string
	From    int
	Columns []string
	To      int
	RefCols []string
	NotNull bool // every referencing column is NOT NULL
	// Cascade is ON DELETE CASCADE: the referencing row belongs to the
	// referenced one, the strongest sign of which tenant owns it.
	Cascade bool
}

type relInfo struct {
	oid         uint32
	schema      string
	name        string
	partitioned bool
	bytes       int64
}

// Discover reads the catalog of the connected database and classifies every
// user table for the column or schema model. owner, when set (database
// model), makes every table belong to that tenant. It runs inside the
// snapshot's transaction so that it sees the same instant as the data.
func Discover(ctx context.Context, q Querier, cfg Config, owner string) (*Catalog, error) {
	cat, err := ReadCatalog(ctx, q)
	if err != nil {
		return nil, err
	}
	switch {
	case owner != "":
		for i := range cat.Tables {
			cat.Tables[i].Kind = manifest.TableScoped
			cat.Tables[i].Owner = owner
			cat.Tables[i].Database = owner
		}
	case cfg.Model == ModelSchema:
		if err := scopeBySchema(ctx, q, cfg, nil, cat); err != nil {
			return nil, err
		}
	default:
		if err := scopeByColumn(cfg, cat); err != nil {
			return nil, err
		}
	}
	for i := range cat.Tables {
		cat.Tables[i].Signature = Signature(&cat.Tables[i])
	}
	return cat, nil
}

// DiscoverSchemas is Discover for the schema model limited to the tenant
// schemas named (and the tables outside every tenant schema): what a
// snapshot of a few tenants reads of a database holding thousands of tenant
// schemas. A named schema that does not match the pattern is no tenant.
func DiscoverSchemas(ctx context.Context, q Querier, cfg Config, schemas []string) (*Catalog, error) {
	if cfg.Model != ModelSchema {
		return nil, fmt.Errorf("DiscoverSchemas: tenancy model %q is not the schema model", cfg.Model)
	}
	schemas = append([]string{}, schemas...) // never nil: nil means all below
	cat, err := readCatalog(ctx, q, &SchemaFilter{Pattern: cfg.SchemaPattern, Schemas: schemas})
	if err != nil {
		return nil, err
	}
	if err := scopeBySchema(ctx, q, cfg, schemas, cat); err != nil {
		return nil, err
	}
	for i := range cat.Tables {
		cat.Tables[i].Signature = Signature(&cat.Tables[i])
	}
	return cat, nil
}

// TenantSchemas lists (sorted) the schemas matching the schema pattern that
// hold a table Discover would find: the tenants of the schema model, without
// reading their tables' catalog.
func TenantSchemas(ctx context.Context, q Querier, cfg Config) ([]string, error) {
	rows, err := q.Query(ctx, `
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname LIKE $1 AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND `+schemaHasTable, cfg.SchemaPattern)
	if err != nil {
		return nil, fmt.Errorf("list tenant schemas: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list tenant schemas: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// schemaHasTable is true when schema n holds a table listTables finds,
// looked for through the schema's dependencies one schema at a time (a
// subquery the planner keeps per row, not a join it would hash over every
// tenant schema's dependencies), so that the first table ends it.
const schemaHasTable = `coalesce((SELECT true FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
       WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid AND d.refobjsubid = 0
         AND d.classid = 'pg_class'::regclass AND c.relnamespace = n.oid
         AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
         AND NOT EXISTS (SELECT 1 FROM pg_depend e
                         WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
       LIMIT 1), false)`

// ReadCatalog reads the user tables of the connected database with their
// columns, keys and foreign keys, all marked global: what restore needs to
// know of a target.
func ReadCatalog(ctx context.Context, q Querier) (*Catalog, error) {
	return readCatalog(ctx, q, nil)
}

// SchemaFilter limits a catalog read to the tables outside the schemas
// matching Pattern (a LIKE pattern, as --schema-pattern) and those in the
// schemas named: what a restore of a few tenants of the schema model needs
// of a target holding thousands of tenant schemas.
type SchemaFilter struct {
	Pattern string
	Schemas []string
}

// ReadCatalogFiltered is ReadCatalog for the tables f lets through; it
// also reports whether the target has tables f leaves out.
func ReadCatalogFiltered(ctx context.Context, q Querier, f SchemaFilter) (cat *Catalog, others bool, err error) {
	if f.Schemas == nil {
		f.Schemas = []string{} // a NULL array would make NOT ... = ANY($2) unknown
	}
	if cat, err = readCatalog(ctx, q, &f); err != nil {
		return nil, false, err
	}
	// The first other tenant schema with a table ends it.
	err = q.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_namespace n
WHERE n.nspname LIKE $1 AND NOT n.nspname = ANY($2) AND `+schemaHasTable+`)`, f.Pattern, f.Schemas).Scan(&others)
	if err != nil {
		return nil, false, fmt.Errorf("list tables: %w", err)
	}
	return cat, others, nil
}

func readCatalog(ctx context.Context, q Querier, f *SchemaFilter) (*Catalog, error) {
	rels, err := listTables(ctx, q, f)
	if err != nil {
		return nil, err
	}
	cat := &Catalog{}
	index := map[uint32]int{}
	oids := make([]uint32, len(rels))
	for i, r := range rels {
		index[r.oid] = i
		oids[i] = r.oid
		cat.Tables = append(cat.Tables, manifest.Table{Schema: r.schema, Name: r.name, Partitioned: r.partitioned, Kind: manifest.TableGlobal})
		cat.Bytes = append(cat.Bytes, r.bytes)
	}
	if err := loadColumns(ctx, q, oids, index, cat); err != nil {
		return nil, err
	}
	if err := loadKeys(ctx, q, oids, index, cat); err != nil {
		return nil, err
	}
	return cat, nil
}

func listTables(ctx context.Context, q Querier, f *SchemaFilter) ([]relInfo, error) {
	// Without a filter, every user table: a scan of pg_class. With one, the
	// tables of the schemas it lets through are found from those schemas,
	// through the dependency every relation records on its schema
	// (pg_depend's index on the referenced object), then pg_class by OID:
	// pg_class has no index led by relnamespace, and at 10,000 tenant
	// schemas (150,000 relations) its scan is what a one-schema restore
	// waited for (BENCHMARKS.md, "The schema model"). Only pinned schemas
	// (pg_catalog) have no such dependencies, and they are left out here.
	distinct, from, filter, args := "", "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace", "", []any(nil)
	if f != nil {
		// One row a table, should a relation record its schema twice.
		distinct = "DISTINCT ON (n.nspname, c.relname) "
		from = `pg_namespace n
  JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid AND d.refobjsubid = 0
                  AND d.classid = 'pg_class'::regclass
  JOIN pg_class c ON c.oid = d.objid AND c.relnamespace = n.oid`
		filter, args = "AND (n.nspname NOT LIKE $1 OR n.nspname = ANY($2))", []any{f.Pattern, f.Schemas}
	}
	// Partitions are read through their parent; tables that belong to an
	// extension are recreated by CREATE EXTENSION, as pg_dump assumes.
	rows, err := q.Query(ctx, `
SELECT `+distinct+`c.oid, n.nspname, c.relname, c.relkind = 'p',
       CASE WHEN c.relkind = 'p' THEN coalesce((SELECT sum(pg_table_size(p.relid)) FROM pg_partition_tree(c.oid) p), 0) ELSE pg_table_size(c.oid) END::bigint
FROM `+from+`
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend e
                  WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
  `+filter+`
ORDER BY n.nspname, c.relname`, args...)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relInfo, error) {
		var ri relInfo
		err := r.Scan(&ri.oid, &ri.schema, &ri.name, &ri.partitioned, &ri.bytes)
		return ri, err
	})
}

func loadColumns(ctx context.Context, q Querier, oids []uint32, index map[uint32]int, cat *Catalog) error {
	rows, err := q.Query(ctx, `
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated <> '', a.attidentity::text,
       coalesce(pg_get_serial_sequence(a.attrelid::regclass::text, a.attname), ''),
       t.typcollation <> 0, a.atthasdef
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum`, oids)
	if err != nil {
		return fmt.Errorf("list columns: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var oid uint32
		var c manifest.Column
		var identity string
		if err := rows.Scan(&oid, &c.Name, &c.Type, &c.NotNull, &c.Generated, &identity, &c.Sequence, &c.Collatable, &c.HasDefault); err != nil {
			return fmt.Errorf("list columns: %w", err)
		}
		switch identity {
		case "a":
			c.Identity = "always"
		case "d":
			c.Identity = "by default"
		}
		t := &cat.Tables[index[oid]]
		t.Columns = append(t.Columns, c)
	}
	return rows.Err()
}

func loadKeys(ctx context.Context, q Querier, oids []uint32, index map[uint32]int, cat *Catalog) error {
	rows, err := q.Query(ctx, `
SELECT con.conname, con.contype::text, con.conrelid, con.confrelid,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       coalesce(array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o), '{}'),
       coalesce((SELECT bool_and(a.attnotnull) FROM unnest(con.conkey) k(n)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), false),
       con.confdeltype = 'c'
FROM pg_constraint con
WHERE con.contype IN ('p', 'f') AND con.conrelid = ANY($1) AND con.conparentid = 0
ORDER BY con.conrelid, con.conname`, oids)
	if err != nil {
		return fmt.Errorf("list constraints: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, typ string
		var rel, ref uint32
		var cols, refCols []string
		var notNull, cascade bool
		if err := rows.Scan(&name, &typ, &rel, &ref, &cols, &refCols, &notNull, &cascade); err != nil {
			return fmt.Errorf("list constraints: %w", err)
		}
		from := index[rel]
		if typ == "p" {
			cat.Tables[from].Key = cols
			continue
		}
		to, ok := index[ref]
		if !ok {
			continue // references a table we do not capture (an extension's)
		}
		cat.ForeignKeys = append(cat.ForeignKeys, ForeignKey{Name: name, From: from, Columns: cols, To: to, RefCols: refCols, NotNull: notNull, Cascade: cascade})
	}
	return rows.Err()
}

// FindTable resolves a table name as given by a user: "schema.table", or a
// bare name that is unique across schemas (public wins a tie).
func (cat *Catalog) FindTable(name string) (int, error) {
	schema, table, qualified := strings.Cut(name, ".")
	if !qualified {
		table, schema = schema, ""
	}
	var found []int
	for i, t := range cat.Tables {
		if t.Name == table && (schema == "" || t.Schema == schema) {
			found = append(found, i)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0:
		return -1, tenantvault.Inputf("no table %q in the source database", name)
	}
	for _, i := range found {
		if cat.Tables[i].Schema == "public" {
			return i, nil
		}
	}
	return -1, tenantvault.Inputf("table name %q is ambiguous: qualify it with its schema", name)
}

func hasColumn(t *manifest.Table, name string) bool {
	for _, c := range t.Columns {
		if c.Name == name {
			return true
		}
	}
	return false
}

// scopeByColumn marks tables with the tenant column (and the tenant table)
// as scoped, then every table that reaches a scoped table through foreign
// keys, shortest path first; the rest stay global.
func scopeByColumn(cfg Config, cat *Catalog) error {
	scopes := make([]*manifest.Scope, len(cat.Tables))
	if cfg.TenantTable != "" {
		i, err := cat.FindTable(cfg.TenantTable)
		if err != nil {
			return &tenantvault.InputError{Msg: "--tenant-table: " + err.Error()}
		}
		t := &cat.Tables[i]
		if len(t.Key) != 1 {
			return tenantvault.Inputf("--tenant-table %s: its primary key must be one column (the tenant ID), it has %d", t.QualifiedName(), len(t.Key))
		}
		scopes[i] = &manifest.Scope{Column: t.Key[0]}
	}
	direct := 0
	for i := range cat.Tables {
		if scopes[i] == nil && hasColumn(&cat.Tables[i], cfg.TenantColumn) {
			scopes[i] = &manifest.Scope{Column: cfg.TenantColumn}
			direct++
		}
	}
	if cfg.TenantTable == "" {
		if i := cat.implicitTenantTable(cfg.TenantColumn, scopes); i >= 0 {
			scopes[i] = &manifest.Scope{Column: cat.Tables[i].Key[0]}
		}
	}
	if direct == 0 && cfg.TenantTable == "" {
		return tenantvault.WithHint(
			fmt.Sprintf("no table has a column named %q", cfg.TenantColumn),
			"name the tenant key column with --tenant-column, or the tenants table with --tenant-table")
	}
	// Breadth first: each round scopes the tables one hop further away,
	// so every table gets a shortest path.
	for {
		next := map[int]ForeignKey{}
		for _, fk := range cat.ForeignKeys {
			if scopes[fk.From] != nil || scopes[fk.To] == nil || fk.From == fk.To {
				continue
			}
			if cur, ok := next[fk.From]; ok && !better(fk, cur, scopes) {
				continue
			}
			next[fk.From] = fk
		}
		if len(next) == 0 {
			break
		}
		for from, fk := range next {
			to := &cat.Tables[fk.To]
			hops := append([]manifest.Hop{{Columns: fk.Columns, RefSchema: to.Schema, RefTable: to.Name, RefCols: fk.RefCols}}, scopes[fk.To].Hops...)
			scopes[from] = &manifest.Scope{Column: scopes[fk.To].Column, Hops: hops}
		}
	}
	for i := range cat.Tables {
		if scopes[i] != nil {
			cat.Tables[i].Kind = manifest.TableScoped
			cat.Tables[i].Scope = scopes[i]
		}
	}
	return nil
}

// implicitTenantTable finds the table that every foreign key on a tenant
// column references by its one-column primary key: the tenants table, whose
// rows belong to their tenant even when --tenant-table is not given. It
// returns -1 when there is no such single table.
func (cat *Catalog) implicitTenantTable(column string, scopes []*manifest.Scope) int {
	found := -1
	for _, fk := range cat.ForeignKeys {
		if len(fk.Columns) != 1 || fk.Columns[0] != column || scopes[fk.From] == nil || scopes[fk.To] != nil {
			continue
		}
		to := &cat.Tables[fk.To]
		if len(to.Key) != 1 || to.Key[0] != fk.RefCols[0] {
			continue
		}
		if found >= 0 && found != fk.To {
			return -1
		}
		found = fk.To
	}
	return found
}

// better prefers the shorter path, then a cascading reference (a comment
// belongs to its issue, not to its author), then NOT NULL references
// (fewer rows without a tenant), then the constraint name, so the choice
// is stable.
func better(a, b ForeignKey, scopes []*manifest.Scope) bool {
	la, lb := len(scopes[a.To].Hops), len(scopes[b.To].Hops)
	if la != lb {
		return la < lb
	}
	if a.Cascade != b.Cascade {
		return a.Cascade
	}
	if a.NotNull != b.NotNull {
		return a.NotNull
	}
	return a.Name < b.Name
}

func scopeBySchema(ctx context.Context, q Querier, cfg Config, only []string, cat *Catalog) error {
	sql, args := `SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 ORDER BY nspname`, []any{cfg.SchemaPattern}
	if only != nil {
		sql, args = `SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 AND nspname = ANY($2) ORDER BY nspname`, append(args, only)
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("list tenant schemas: %w", err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list tenant schemas: %w", err)
	}
	if len(schemas) == 0 && only == nil {
		return tenantvault.Inputf("no schema matches --schema-pattern %q", cfg.SchemaPattern)
	}
	tenant := map[string]bool{}
	for _, s := range schemas {
		tenant[s] = true
	}
	for i := range cat.Tables {
		if t := &cat.Tables[i]; tenant[t.Schema] {
			t.Kind = manifest.TableScoped
			t.Owner = t.Schema
		}
	}
	return nil
}

// TablesOf returns the indexes of the tables that hold rows of tenant id in
// a set: every column-model scoped table, or the tables the tenant owns.
func TablesOf(tables []manifest.Table, id string) []int {
	var out []int
	for i := range tables {
		t := &tables[i]
		if t.Kind == manifest.TableScoped && (t.Owner == "" || t.Owner == id) {
			out = append(out, i)
		}
	}
	return out
}

// LoadOrder sorts table indexes so that referenced tables come before the
// tables that reference them (self references and cycles are broken by
// name); reverse it to delete.
func LoadOrder(tables []manifest.Table, fks []ForeignKey, subset []int) []int {
	in := map[int]bool{}
	for _, i := range subset {
		in[i] = true
	}
	deps := map[int][]int{}
	for _, fk := range fks {
		if fk.From != fk.To && in[fk.From] && in[fk.To] {
			deps[fk.From] = append(deps[fk.From], fk.To)
		}
	}
	sorted := append([]int(nil), subset...)
	sort.Slice(sorted, func(a, b int) bool {
		return tables[sorted[a]].QualifiedName() < tables[sorted[b]].QualifiedName()
	})
	state := map[int]int{} // 0 new, 1 visiting, 2 done
	var out []int
	var visit func(int)
	visit = func(i int) {
		if state[i] != 0 {
			return // done, or a cycle: break it here
		}
		state[i] = 1
		for _, d := range deps[i] {
			visit(d)
		}
		state[i] = 2
		out = append(out, i)
	}
	for _, i := range sorted {
		visit(i)
	}
	return out
}
