package capture

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// checkIdentity makes sure every change the capture needs will carry what
// it needs, before the publication exists:
//
//   - a published table without a usable replica identity (no primary key,
//     identity NOTHING) would make the application's own UPDATE and DELETE
//     statements fail;
//   - a tenant table's deletes must carry the tenant column, and a table
//     scoped through a foreign key must carry that key's columns, or the
//     change cannot be attributed.
//
// Tables that fall short get REPLICA IDENTITY FULL with SetReplicaIdentity;
// otherwise the capture refuses to start and lists the fixes.
func (c *capturer) checkIdentity(ctx context.Context, tables []manifest.Table) error {
	// Keyed by the raw schema and table name: the catalog's names, not a
	// quoted rendering of them, so every table compares equal to itself.
	need := map[string][]string{} // parent schema\x00name -> columns its changes must carry
	scoped := map[string]bool{}
	for i := range tables {
		t := &tables[i]
		if cols := attributionColumns(t); cols != nil {
			need[t.Schema+"\x00"+t.Name] = cols
		}
		scoped[t.Schema+"\x00"+t.Name] = t.Kind == manifest.TableScoped
	}
	// Leaf relations (partitions included: their identity is what counts),
	// with their partition root, their identity and its columns.
	rows, err := c.conn.Query(ctx, `
SELECT format('%I.%I', n.nspname, c.relname),
       coalesce((SELECT ARRAY[pn.nspname::text, p.relname::text] FROM pg_partition_ancestors(c.oid) a
                 JOIN pg_class p ON p.oid = a.relid JOIN pg_namespace pn ON pn.oid = p.relnamespace
                 WHERE a.relid <> c.oid AND NOT p.relispartition), ARRAY[n.nspname::text, c.relname::text]),
       c.relreplident::text, c.relpersistence = 'u',
       current_setting('server_version_num')::int >= 180000 AND
         EXISTS (SELECT 1 FROM pg_attribute v WHERE v.attrelid = c.oid AND v.attgenerated <> '' AND NOT v.attisdropped),
       coalesce(array(SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`)
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	type rel struct {
		name, parent, ident string
		unlogged, virtual   bool
		cols                []string
	}
	rels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		var root []string
		err := r.Scan(&x.name, &root, &x.ident, &x.unlogged, &x.virtual, &x.cols)
		if err == nil && len(root) == 2 {
			x.parent = root[0] + "\x00" + root[1]
		}
		return x, err
	})
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	var fix, unlogged []string
	virtual := map[string]bool{}
	reasons := map[string]string{}
	for _, x := range rels {
		if x.unlogged {
			// Its changes never reach the WAL: the change log would
			// silently miss them.
			if scoped[x.parent] {
				unlogged = append(unlogged, x.name)
			}
			continue
		}
		if x.ident == "f" {
			continue
		}
		name := x.name
		if x.ident == "n" || len(x.cols) == 0 {
			fix = append(fix, name)
			reasons[name] = "has no replica identity: once published, its UPDATE and DELETE statements would fail"
			continue
		}
		if want, ok := need[x.parent]; ok && !containsAll(x.cols, want) {
			fix = append(fix, name)
			virtual[name] = x.virtual
			reasons[name] = fmt.Sprintf("its replica identity (%s) lacks %s, which its deletes and updates need to name their tenant", strings.Join(x.cols, ", "), strings.Join(want, ", "))
		}
	}
	if len(unlogged) > 0 {
		sort.Strings(unlogged)
		return tenantvault.WithHint(fmt.Sprintf("tenant table(s) %s are UNLOGGED: their changes are not written to the WAL, so change capture cannot archive them", strings.Join(unlogged, ", ")),
			"run ALTER TABLE ... SET LOGGED on them, or turn change capture off for this source")
	}
	if len(fix) == 0 {
		return nil
	}
	sort.Strings(fix)
	// PostgreSQL 18 refuses UPDATE and DELETE on a published table whose
	// identity is FULL while it has generated columns the publication does
	// not publish (virtual ones never are): widening it that way would
	// break the application's own writes.
	var noFull []string
	for _, name := range fix {
		if virtual[name] {
			noFull = append(noFull, name)
		}
	}
	if len(noFull) > 0 {
		var hint strings.Builder
		for _, name := range noFull {
			fmt.Fprintf(&hint, "CREATE UNIQUE INDEX ... ON %s (<columns it lacks>, <primary key>); ALTER TABLE %s REPLICA IDENTITY USING INDEX ...; ", name, name)
		}
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("table(s) %s need a wider replica identity, and have generated columns: on PostgreSQL 18 REPLICA IDENTITY FULL would make their UPDATE and DELETE fail once published", strings.Join(noFull, ", ")),
			Hint: strings.TrimSpace(hint.String()),
		}
	}
	if c.o.SetReplicaIdentity {
		for _, name := range fix {
			if _, err := c.conn.Exec(ctx, "ALTER TABLE "+name+" REPLICA IDENTITY FULL"); err != nil {
				return fmt.Errorf("set replica identity of %s: %w", name, err)
			}
			c.o.Logger.Info("set REPLICA IDENTITY FULL", "table", name, "why", reasons[name])
		}
		return nil
	}
	var msg, hint strings.Builder
	fmt.Fprintf(&msg, "%d table(s) need a wider replica identity before change capture can start:", len(fix))
	for _, name := range fix {
		fmt.Fprintf(&msg, "\n  %s %s", name, reasons[name])
		fmt.Fprintf(&hint, "ALTER TABLE %s REPLICA IDENTITY FULL; ", name)
	}
	return &tenantvault.InputError{Msg: msg.String(), Hint: strings.TrimSpace(hint.String()) +
		" (or REPLICA IDENTITY USING INDEX on a unique index over NOT NULL columns that include them, or start the capture with --set-replica-identity)"}
}

// attributionColumns returns the columns a change to t must carry, in its
// old row too, to be attributed to a tenant: the tenant column, or the
// first foreign key of its chain; nil for tables whose rows need none.
func attributionColumns(t *manifest.Table) []string {
	if t.Kind != manifest.TableScoped || t.Owner != "" || t.Scope == nil {
		return nil
	}
	if len(t.Scope.Hops) > 0 {
		return t.Scope.Hops[0].Columns
	}
	return []string{t.Scope.Column}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}
