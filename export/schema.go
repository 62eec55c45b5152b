package export

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// The schema written into an export is generated from the set's table
// definitions, not from its pg_dump archive: it works for sets taken with
// --schema-archive=none, needs no pg_restore, and holds only what the
// tenant's CSV files need, so it loads into any empty PostgreSQL database.

// sqlType is the type a column gets in schema.sql. format_type() (with
// search_path empty, as snapshots read the catalog) qualifies every type
// outside pg_catalog with its schema: enums, domains, composite and
// extension types, which an empty database does not have. Those columns
// become text (arrays of them text[]): the CSV holds their text form,
// which text keeps byte for byte.
func sqlType(typ string) (string, bool) {
	if !qualified(typ) {
		return typ, false
	}
	dims := ""
	for strings.HasSuffix(typ, "[]") {
		typ = strings.TrimSuffix(typ, "[]")
		dims += "[]"
	}
	return "text" + dims, true
}

// qualified reports whether a type name has a schema: a dot outside
// double quotes.
func qualified(typ string) bool {
	quoted := false
	for _, c := range typ {
		switch {
		case c == '"':
			quoted = !quoted
		case c == '.' && !quoted:
			return true
		}
	}
	return false
}

// integerTypes can carry an identity.
var integerTypes = map[string]bool{"smallint": true, "integer": true, "bigint": true}

// hopKeys returns the foreign keys a table's rows are scoped through (the
// first hop of its scope) that schema.sql can declare: the referenced
// columns are the referenced table's primary key, and that table is in the
// export. By construction of the tenant's chunks every such reference
// finds its row in the export.
func hopKeys(set *manifest.Manifest, ti int, in map[int]bool) []tenancy.ForeignKey {
	t := &set.Tables[ti]
	if t.Scope == nil || len(t.Scope.Hops) == 0 {
		return nil
	}
	h := t.Scope.Hops[0]
	for ri := range set.Tables {
		r := &set.Tables[ri]
		if r.Schema == h.RefSchema && r.Name == h.RefTable && r.Database == t.Database {
			if ri == ti || !in[ri] || !slices.Equal(r.Key, h.RefCols) {
				return nil
			}
			return []tenancy.ForeignKey{{From: ti, To: ri, Columns: h.Columns, RefCols: h.RefCols}}
		}
	}
	return nil
}

// tenantKeys returns the foreign keys from the tables that carry the
// tenant key column to the tenants table (the table whose primary key is
// that column), when the export holds the tenant's row of it: each such
// row's key is the tenant ID, so every reference finds that row. The set
// does not record whether the source declares them; they are what the
// rows are scoped by.
func tenantKeys(set *manifest.Manifest, idx []int, rows map[int]int64) []tenancy.ForeignKey {
	root := -1
	for _, i := range idx {
		t := &set.Tables[i]
		if t.Scope != nil && len(t.Scope.Hops) == 0 && slices.Equal(t.Key, []string{t.Scope.Column}) && rows[i] > 0 {
			root = i
			break
		}
	}
	if root < 0 {
		return nil
	}
	var fks []tenancy.ForeignKey
	for _, i := range idx {
		t := &set.Tables[i]
		if i != root && t.Scope != nil && len(t.Scope.Hops) == 0 {
			fks = append(fks, tenancy.ForeignKey{From: i, To: root, Columns: []string{t.Scope.Column}, RefCols: set.Tables[root].Key})
		}
	}
	return fks
}

// orderTables lists the tenant's tables so that referenced tables come
// first, and returns the declarable foreign keys. rows holds the tenant's
// row count per table.
func orderTables(set *manifest.Manifest, idx []int, rows map[int]int64) ([]int, []tenancy.ForeignKey) {
	in := map[int]bool{}
	for _, i := range idx {
		in[i] = true
	}
	fks := tenantKeys(set, idx, rows)
	for _, i := range idx {
		fks = append(fks, hopKeys(set, i, in)...)
	}
	return tenancy.LoadOrder(set.Tables, fks, idx), fks
}

func identList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = tenancy.Ident(c)
	}
	return strings.Join(q, ", ")
}

// comment makes text safe inside a -- comment.
func comment(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(s)
}

// schemaSQL renders schema.sql.
func schemaSQL(set *manifest.Manifest, files []*tableFile, fks []tenancy.ForeignKey, hdr string) string {
	var b strings.Builder
	b.WriteString(hdr)
	b.WriteString(`--
-- Tables of the tenant's data, in foreign-key order, generated from the
-- snapshot set's table definitions: columns and types, NOT NULL, primary
-- keys, identity columns, and the foreign keys between these tables that
-- the tenant's rows are found through. Not here: indexes other than the
-- primary keys, defaults, CHECK and UNIQUE constraints, triggers, views,
-- functions, grants, the source's global (reference) tables and foreign
-- keys to them, and generated columns (the CSV files do not hold them).
-- Columns of types the source defined itself (enums, domains, composite
-- and extension types) are text here, with the source type in a comment.
-- Partitioned tables are plain tables.

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

`)
	schemas := map[string]bool{}
	for _, f := range files {
		if s := f.t.Schema; !schemas[s] && s != "public" {
			schemas[s] = true
			fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n", tenancy.Ident(s))
		}
	}
	if len(schemas) > 0 {
		b.WriteString("\n")
	}
	byTable := map[int][]tenancy.ForeignKey{}
	for _, fk := range fks {
		byTable[fk.From] = append(byTable[fk.From], fk)
	}
	for _, f := range files {
		t := f.t
		fmt.Fprintf(&b, "CREATE TABLE %s (\n", tenancy.Ident(t.Schema, t.Name))
		var lines []string
		for _, c := range f.cols {
			typ, replaced := sqlType(c.Type)
			line := "  " + tenancy.Ident(c.Name) + " " + typ
			if (c.Identity != "" || c.Sequence != "") && integerTypes[typ] {
				line += " GENERATED BY DEFAULT AS IDENTITY"
			}
			if c.NotNull {
				line += " NOT NULL"
			}
			if replaced {
				line += " /* " + strings.ReplaceAll(c.Type, "*/", "* /") + " */"
			}
			lines = append(lines, line)
		}
		if len(t.Key) > 0 {
			lines = append(lines, "  PRIMARY KEY ("+identList(t.Key)+")")
		}
		for _, fk := range byTable[f.idx] {
			r := &set.Tables[fk.To]
			lines = append(lines, fmt.Sprintf("  FOREIGN KEY (%s) REFERENCES %s (%s)", identList(fk.Columns), tenancy.Ident(r.Schema, r.Name), identList(fk.RefCols)))
		}
		b.WriteString(strings.Join(lines, ",\n"))
		b.WriteString("\n);\n")
		for _, c := range t.Columns {
			if c.Generated {
				fmt.Fprintf(&b, "-- %s.%s: generated column %s (%s) left out\n", comment(t.Schema), comment(t.Name), comment(c.Name), comment(c.Type))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// loadSQL renders load.sql: schema.sql, then every CSV file with \copy, in
// one transaction; identity sequences moved past the loaded values.
func loadSQL(files []*tableFile, hdr string) string {
	var b strings.Builder
	b.WriteString(hdr)
	b.WriteString(`--
-- Run from the directory this file is in (\copy reads paths relative to
-- the current directory), into an empty database:
--   psql -d DATABASE -v ON_ERROR_STOP=1 -f load.sql
-- Everything happens in one transaction: on any error nothing is left.

\set ON_ERROR_STOP on
\encoding UTF8
BEGIN;
\ir schema.sql

`)
	for _, f := range files {
		fmt.Fprintf(&b, "\\copy %s (%s) FROM '%s' WITH (FORMAT csv, HEADER true)\n", tenancy.Ident(f.t.Schema, f.t.Name), identList(f.colNames()), f.name)
	}
	var seqs []string
	for _, f := range files {
		for _, c := range f.cols {
			typ, _ := sqlType(c.Type)
			if (c.Identity != "" || c.Sequence != "") && integerTypes[typ] {
				tbl := tenancy.Ident(f.t.Schema, f.t.Name)
				seqs = append(seqs, fmt.Sprintf("SELECT setval(pg_get_serial_sequence(%s, %s), max(%s)) FROM %s HAVING max(%s) IS NOT NULL;",
					tenancy.Literal(tbl), tenancy.Literal(c.Name), tenancy.Ident(c.Name), tbl, tenancy.Ident(c.Name)))
			}
		}
	}
	if len(seqs) > 0 {
		b.WriteString("\n-- New rows get identities after the loaded ones.\n")
		b.WriteString(strings.Join(seqs, "\n"))
		b.WriteString("\n")
	}
	b.WriteString("\nCOMMIT;\n")
	return b.String()
}

// readme renders README.txt.
func readme(m *archiveManifest, dir, archiveName string, files []*tableFile, zstd bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `Data of tenant %q
(quoted with backslash escapes; manifest.json holds the ID exactly)
exported by %s on %s

Source:   database %q%s
Snapshot: set %s, taken at %s
As of:    %s
`, m.Tenant, m.Generator, m.ExportedAt.Format(time.RFC3339), m.Source.Database, hostPart(m.Source.Host), m.Set.ID, m.Set.ConsistentAt.Format(time.RFC3339Nano), m.AsOf.Format(time.RFC3339Nano))
	if m.Replay != nil {
		fmt.Fprintf(&b, "          (the set's rows, then %d change(s) from the change log replayed up to %s)\n", m.Replay.Changes, m.Replay.At.Format(time.RFC3339Nano))
	}
	unpack := "tar -xf " + archiveName
	if zstd {
		unpack = "tar --zstd -xf " + archiveName + "     (or: zstd -dc " + archiveName + " | tar -xf -)"
	}
	fmt.Fprintf(&b, `
Files (in the directory %s/)

  README.txt     this file
  schema.sql     CREATE TABLE statements for the tables below (see its head
                 for what it holds and what not)
  load.sql       schema.sql plus one \copy per table, in one transaction
`, dir)
	for _, f := range files {
		fmt.Fprintf(&b, "  %s  table %s\n", f.name, f.t.QualifiedName())
	}
	b.WriteString(`  manifest.json  row count, size and SHA-256 of every file; tables with
                 their content digests; the snapshot it came from
  SHA256SUMS     the same checksums for sha256sum -c

Load it with psql alone

  ` + unpack + `
  cd ` + dir + `
  sha256sum -c SHA256SUMS
  createdb tenant_copy
  psql -d tenant_copy -v ON_ERROR_STOP=1 -f load.sql

Or step by step (each \copy line of load.sql loads one table):

  psql -d tenant_copy -v ON_ERROR_STOP=1 -f schema.sql
  psql -d tenant_copy -c "\copy public.some_table (a, b) FROM 'data/01-....csv' WITH (FORMAT csv, HEADER true)"

Tables must be loaded in the order listed above (referenced tables first).

CSV format

  UTF-8, one header line of column names, rows ending in a line feed, comma
  separated. Every value is in double quotes (quotes inside doubled); an
  unquoted empty field is NULL, "" is the empty string. Values are
  PostgreSQL's text form: bytea as \x followed by hex digits, arrays as
  {a,b,NULL}, json and jsonb as JSON, timestamps in ISO form in UTC,
  intervals in PostgreSQL's style, numbers in full precision, money as
  with lc_monetary C ($1,234.56). Rows are in
  primary-key order. Spreadsheets open the files as they are; for
  PostgreSQL use (FORMAT csv, HEADER true) as load.sql does.

What this is not

  Only the tenant's own rows: the source's shared reference tables and the
  rows of other tenants are not included. schema.sql is not the source's
  full schema (no indexes, defaults, checks, triggers, functions).
`)
	return b.String()
}

func hostPart(h string) string {
	if h == "" {
		return ""
	}
	return " on " + h
}
