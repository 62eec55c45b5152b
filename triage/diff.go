package triage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Classes of a tenant in a diff, from the worst.
const (
	Deleted     = "deleted"      // in the set, no rows left in the source
	MissingRows = "missing-rows" // fewer rows than the set in some table
	Changed     = "changed"      // no table lost rows, but more rows or other content
	New         = "new"          // in the source, not in the set
	Unchanged   = "unchanged"
)

// Classes lists every class, from the worst.
var Classes = []string{Deleted, MissingRows, Changed, New, Unchanged}

func severity(status string) int {
	for i, c := range Classes {
		if c == status {
			return i
		}
	}
	return len(Classes)
}

// DiffOptions configure a diff.
type DiffOptions struct {
	Vault  *vault.Vault
	Source string // database URL
	Select Selector
	// Tenants limits the diff to these tenants; empty means every tenant
	// of the set and of the source.
	Tenants []string
	// Exact recomputes every tenant's content digests on the source, one
	// streamed COPY per table, and compares them with the set's.
	Exact    bool
	Logger   *slog.Logger
	Progress *DiffProgress
	// Worst is how many of the worst tenants the report keeps (default 20).
	Worst int
}

// DiffProgress counts a running diff's work for a progress line.
type DiffProgress struct {
	TablesTotal, TablesDone atomic.Int64
	Rows, Bytes             atomic.Int64
}

// TableDiff is one table of a tenant: its rows in the set and in the
// source and, with Exact, whether the content digests agree.
type TableDiff struct {
	Table      string `json:"table"`
	SetRows    int64  `json:"set_rows"`
	SourceRows int64  `json:"source_rows"`
	// Digest is "same" or "differs" with Exact when the counts are equal,
	// else empty.
	Digest string `json:"digest,omitempty"`
}

// TenantDiff is one tenant's classification.
type TenantDiff struct {
	Tenant   string      `json:"tenant"`
	Status   string      `json:"status"`
	RowsLost int64       `json:"rows_lost"`
	Tables   []TableDiff `json:"tables"`
}

// DiffReport sums a diff up.
type DiffReport struct {
	Set      *Set
	Source   string // host:port/database, no credentials
	Exact    bool
	Tenants  int
	Classes  map[string]int
	RowsLost int64
	// LostByTable is the rows lost per table, over every tenant.
	LostByTable map[string]int64
	// Worst are the tenants that lost most rows, then the other changed
	// and new ones, worst first.
	Worst    []TenantDiff
	Duration time.Duration
}

// srcTenant is what the source holds of one tenant: rows (and with Exact
// the digest) of each table it has rows in. Its size is the per-tenant
// memory of a diff: about 12 bytes per table with rows (44 with Exact),
// plus the ID and a map entry.
type srcTenant struct {
	tables  []int32
	rows    []int64
	digests [][sha256.Size]byte
}

func (s *srcTenant) add(table int, rows int64, digest *[sha256.Size]byte) {
	for i, t := range s.tables {
		if int(t) == table {
			s.rows[i] += rows
			return
		}
	}
	s.tables = append(s.tables, int32(table))
	s.rows = append(s.rows, rows)
	if digest != nil {
		s.digests = append(s.digests, *digest)
	}
}

// Diff compares the source with a set, tenant by tenant and table by table,
// inside one read-only REPEATABLE READ transaction on the source, so every
// count (and digest) is of one instant and nothing can be written. It
// calls emit for every tenant in ascending ID order, then returns the
// summary. Bad input (unknown set or tenant, a source whose schema no
// longer matches the set) fails before emit is first called.
func Diff(ctx context.Context, o DiffOptions, emit func(*TenantDiff) error) (*DiffReport, error) {
	start := time.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = &DiffProgress{}
	}
	if o.Worst <= 0 {
		o.Worst = 20
	}
	for _, id := range o.Tenants {
		if strings.ContainsRune(id, 0) {
			return nil, tenantvault.Inputf("tenant ID %q contains a NUL byte", id)
		}
	}
	pgcfg, err := tenancy.ParseURL(o.Source)
	if err != nil {
		return nil, err
	}
	set, err := OpenSet(ctx, o.Vault, o.Select)
	if err != nil {
		return nil, err
	}
	o.Logger.Debug("read snapshot set", "set", set.ID, "tenants", set.Tenants, "seconds", time.Since(start).Seconds())
	cfg := tenancy.Config{Model: set.Tenancy.Model, TenantColumn: set.Tenancy.TenantColumn, TenantTable: set.Tenancy.TenantTable,
		SchemaPattern: set.Tenancy.SchemaPattern, DatabasePattern: set.Tenancy.DatabasePattern}
	if cfg.Model == tenancy.ModelDatabase {
		return nil, tenantvault.Inputf("snapshot set %s uses the database tenancy model (one database per tenant), which diff does not compare yet", set.ID)
	}
	conn, err := tenancy.Connect(ctx, pgcfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	// Read-only by construction: the server refuses any write in this
	// transaction, and every count and digest sees the same instant.
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return nil, fmt.Errorf("begin read-only transaction on %s: %w", tenancy.Describe(pgcfg), err)
	}
	defer conn.Exec(context.Background(), "ROLLBACK")
	var database string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&database); err != nil {
		return nil, err
	}
	if set.Source.Database != "" && database != set.Source.Database {
		o.Logger.Warn("the source is another database than the set was taken from", "set", set.ID, "set_database", set.Source.Database, "source_database", database)
	}
	cat, err := tenancy.Discover(ctx, conn, cfg, "")
	if err != nil {
		return nil, err
	}
	space, err := matchTables(set, cat)
	if err != nil {
		return nil, err
	}
	var only map[string]bool
	if len(o.Tenants) > 0 {
		only = map[string]bool{}
		for _, id := range o.Tenants {
			only[id] = true
		}
	}
	counted := time.Now()
	src, err := countSource(ctx, conn, space, only, o)
	if err != nil {
		return nil, err
	}
	o.Logger.Debug("read the source", "tenants", len(src), "tables", o.Progress.TablesDone.Load(), "rows", o.Progress.Rows.Load(), "exact", o.Exact, "seconds", time.Since(counted).Seconds())
	merged := time.Now()
	if only != nil {
		var unknown []string
		for _, id := range dedupeSorted(o.Tenants) {
			has, err := set.Has(ctx, id)
			if err != nil {
				return nil, err
			}
			if _, ok := src[id]; !ok && !has {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			q := make([]string, len(unknown))
			for i, id := range unknown {
				q[i] = fmt.Sprintf("%q", id)
			}
			return nil, tenantvault.Inputf("%d unknown tenant(s), neither in snapshot set %s nor in the source: %s", len(unknown), set.ID, strings.Join(q, ", "))
		}
	}
	rep := &DiffReport{Set: set, Source: tenancy.Describe(pgcfg), Exact: o.Exact, Classes: map[string]int{}, LostByTable: map[string]int64{}}
	for _, c := range Classes {
		rep.Classes[c] = 0
	}
	ids := make([]string, 0, len(src))
	for id := range src {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	next := 0
	var d TenantDiff
	handle := func(e *TenantEntry, id string, s *srcTenant) error {
		space.classify(&d, e, id, s, o.Exact)
		rep.add(&d, o.Worst)
		return emit(&d)
	}
	err = set.Entries(ctx, only, func(e *TenantEntry) error {
		for next < len(ids) && ids[next] < e.Tenant {
			if err := handle(nil, ids[next], src[ids[next]]); err != nil {
				return err
			}
			next++
		}
		var s *srcTenant
		if next < len(ids) && ids[next] == e.Tenant {
			s = src[ids[next]]
			next++
		}
		return handle(e, e.Tenant, s)
	})
	if err != nil {
		return nil, err
	}
	for ; next < len(ids); next++ {
		if err := handle(nil, ids[next], src[ids[next]]); err != nil {
			return nil, err
		}
	}
	o.Logger.Debug("compared", "tenants", rep.Tenants, "seconds", time.Since(merged).Seconds())
	rep.Duration = time.Since(start)
	return rep, nil
}

func (r *DiffReport) add(d *TenantDiff, keep int) {
	r.Tenants++
	r.Classes[d.Status]++
	r.RowsLost += d.RowsLost
	for _, t := range d.Tables {
		if t.SourceRows < t.SetRows {
			r.LostByTable[t.Table] += t.SetRows - t.SourceRows
		}
	}
	if d.Status == Unchanged {
		return
	}
	worse := func(a, b *TenantDiff) bool {
		if a.RowsLost != b.RowsLost {
			return a.RowsLost > b.RowsLost
		}
		if sa, sb := severity(a.Status), severity(b.Status); sa != sb {
			return sa < sb
		}
		return a.Tenant < b.Tenant
	}
	i := sort.Search(len(r.Worst), func(i int) bool { return worse(d, &r.Worst[i]) })
	if i >= keep {
		return
	}
	cp := *d
	cp.Tables = append([]TableDiff(nil), d.Tables...)
	r.Worst = append(r.Worst, TenantDiff{})
	copy(r.Worst[i+1:], r.Worst[i:])
	r.Worst[i] = cp
	if len(r.Worst) > keep {
		r.Worst = r.Worst[:keep]
	}
}

// tableSpace lines the set's tables up with the source's: index k < len(set
// tables) is the set's table k, higher ones are source tables the set does
// not have (the schema model's new tenants).
type tableSpace struct {
	set    *Set
	names  []string
	source []*manifest.Table // nil: the source lacks it (a deleted tenant's schema)
}

// matchTables checks that the source's tables are the set's: the same
// definitions (columns, key, tenant scope) for every table both must
// have, so that counts and digests compare like with like. In the schema
// model a tenant schema present on one side only is a new or deleted
// tenant, not a schema change.
func matchTables(set *Set, cat *tenancy.Catalog) (*tableSpace, error) {
	sp := &tableSpace{set: set}
	bySrc := map[string]int{}
	for i := range cat.Tables {
		bySrc[cat.Tables[i].QualifiedName()] = i
	}
	setOwners, srcOwners := map[string]bool{}, map[string]bool{}
	for i := range set.Tables {
		if o := set.Tables[i].Owner; o != "" {
			setOwners[o] = true
		}
	}
	for i := range cat.Tables {
		if o := cat.Tables[i].Owner; o != "" {
			srcOwners[o] = true
		}
	}
	var problems []string
	seen := map[int]bool{}
	for i := range set.Tables {
		t := &set.Tables[i]
		name := t.QualifiedName()
		sp.names = append(sp.names, name)
		j, ok := bySrc[name]
		if !ok {
			sp.source = append(sp.source, nil)
			if t.Owner != "" && !srcOwners[t.Owner] {
				continue // the whole tenant schema is gone: a deleted tenant
			}
			problems = append(problems, fmt.Sprintf("table %s is in the set, not in the source", name))
			continue
		}
		seen[j] = true
		st := &cat.Tables[j]
		sp.source = append(sp.source, st)
		if st.Signature != t.Signature || st.Kind != t.Kind {
			problems = append(problems, fmt.Sprintf("table %s changed (%s)", name, tableChange(t, st)))
		}
	}
	for j := range cat.Tables {
		if seen[j] {
			continue
		}
		st := &cat.Tables[j]
		if st.Owner != "" && !setOwners[st.Owner] {
			sp.names = append(sp.names, st.QualifiedName())
			sp.source = append(sp.source, st)
			continue // a new tenant's schema
		}
		problems = append(problems, fmt.Sprintf("table %s is in the source, not in the set", st.QualifiedName()))
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		if len(problems) > 10 {
			problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
		}
		return nil, tenantvault.WithHint(fmt.Sprintf("the source's schema no longer matches snapshot set %s (fingerprint %.12s): %s",
			set.ID, set.Fingerprint, strings.Join(problems, "; ")),
			"diff compares tables defined alike; compare with a set taken after the schema change (--snapshot ID), or restore the set into a scratch database and compare there")
	}
	return sp, nil
}

// tableChange says, for people, how a table's definition differs.
func tableChange(a, b *manifest.Table) string {
	var out []string
	if a.Kind != b.Kind {
		out = append(out, fmt.Sprintf("%s in the set, %s in the source", a.Kind, b.Kind))
	}
	cols := func(t *manifest.Table) string {
		var s []string
		for _, c := range t.Columns {
			s = append(s, c.Name+" "+c.Type)
		}
		return strings.Join(s, ", ")
	}
	if ca, cb := cols(a), cols(b); ca != cb {
		out = append(out, fmt.Sprintf("columns (%s) in the set, (%s) in the source", ca, cb))
	}
	if strings.Join(a.Key, ",") != strings.Join(b.Key, ",") {
		out = append(out, fmt.Sprintf("primary key (%s) in the set, (%s) in the source", strings.Join(a.Key, ", "), strings.Join(b.Key, ", ")))
	}
	if len(out) == 0 {
		out = append(out, "tenant scope or column details")
	}
	return strings.Join(out, "; ")
}

// countSource reads, per tenant, the rows of every scoped table of the
// space: one grouped count per table (column model) or one count per table
// (schema model, where each table is one tenant's); with Exact one ordered
// COPY per table instead, digested per tenant on the fly.
func countSource(ctx context.Context, conn *pgx.Conn, sp *tableSpace, only map[string]bool, o DiffOptions) (map[string]*srcTenant, error) {
	src := map[string]*srcTenant{}
	get := func(id string) *srcTenant {
		s := src[id]
		if s == nil {
			s = &srcTenant{}
			src[id] = s
		}
		return s
	}
	var filter []string
	for id := range only {
		filter = append(filter, id)
	}
	sort.Strings(filter)
	var work []int
	for k, st := range sp.source {
		if st == nil || st.Kind != manifest.TableScoped {
			continue
		}
		if st.Owner != "" && only != nil && !only[st.Owner] {
			continue
		}
		work = append(work, k)
	}
	o.Progress.TablesTotal.Store(int64(len(work)))
	for _, k := range work {
		st := sp.source[k]
		var err error
		switch {
		case o.Exact:
			err = digestTable(ctx, conn, st, filter, o.Progress, func(id string, rows int64, sum *[sha256.Size]byte) {
				get(id).add(k, rows, sum)
			})
		case st.Owner != "":
			var n int64
			if err = conn.QueryRow(ctx, tenancy.CountSQL(st), st.Owner).Scan(&n); err == nil {
				get(st.Owner).add(k, n, nil)
				o.Progress.Rows.Add(n)
			}
		default:
			var rows pgx.Rows
			if only != nil {
				rows, err = conn.Query(ctx, tenancy.GroupCountSQL(st, true), filter)
			} else {
				rows, err = conn.Query(ctx, tenancy.GroupCountSQL(st, false))
			}
			if err == nil {
				var id string
				var n int64
				_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
					get(id).add(k, n, nil)
					o.Progress.Rows.Add(n)
					return nil
				})
			}
		}
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", st.QualifiedName(), err)
		}
		o.Progress.TablesDone.Add(1)
	}
	// A tenant with rows only in tables the filter did not ask for is not
	// wanted (the schema model's owners are filtered above).
	return src, nil
}

// digestTable streams a table through the same ordered COPY a snapshot
// reads it with, and hashes each tenant's rows: the content digest the set
// records (a tenant's rows of a table, canonical COPY text, in key order).
func digestTable(ctx context.Context, conn *pgx.Conn, t *manifest.Table, tenants []string, p *DiffProgress, done func(string, int64, *[sha256.Size]byte)) error {
	if t.Owner != "" {
		h := sha256.New()
		cw := &countingWriter{w: h, p: p}
		tag, err := conn.PgConn().CopyTo(ctx, cw, tenancy.TenantCopySQL(t, t.Owner))
		if err != nil {
			return err
		}
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		if tag.RowsAffected() > 0 {
			done(t.Owner, tag.RowsAffected(), &sum)
		}
		p.Rows.Add(tag.RowsAffected())
		return nil
	}
	d := &digester{p: p, done: done, h: sha256.New()}
	if _, err := conn.PgConn().CopyTo(ctx, d, tenancy.ExportSQL(t, tenants)); err != nil {
		if d.err != nil {
			return d.err
		}
		return err
	}
	return d.close()
}

type countingWriter struct {
	w hash.Hash
	p *DiffProgress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.p.Bytes.Add(int64(len(b)))
	return c.w.Write(b)
}

// digester receives ExportSQL's COPY text, whose rows start with the
// tenant key and come grouped by tenant, and digests each tenant's rows
// without the key: memory is one row, whatever the table's size.
type digester struct {
	p     *DiffProgress
	done  func(string, int64, *[sha256.Size]byte)
	h     hash.Hash
	carry []byte
	cur   []byte
	open  bool
	rows  int64
	err   error
}

func (d *digester) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n := len(p)
	d.p.Bytes.Add(int64(n))
	if len(d.carry) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.carry = append(d.carry, p...)
			return n, nil
		}
		d.carry = append(d.carry, p[:i+1]...)
		d.line(d.carry)
		d.carry = d.carry[:0]
		p = p[i+1:]
	}
	for len(p) > 0 && d.err == nil {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.carry = append(d.carry, p...)
			break
		}
		d.line(p[:i+1])
		p = p[i+1:]
	}
	return n, d.err
}

func (d *digester) line(l []byte) {
	tab := bytes.IndexByte(l, '\t')
	if tab < 0 {
		d.err = fmt.Errorf("malformed COPY row")
		return
	}
	key, row := l[:tab], l[tab+1:]
	if !d.open || !bytes.Equal(key, d.cur) {
		d.finish()
		d.cur = append(d.cur[:0], key...)
		d.open = true
	}
	d.rows++
	d.h.Write(row)
}

func (d *digester) finish() {
	if !d.open {
		return
	}
	if string(d.cur) != `\N` { // rows that reach no tenant
		var sum [sha256.Size]byte
		d.h.Sum(sum[:0])
		d.done(tenancy.UnescapeCopy(d.cur), d.rows, &sum)
	}
	d.p.Rows.Add(d.rows)
	d.h.Reset()
	d.rows, d.open = 0, false
}

func (d *digester) close() error {
	if d.err != nil {
		return d.err
	}
	if len(d.carry) > 0 {
		return fmt.Errorf("COPY output ended inside a row")
	}
	d.finish()
	return nil
}

// classify fills d for one tenant from its set entry (nil: not in the set)
// and its source rows (nil: none).
func (sp *tableSpace) classify(d *TenantDiff, e *TenantEntry, id string, s *srcTenant, exact bool) {
	d.Tenant, d.RowsLost, d.Tables = id, 0, d.Tables[:0]
	srcRows := func(k int) (int64, *[sha256.Size]byte, bool) {
		if s == nil {
			return 0, nil, false
		}
		for i, t := range s.tables {
			if int(t) == k {
				if exact {
					return s.rows[i], &s.digests[i], true
				}
				return s.rows[i], nil, true
			}
		}
		return 0, nil, false
	}
	var fewer, more, differs bool
	var setTotal, srcTotal int64
	seen := map[int]bool{}
	if e != nil {
		for _, te := range e.Tables {
			seen[te.Table] = true
			n, sum, _ := srcRows(te.Table)
			td := TableDiff{Table: sp.names[te.Table], SetRows: te.Rows, SourceRows: n}
			if exact && n == te.Rows {
				td.Digest = "same"
				if n > 0 && (sum == nil || hex.EncodeToString(sum[:]) != te.Digest) {
					td.Digest = "differs"
					differs = true
				}
			}
			setTotal += te.Rows
			srcTotal += n
			d.Tables = append(d.Tables, td)
		}
	}
	if s != nil {
		for i, t := range s.tables {
			if seen[int(t)] || s.rows[i] == 0 {
				continue
			}
			d.Tables = append(d.Tables, TableDiff{Table: sp.names[t], SourceRows: s.rows[i]})
			srcTotal += s.rows[i]
		}
	}
	sort.Slice(d.Tables, func(a, b int) bool { return d.Tables[a].Table < d.Tables[b].Table })
	for _, t := range d.Tables {
		switch {
		case t.SourceRows < t.SetRows:
			fewer = true
			d.RowsLost += t.SetRows - t.SourceRows
		case t.SourceRows > t.SetRows:
			more = true
		}
	}
	switch {
	case e == nil:
		d.Status = New
	case srcTotal == 0 && setTotal > 0:
		d.Status = Deleted
	case fewer:
		d.Status = MissingRows
	case more || differs:
		d.Status = Changed
	default:
		d.Status = Unchanged
	}
}

func dedupeSorted(ids []string) []string {
	out := append([]string(nil), ids...)
	sort.Strings(out)
	n := 0
	for i, id := range out {
		if i == 0 || id != out[n-1] {
			out[n] = id
			n++
		}
	}
	return out[:n]
}
