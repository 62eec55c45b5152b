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
//     change cannot be attributed;
//   - a row that changes tenant is archived whole, as an insert, for the
//     tenant it joins: the server sends an unchanged out-of-line (TOASTed)
//     value only in a full old row, so a table with columns that can hold
//     one needs REPLICA IDENTITY FULL (no identity index can hold such a
//     value: a btree entry is smaller than the values TOAST moves out of
//     line);
//   - a partitioned table's changes arrive under its root, described by
//     the root's identity while each partition logs the old row its own
//     identity holds: the root and every partition must qualify.
//
// Tables that fall short get REPLICA IDENTITY FULL with SetReplicaIdentity;
// otherwise the capture refuses to start and lists the fixes.
func (c *capturer) checkIdentity(ctx context.Context, tables []manifest.Table) error {
	// Keyed by the raw schema and table name: the catalog's names, not a
	// quoted rendering of them, so every table compares equal to itself.
	need := map[string][]string{} // parent schema\x00name -> columns its changes must carry
	movable := map[string]bool{}  // parent schema\x00name -> its rows can change tenant
	scoped := map[string]bool{}
	for i := range tables {
		t := &tables[i]
		if cols := attributionColumns(t); cols != nil {
			need[t.Schema+"\x00"+t.Name] = cols
			movable[t.Schema+"\x00"+t.Name] = canMove(t)
		}
		scoped[t.Schema+"\x00"+t.Name] = t.Kind == manifest.TableScoped
	}
	for i := range tables {
		if t := &tables[i]; t.Partitioned && need[t.Schema+"\x00"+t.Name] != nil {
			c.partitioned[t.Schema+"\x00"+t.Name] = identityNeed{cols: need[t.Schema+"\x00"+t.Name], movable: movable[t.Schema+"\x00"+t.Name]}
		}
	}
	rels, err := c.identities(ctx, "")
	if err != nil {
		return err
	}
	var fix, unlogged []string
	virtual := map[string]bool{}
	reasons := map[string]string{}
	var toastOnly []relIdentity // on PostgreSQL 18 with generated columns: see below
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
		what := "its replica identity"
		if x.root {
			what = "its replica identity, which describes the old rows of all its partitions,"
		}
		if x.ident == "n" || len(x.cols) == 0 {
			fix = append(fix, name)
			reasons[name] = "has no replica identity: once published, its UPDATE and DELETE statements would fail"
			if x.root {
				reasons[name] = "is partitioned and has no replica identity of its own: its partitions' changes would arrive without their old rows"
			}
			continue
		}
		want, ok := need[x.parent]
		if !ok {
			continue
		}
		var why []string
		if !containsAll(x.cols, want) {
			why = append(why, fmt.Sprintf("%s (%s) lacks %s, which its deletes and updates need to name their tenant", what, strings.Join(x.cols, ", "), strings.Join(want, ", ")))
		}
		toast := missing(x.cols, x.toastable)
		if movable[x.parent] && len(toast) > 0 {
			if len(why) == 0 && x.virtual {
				toastOnly = append(toastOnly, x)
				continue
			}
			why = append(why, fmt.Sprintf("%s (%s) lacks %s, whose unchanged out-of-line values a row that changes tenant needs to be archived whole", what, strings.Join(x.cols, ", "), strings.Join(toast, ", ")))
		}
		if len(why) > 0 {
			fix = append(fix, name)
			virtual[name] = x.virtual
			reasons[name] = strings.Join(why, "; and ")
		}
	}
	if len(unlogged) > 0 {
		sort.Strings(unlogged)
		return tenantvault.WithHint(fmt.Sprintf("tenant table(s) %s are UNLOGGED: their changes are not written to the WAL, so change capture cannot archive them", strings.Join(unlogged, ", ")),
			"run ALTER TABLE ... SET LOGGED on them, or turn change capture off for this source")
	}
	// A table that cannot be FULL (generated columns on PostgreSQL 18)
	// and whose identity index already attributes its changes is
	// captured; a row of it that changes tenant with an unchanged
	// out-of-line value cannot be archived whole, so the capture records
	// a move for the tenant it joins, and replay past it refuses.
	for _, x := range toastOnly {
		c.noFull[x.parent] = true
		name := x.name
		c.o.Logger.Warn("table has generated columns, so it cannot have REPLICA IDENTITY FULL on PostgreSQL 18: a row of it that changes tenant with an unchanged out-of-line value stops point-in-time restore of the tenant it joins until the next set", "table", name)
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
		" (for the tenant columns alone, REPLICA IDENTITY USING INDEX on a unique index over NOT NULL columns that include them also does; or start the capture with --set-replica-identity, which sets FULL on each; partitions attached later need the same)"}
}

// relIdentity is one published relation's replica identity: a leaf table
// (a partition or a plain table), or the root of a partitioned table.
type relIdentity struct {
	name, parent, ident string // quoted name; root's raw schema\x00name; relreplident
	root                bool   // a partitioned table's root
	unlogged, virtual   bool
	cols                []string // the identity's columns (nil for FULL)
	toastable           []string // columns that can hold an out-of-line value
}

// identities reads the replica identities of the source's relations, or
// only those of the partitioned table root (its raw schema\x00name) and
// its partitions.
func (c *capturer) identities(ctx context.Context, root string) ([]relIdentity, error) {
	rootSchema, rootName, _ := strings.Cut(root, "\x00")
	rows, err := c.conn.Query(ctx, `
WITH r AS (
  SELECT c.oid, c.relname, c.relkind, c.relreplident, c.relpersistence, n.nspname,
         coalesce((SELECT ARRAY[pn.nspname::text, p.relname::text] FROM pg_partition_ancestors(c.oid) a
                   JOIN pg_class p ON p.oid = a.relid JOIN pg_namespace pn ON pn.oid = p.relnamespace
                   WHERE a.relid <> c.oid AND NOT p.relispartition), ARRAY[n.nspname::text, c.relname::text]) AS root
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE (c.relkind = 'r' OR c.relkind = 'p' AND NOT c.relispartition) AND c.relpersistence <> 't'
    AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'))
SELECT format('%I.%I', r.nspname, r.relname), r.root, r.relkind = 'p',
       r.relreplident::text, r.relpersistence = 'u',
       current_setting('server_version_num')::int >= 180000 AND
         EXISTS (SELECT 1 FROM pg_attribute v WHERE v.attrelid = r.oid AND v.attgenerated <> '' AND NOT v.attisdropped),
       coalesce(array(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = r.oid AND ((r.relreplident = 'd' AND i.indisprimary) OR (r.relreplident = 'i' AND i.indisreplident))), '{}'),
       coalesce(array(SELECT a.attname::text FROM pg_attribute a
               WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 AND a.attlen = -1 AND a.attstorage <> 'p' ORDER BY a.attnum), '{}')
FROM r
WHERE $1 = '' OR r.root = ARRAY[$1, $2]`, rootSchema, rootName)
	if err != nil {
		return nil, fmt.Errorf("read replica identities: %w", err)
	}
	rels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (relIdentity, error) {
		var x relIdentity
		var root []string
		err := r.Scan(&x.name, &root, &x.root, &x.ident, &x.unlogged, &x.virtual, &x.cols, &x.toastable)
		if err == nil && len(root) == 2 {
			x.parent = root[0] + "\x00" + root[1]
		}
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("read replica identities: %w", err)
	}
	return rels, nil
}

// canMove reports whether a row of t can change tenant by an UPDATE that
// keeps the row: not the tenant table itself, whose tenant is its key.
func canMove(t *manifest.Table) bool {
	return len(t.Scope.Hops) > 0 || !(len(t.Key) == 1 && t.Key[0] == t.Scope.Column)
}

// missing returns the columns of want that are not in have.
func missing(have, want []string) []string {
	var out []string
	for _, w := range want {
		if !containsAll(have, []string{w}) {
			out = append(out, w)
		}
	}
	return out
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
