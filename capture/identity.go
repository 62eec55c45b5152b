package capture

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
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
	need := map[string][]string{} // qualified parent -> columns its changes must carry
	for i := range tables {
		t := &tables[i]
		if t.Kind != manifest.TableScoped || t.Owner != "" || t.Scope == nil {
			continue
		}
		cols := []string{t.Scope.Column}
		if len(t.Scope.Hops) > 0 {
			cols = t.Scope.Hops[0].Columns
		}
		need[tenancy.Ident(t.Schema, t.Name)] = cols
	}
	// Leaf relations (partitions included: their identity is what counts),
	// with their parent for partitions, their identity and its columns.
	rows, err := c.conn.Query(ctx, `
SELECT format('%I.%I', n.nspname, c.relname),
       coalesce((SELECT format('%I.%I', pn.nspname, p.relname) FROM pg_partition_ancestors(c.oid) a
                 JOIN pg_class p ON p.oid = a.relid JOIN pg_namespace pn ON pn.oid = p.relnamespace
                 WHERE a.relid <> c.oid AND NOT p.relispartition), format('%I.%I', n.nspname, c.relname)),
       c.relreplident::text,
       coalesce(array(SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`)
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	type rel struct {
		name, parent, ident string
		cols                []string
	}
	rels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		err := r.Scan(&x.name, &x.parent, &x.ident, &x.cols)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("read replica identities: %w", err)
	}
	var fix []string
	reasons := map[string]string{}
	for _, x := range rels {
		if x.ident == "f" {
			continue
		}
		if x.ident == "n" || len(x.cols) == 0 {
			fix = append(fix, x.name)
			reasons[x.name] = "has no replica identity: once published, its UPDATE and DELETE statements would fail"
			continue
		}
		if want, ok := need[x.parent]; ok && !containsAll(x.cols, want) {
			fix = append(fix, x.name)
			reasons[x.name] = fmt.Sprintf("its replica identity (%s) lacks %s, which attributes its deletes to a tenant", strings.Join(x.cols, ", "), strings.Join(want, ", "))
		}
	}
	if len(fix) == 0 {
		return nil
	}
	sort.Strings(fix)
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
	return &tenantvault.InputError{Msg: msg.String(), Hint: strings.TrimSpace(hint.String()) + " (or start the capture with --set-replica-identity)"}
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
