// Package tenancy discovers which tables and rows belong to which tenant (column, schema and database models) and writes the SQL that reads, digests, checks and deletes one tenant's rows.
package tenancy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// Models of tenancy.
const (
	ModelColumn   = "column"   // shared tables with a tenant key column
	ModelSchema   = "schema"   // one schema per tenant
	ModelDatabase = "database" // one database per tenant
)

// DefaultTenantColumn is the tenant key column of the column model unless
// told otherwise.
const DefaultTenantColumn = "tenant_id"

// Config says how to find tenants in a source.
type Config struct {
	Model           string
	TenantColumn    string // column model
	TenantTable     string // column model, optional: schema.table whose primary key is the tenant ID
	SchemaPattern   string // schema model: a LIKE pattern, e.g. tenant_%
	DatabasePattern string // database model: a LIKE pattern
}

// Normalize fills defaults and checks that the settings fit the model.
func (c *Config) Normalize() error {
	if c.Model == "" {
		switch {
		case c.SchemaPattern != "":
			c.Model = ModelSchema
		case c.DatabasePattern != "":
			c.Model = ModelDatabase
		default:
			c.Model = ModelColumn
		}
	}
	switch c.Model {
	case ModelColumn:
		if c.TenantColumn == "" {
			c.TenantColumn = DefaultTenantColumn
		}
		if c.SchemaPattern != "" || c.DatabasePattern != "" {
			return tenantvault.Inputf("--schema-pattern and --database-pattern do not apply to --tenancy column")
		}
	case ModelSchema:
		if c.SchemaPattern == "" {
			return tenantvault.Inputf("--tenancy schema needs --schema-pattern (a LIKE pattern such as tenant_%%)")
		}
		if c.TenantTable != "" || c.DatabasePattern != "" {
			return tenantvault.Inputf("--tenant-table and --database-pattern do not apply to --tenancy schema")
		}
	case ModelDatabase:
		if c.DatabasePattern == "" {
			return tenantvault.Inputf("--tenancy database needs --database-pattern (a LIKE pattern such as tenant_%%)")
		}
		if c.TenantTable != "" || c.SchemaPattern != "" {
			return tenantvault.Inputf("--tenant-table and --schema-pattern do not apply to --tenancy database")
		}
	default:
		return tenantvault.Inputf("unknown tenancy model %q (use column, schema or database)", c.Model)
	}
	return nil
}

// Manifest renders the config for a manifest.
func (c Config) Manifest() manifest.Tenancy {
	return manifest.Tenancy{Model: c.Model, TenantColumn: c.TenantColumn, TenantTable: c.TenantTable, SchemaPattern: c.SchemaPattern, DatabasePattern: c.DatabasePattern}
}

// SessionSQL fixes every setting that changes how values are written as text
// or read back, so that the same rows always give the same COPY bytes:
// snapshot, restore and verification all run it first.
const SessionSQL = `SET DateStyle = 'ISO, MDY';
SET IntervalStyle = 'postgres';
SET TimeZone = 'UTC';
SET extra_float_digits = 3;
SET bytea_output = 'hex';
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SET lc_monetary = 'C';
SET search_path = '';
SET row_security = off;
SET statement_timeout = 0;
SET idle_in_transaction_session_timeout = 0`

// Ident quotes a possibly schema-qualified name.
func Ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// Literal quotes s as an SQL string literal; it relies on
// standard_conforming_strings = on (SessionSQL).
func Literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Signature hashes what makes two sets' chunks of a table comparable.
func Signature(t *manifest.Table) string {
	type col struct {
		N, T string
		G    bool
	}
	v := struct {
		S, N, D string
		C       []col
		K       []string
		Sc      *manifest.Scope
	}{S: t.Schema, N: t.Name, D: t.Database, K: t.Key, Sc: t.Scope}
	for _, c := range t.Columns {
		v.C = append(v.C, col{c.Name, c.Type, c.Generated})
	}
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Fingerprint hashes the signatures of all tables, in order.
func Fingerprint(tables []manifest.Table) string {
	h := sha256.New()
	for i := range tables {
		h.Write([]byte(tables[i].Signature))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Exported returns the columns that snapshot reads and restore writes:
// everything but stored generated columns, which the server recomputes.
func Exported(t *manifest.Table) []manifest.Column {
	out := make([]manifest.Column, 0, len(t.Columns))
	for _, c := range t.Columns {
		if !c.Generated {
			out = append(out, c)
		}
	}
	return out
}

func columnList(t *manifest.Table, alias string) string {
	var b strings.Builder
	for i, c := range Exported(t) {
		if i > 0 {
			b.WriteString(", ")
		}
		if alias != "" {
			b.WriteString(alias + ".")
		}
		b.WriteString(Ident(c.Name))
	}
	return b.String()
}

// from renders the FROM clause of a scoped table: the table as t0 and, for
// tables scoped through foreign keys, the join chain to the tenant key. It
// returns the clause and the tenant key expression (empty when the table
// has a fixed owner or is global).
func from(t *manifest.Table, outer bool) (string, string) {
	var b strings.Builder
	b.WriteString(Ident(t.Schema, t.Name) + " AS t0")
	if t.Scope == nil {
		return b.String(), ""
	}
	join := " JOIN "
	if outer {
		join = " LEFT JOIN "
	}
	for i, h := range t.Scope.Hops {
		fmt.Fprintf(&b, "%s%s AS t%d ON ", join, Ident(h.RefSchema, h.RefTable), i+1)
		for j := range h.Columns {
			if j > 0 {
				b.WriteString(" AND ")
			}
			fmt.Fprintf(&b, "t%d.%s = t%d.%s", i, Ident(h.Columns[j]), i+1, Ident(h.RefCols[j]))
		}
	}
	return b.String(), fmt.Sprintf("t%d.%s", len(t.Scope.Hops), Ident(t.Scope.Column))
}

// orderBy renders the canonical row order: the primary key with text
// compared byte-wise (so the order does not depend on the database's
// collation), or, without a key, the row's own text.
func orderBy(t *manifest.Table) string {
	if len(t.Key) == 0 {
		return "ROW(" + columnList(t, "t0") + ")::text COLLATE \"C\""
	}
	parts := make([]string, len(t.Key))
	for i, k := range t.Key {
		parts[i] = "t0." + Ident(k)
		for _, c := range t.Columns {
			if c.Name == k && c.Collatable {
				parts[i] += ` COLLATE "C"`
			}
		}
	}
	return strings.Join(parts, ", ")
}

// ExportSQL is the COPY that reads a whole table in one ordered pass. For a
// column-model scoped table each row is prefixed with its tenant key (NULL
// for rows that belong to no tenant) and rows come grouped by tenant; only
// the listed tenants are read when tenants is non-empty.
func ExportSQL(t *manifest.Table, tenants []string) string {
	fromClause, key := from(t, true)
	cols := columnList(t, "t0")
	if key == "" {
		return fmt.Sprintf("COPY (SELECT %s FROM %s ORDER BY %s) TO STDOUT", cols, fromClause, orderBy(t))
	}
	where := tenantFilter(key, tenants)
	// Tenants in byte order of their IDs' text (Go's string order, the
	// tenant index's): the index is written by merging tables in that
	// order, and an incremental snapshot walks the earlier set's index
	// pages along with the export instead of holding it in memory.
	return fmt.Sprintf("COPY (SELECT %s, %s FROM %s%s ORDER BY (%s)::text COLLATE \"C\", %s) TO STDOUT", key, cols, fromClause, where, key, orderBy(t))
}

// tenantFilter is the WHERE clause that keeps the rows of tenants (all when
// there are none) by their tenant key expression.
func tenantFilter(key string, tenants []string) string {
	if len(tenants) == 0 {
		return ""
	}
	lits := make([]string, len(tenants))
	for i, id := range tenants {
		lits[i] = Literal(id)
	}
	return fmt.Sprintf(" WHERE %s IN (%s)", key, strings.Join(lits, ", "))
}

// TenantCopySQL is the COPY that reads one tenant's rows of a table in
// canonical order; its output is byte for byte the chunk content, so its
// SHA-256 is the content digest. tenant is ignored for tables with a fixed
// owner.
func TenantCopySQL(t *manifest.Table, tenant string) string {
	fromClause, key := from(t, false)
	where := ""
	if key != "" {
		where = fmt.Sprintf(" WHERE %s = %s", key, Literal(tenant))
	}
	return fmt.Sprintf("COPY (SELECT %s FROM %s%s ORDER BY %s) TO STDOUT", columnList(t, "t0"), fromClause, where, orderBy(t))
}

// GlobalRowsCopySQL reads the rows of a column-model scoped table that
// belong to no tenant, in canonical order.
func GlobalRowsCopySQL(t *manifest.Table) string {
	fromClause, key := from(t, true)
	return fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s IS NULL ORDER BY %s) TO STDOUT", columnList(t, "t0"), fromClause, key, orderBy(t))
}

// CopyInSQL is the COPY that loads chunk content into the table.
func CopyInSQL(t *manifest.Table) string {
	return fmt.Sprintf("COPY %s (%s) FROM STDIN", Ident(t.Schema, t.Name), columnList(t, ""))
}

// CountSQL counts one tenant's rows of a table; $1 is the tenant ID (unused
// for tables with a fixed owner).
func CountSQL(t *manifest.Table) string {
	fromClause, key := from(t, false)
	if key == "" {
		return fmt.Sprintf("SELECT count(*) FROM %s WHERE $1::text IS NOT NULL", fromClause)
	}
	return fmt.Sprintf("SELECT count(*) FROM %s WHERE %s = $1", fromClause, key)
}

// CountByTenantSQL counts the rows of each listed tenant in a column-model
// scoped table with one query: rows of (tenant ID as text, count).
func CountByTenantSQL(t *manifest.Table, tenants []string) string {
	fromClause, key := from(t, false)
	lits := make([]string, len(tenants))
	for i, id := range tenants {
		lits[i] = Literal(id)
	}
	return fmt.Sprintf("SELECT %s::text, count(*) FROM %s WHERE %s IN (%s) GROUP BY 1", key, fromClause, key, strings.Join(lits, ", "))
}

// DeleteSQL deletes one tenant's rows of a table; $1 is the tenant ID
// (unused for tables with a fixed owner).
func DeleteSQL(t *manifest.Table) string {
	if t.Scope == nil {
		return fmt.Sprintf("DELETE FROM %s WHERE $1::text IS NOT NULL", Ident(t.Schema, t.Name))
	}
	if len(t.Scope.Hops) == 0 {
		return fmt.Sprintf("DELETE FROM %s AS t0 WHERE t0.%s = $1", Ident(t.Schema, t.Name), Ident(t.Scope.Column))
	}
	var using, conds []string
	for i, h := range t.Scope.Hops {
		using = append(using, fmt.Sprintf("%s AS t%d", Ident(h.RefSchema, h.RefTable), i+1))
		for j := range h.Columns {
			conds = append(conds, fmt.Sprintf("t%d.%s = t%d.%s", i, Ident(h.Columns[j]), i+1, Ident(h.RefCols[j])))
		}
	}
	conds = append(conds, fmt.Sprintf("t%d.%s = $1", len(t.Scope.Hops), Ident(t.Scope.Column)))
	return fmt.Sprintf("DELETE FROM %s AS t0 USING %s WHERE %s", Ident(t.Schema, t.Name), strings.Join(using, ", "), strings.Join(conds, " AND "))
}

// Ref is a foreign key's columns and what they reference.
type Ref struct {
	Columns   []string
	RefSchema string
	RefTable  string
	RefCols   []string
}

// DanglingRefsSQL counts one tenant's rows of t that break any of refs: all
// of a reference's columns are non-null (MATCH SIMPLE) and no row of the
// referenced table matches. One pass over the tenant's rows checks every
// reference; $1 is the tenant ID.
func DanglingRefsSQL(t *manifest.Table, refs ...Ref) string {
	fromClause, key := from(t, false)
	var any []string
	for _, r := range refs {
		var conds, match []string
		for i, c := range r.Columns {
			conds = append(conds, fmt.Sprintf("t0.%s IS NOT NULL", Ident(c)))
			match = append(match, fmt.Sprintf("r.%s = t0.%s", Ident(r.RefCols[i]), Ident(c)))
		}
		any = append(any, fmt.Sprintf("(%s AND NOT EXISTS (SELECT 1 FROM %s AS r WHERE %s))",
			strings.Join(conds, " AND "), Ident(r.RefSchema, r.RefTable), strings.Join(match, " AND ")))
	}
	where := "$1::text IS NOT NULL"
	if key != "" {
		where = key + " = $1"
	}
	return fmt.Sprintf("SELECT count(*) FROM %s WHERE %s AND (%s)", fromClause, where, strings.Join(any, " OR "))
}

// TenantByKeySQL reads the tenant of the row of t whose cols equal $1..$n
// (text parameters): the tenant key expression as text, at most one row.
func TenantByKeySQL(t *manifest.Table, cols []string) string {
	fromClause, key := from(t, false)
	conds := make([]string, len(cols))
	for i, c := range cols {
		conds[i] = fmt.Sprintf("t0.%s = $%d", Ident(c), i+1)
	}
	if key == "" {
		key = Literal(t.Owner)
	}
	return fmt.Sprintf("SELECT %s::text FROM %s WHERE %s LIMIT 1", key, fromClause, strings.Join(conds, " AND "))
}

// TenantByKeyWithXminSQL is TenantByKeySQL that also returns the newest
// full (epoch-qualified) transaction ID that wrote any of the rows the
// answer was read from, as text: the caller can tell whether the answer
// was already true at an earlier point of the log.
func TenantByKeyWithXminSQL(t *manifest.Table, cols []string) string {
	fromClause, key := from(t, false)
	conds := make([]string, len(cols))
	for i, c := range cols {
		conds[i] = fmt.Sprintf("t0.%s = $%d", Ident(c), i+1)
	}
	if key == "" {
		key = Literal(t.Owner)
	}
	hops := 0
	if t.Scope != nil {
		hops = len(t.Scope.Hops)
	}
	// xmin is a 32-bit ID; place it in the epoch of the snapshot's xmax,
	// or the one before when it is larger (it wrapped since).
	xids := make([]string, hops+1)
	for i := range xids {
		x := fmt.Sprintf("t%d.xmin::text::bigint", i)
		xids[i] = fmt.Sprintf("((s.nx >> 32) << 32 | %s) - CASE WHEN %s > (s.nx & 4294967295) THEN 4294967296 ELSE 0 END", x, x)
	}
	return fmt.Sprintf("SELECT %s::text, greatest(%s)::text FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nx) s, %s WHERE %s LIMIT 1",
		key, strings.Join(xids, ", "), fromClause, strings.Join(conds, " AND "))
}

// ParentScope returns the table a chain-scoped table's first hop reaches,
// with the rest of the path as its scope: what TenantByKeySQL needs to find
// the tenant of a referenced row.
func ParentScope(t *manifest.Table) *manifest.Table {
	if t.Scope == nil || len(t.Scope.Hops) == 0 {
		return nil
	}
	h := t.Scope.Hops[0]
	return &manifest.Table{Schema: h.RefSchema, Name: h.RefTable, Kind: manifest.TableScoped,
		Scope: &manifest.Scope{Column: t.Scope.Column, Hops: t.Scope.Hops[1:]}}
}
