package tenancy

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
)

// PlainExportSQL is ExportSQL without its ORDER BY: the same rows with the
// same tenant key prefix, in whatever order the server reads them, for a
// client that puts them in canonical order itself (snapshot's sorted
// export). The server does a plain scan (and the joins of a chain).
func PlainExportSQL(t *manifest.Table, tenants []string) string {
	fromClause, key := from(t, true)
	cols := columnList(t, "t0")
	if key == "" {
		return fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT", cols, fromClause)
	}
	where := tenantFilter(key, tenants)
	return fmt.Sprintf("COPY (SELECT %s, %s FROM %s%s) TO STDOUT", key, cols, fromClause, where)
}

// RoutedExportSQL reads a chain-scoped table whose last hop is one column
// with every row prefixed by that column's value instead of the tenant
// key: the client maps it to the tenant through the last table's
// (key, tenant) pairs (ParentTenantsSQL), so the server joins all hops
// but the last (none for a one-hop chain) and sorts nothing. A row whose
// chain breaks before the last hop gets a NULL prefix, as its tenant key
// is NULL in ExportSQL.
func RoutedExportSQL(t *manifest.Table) string {
	hops := t.Scope.Hops
	n := len(hops) - 1
	var b strings.Builder
	b.WriteString(Ident(t.Schema, t.Name) + " AS t0")
	for i, h := range hops[:n] {
		fmt.Fprintf(&b, " LEFT JOIN %s AS t%d ON ", Ident(h.RefSchema, h.RefTable), i+1)
		for j := range h.Columns {
			if j > 0 {
				b.WriteString(" AND ")
			}
			fmt.Fprintf(&b, "t%d.%s = t%d.%s", i, Ident(h.Columns[j]), i+1, Ident(h.RefCols[j]))
		}
	}
	return fmt.Sprintf("COPY (SELECT t%d.%s, %s FROM %s) TO STDOUT", n, Ident(hops[n].Columns[0]), columnList(t, "t0"), b.String())
}

// ParentTenantsSQL reads the (referenced key, tenant key) pairs of the
// table a chain's last hop reaches: what a routed export maps its prefixes
// with.
func ParentTenantsSQL(h manifest.Hop, tenantColumn string) string {
	return fmt.Sprintf("COPY (SELECT %s, %s FROM %s) TO STDOUT", pgx.Identifier{h.RefCols[0]}.Sanitize(), Ident(tenantColumn), Ident(h.RefSchema, h.RefTable))
}
