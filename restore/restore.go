// Package restore puts chosen tenants back from a snapshot set into a live or scratch database, one transaction per tenant, and proves the restored rows equal the snapshot before committing.
package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// If-exists policies.
const (
	IfExistsFail    = "fail"
	IfExistsReplace = "replace"
)

// Options configure a restore.
type Options struct {
	Vault  *vault.Vault
	Target string // database URL (database model: any database on the server)
	// Tenants to restore; duplicates are ignored.
	Tenants  []string
	Select   Selector
	IfExists string
	// CreateSchema prepares an empty target from the set's schema and
	// global tables (and, in the schema and database models, creates a
	// tenant's missing schema or database).
	CreateSchema bool
	// SchemaInPlace means the target already holds the set's schema and
	// no rows (a drill's copy of a template database): CreateSchema then
	// loads the global tables into it instead of creating the schema, so
	// sets without a schema archive can be drilled. Column model only.
	SchemaInPlace bool
	DryRun        bool
	Parallel      int
	Shard         Shard
	// Confirm is asked once the plan is known and before anything is
	// written; false cancels. Nil means no confirmation.
	Confirm func(*Plan) bool
	// Announce is told the ID of the pre-restore set as soon as it exists.
	Announce  func(setID string)
	PgRestore string
	// Replay, when set, is applied to every tenant instead of one planned
	// from Select.At (verify --replay uses it to replay up to a set's LSN).
	Replay *Replay
	// Snapshot configures the pre-restore set taken before replacing.
	Snapshot snapshot.Options
	Logger   *slog.Logger
	// Progress, when set, is told about each tenant as it finishes.
	Progress func(TenantResult)
	// Started, when set, is told the plan once it is confirmed, just
	// before the first write: a progress display starts there, never over
	// the confirmation prompt.
	Started func(*Plan)
	// Loaded, when set, counts the uncompressed bytes streamed into the
	// target so far (rolled-back tenants included), for a progress display.
	Loaded *atomic.Int64
}

// Plan is what a restore will do, computed before anything is written.
type Plan struct {
	Target       string
	Model        string
	Items        []Item
	CreateSchema bool // an empty target will be prepared first
	SchemaSet    *manifest.Manifest
}

// Conflicts returns the items whose tenant already has rows in the target.
func (p *Plan) Conflicts() []*Item {
	var out []*Item
	for i := range p.Items {
		if len(p.Items[i].Existing) > 0 {
			out = append(out, &p.Items[i])
		}
	}
	return out
}

// TenantResult reports one tenant's restore.
type TenantResult struct {
	Tenant   string
	Set      string
	Tables   int
	Rows     int64
	Bytes    int64 // uncompressed COPY bytes loaded
	Deleted  int64 // rows removed first (--if-exists replace)
	Duration time.Duration
	// Verified is true when every check below passed; what was proven and
	// how is in Digests and Replayed.
	Verified bool
	// Digests is the number of tables whose content digest was recomputed
	// from the target and matched the set.
	Digests int
	// Replayed, for a restore to a time after the set, says what was
	// applied on top of the proven base: those rows are checked by row
	// counts and foreign keys, not by digests.
	Replayed *ReplayProof
	Err      error
}

// ReplayProof describes the changes a restore replayed on a proven base.
type ReplayProof struct {
	Changes    int       // applied
	Skipped    int       // read but not the tenant's (shared records of other tenants)
	LastCommit time.Time // commit time of the newest change applied; zero when none was
	LastLSN    uint64
	At         time.Time // the time restored to
}

// Report is the outcome of a restore.
type Report struct {
	Plan          *Plan
	PreRestoreSet string
	Tenants       []TenantResult
	Duration      time.Duration
}

// Run plans the restore, checks it, and unless DryRun restores every
// tenant in its own transaction. Any error before the first tenant starts
// means nothing was written.
func Run(ctx context.Context, o Options) (*Report, error) {
	start := time.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch o.IfExists {
	case "":
		o.IfExists = IfExistsFail
	case IfExistsFail, IfExistsReplace:
	default:
		return nil, tenantvault.Inputf("--if-exists %q: use fail or replace", o.IfExists)
	}
	if o.Parallel <= 0 {
		o.Parallel = 2
	}
	if o.Parallel > 64 {
		return nil, tenantvault.Inputf("--parallel %d is too many (at most 64)", o.Parallel)
	}
	tenants := dedupe(o.Tenants)
	if len(tenants) == 0 {
		return nil, tenantvault.Inputf("no tenants given: use --tenant ID (repeatable) or --tenants-file FILE")
	}
	for _, id := range tenants {
		if strings.ContainsRune(id, 0) {
			return nil, tenantvault.Inputf("tenant ID %q contains a NUL byte", id)
		}
	}
	cfg, err := tenancy.ParseURL(o.Target)
	if err != nil {
		return nil, err
	}
	r := &runner{o: o, cfg: cfg, dbs: map[string]*targetDB{}}
	defer r.close()
	r.dialEarly(ctx)
	// An erased tenant is never resurrected, even from a set taken after
	// the erasure while the source still held its rows.
	if err := o.Vault.RefuseErased(ctx, tenants); err != nil {
		return nil, err
	}
	items, err := selectSets(ctx, o.Vault, tenants, o.Select)
	if err != nil {
		return nil, err
	}
	if o.Replay != nil {
		for i := range items {
			items[i].Replay = o.Replay
		}
	} else if !o.Select.At.IsZero() {
		replays := map[string]*Replay{}
		for i := range items {
			set := items[i].Set
			rp, ok := replays[set.ID]
			if !ok {
				if rp, err = planReplay(ctx, o.Vault, set, o.Select.At); err != nil {
					return nil, err
				}
				replays[set.ID] = rp
			}
			items[i].Replay = rp
		}
	}
	if o.Shard.Of > 1 {
		kept := items[:0]
		for _, it := range items {
			if o.Shard.Has(it.Tenant) {
				kept = append(kept, it)
			}
		}
		items = kept
	}
	for _, it := range items {
		if it.Replay != nil {
			if err := checkMoves(it.Replay, it.Tenant); err != nil {
				return nil, err
			}
		}
	}
	plan, err := r.plan(ctx, items)
	if err != nil {
		return nil, err
	}
	report := &Report{Plan: plan}
	if conflicts := plan.Conflicts(); len(conflicts) > 0 && o.IfExists == IfExistsFail {
		return report, conflictError(conflicts)
	}
	if o.DryRun || len(plan.Items) == 0 {
		report.Duration = time.Since(start)
		return report, nil
	}
	if o.Confirm != nil {
		asked := time.Now()
		ok := o.Confirm(plan)
		start = start.Add(time.Since(asked)) // the time taken is the restore's, not the person's
		if !ok {
			return report, tenantvault.Inputf("restore cancelled: nothing was written")
		}
	}
	if o.Started != nil {
		o.Started(plan)
	}
	if plan.CreateSchema {
		if err := r.createDatabase(ctx, plan); err != nil {
			return report, err
		}
	}
	if err := r.createTenantSchemas(ctx, plan); err != nil {
		return report, err
	}
	if conflicts := plan.Conflicts(); len(conflicts) > 0 {
		id, err := r.preRestore(ctx, plan, conflicts)
		if err != nil {
			return report, fmt.Errorf("pre-restore snapshot (nothing was deleted): %w", err)
		}
		report.PreRestoreSet = id
		if o.Announce != nil {
			o.Announce(id)
		}
	}
	report.Tenants = r.restoreAll(ctx, plan)
	report.Duration = time.Since(start)
	return report, summarize(report.Tenants)
}

// conflictError refuses tenants that already have rows, saying where.
func conflictError(items []*Item) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d tenant(s) already have rows in the target:", len(items))
	for _, it := range items {
		names := make([]string, 0, len(it.Existing))
		for n := range it.Existing {
			names = append(names, n)
		}
		sort.Strings(names)
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = fmt.Sprintf("%s (%d)", n, it.Existing[n])
		}
		fmt.Fprintf(&b, "\n  %q: %s", it.Tenant, strings.Join(parts, ", "))
	}
	return &tenantvault.InputError{Msg: b.String(),
		Hint: "nothing was written; use --if-exists replace to replace them (their current rows are snapshotted first)"}
}

// summarize turns per-tenant failures into the command's error: integrity
// failures win, so the exit code says the data was wrong.
func summarize(results []TenantResult) error {
	var failed []string
	var integrity, first error
	for _, r := range results {
		if r.Err == nil {
			continue
		}
		failed = append(failed, fmt.Sprintf("%q", r.Tenant))
		if first == nil {
			first = r.Err
		}
		if integrity == nil && errors.Is(r.Err, tenantvault.ErrIntegrity) {
			integrity = r.Err
		}
	}
	if len(failed) == 0 {
		return nil
	}
	cause := first
	if integrity != nil {
		cause = integrity
	}
	return fmt.Errorf("%d of %d tenant(s) not restored (%s), each rolled back: %w", len(failed), len(results), strings.Join(failed, ", "), cause)
}

// runner holds the state of one restore.
type runner struct {
	o   Options
	cfg *pgx.ConnConfig
	dbs map[string]*targetDB // by database name
	// snap is the exported snapshot the pre-restore set was taken at;
	// replacing transactions import it so they delete exactly what it saved.
	hold *pgx.Conn
	snap string
	// filter: the target catalog read in the schema model (plan)
	filter *tenancy.SchemaFilter
	// early is the connection to the target's database dialled while the
	// repository is read (a backend takes tens of milliseconds to start);
	// the first use of that database takes it.
	early     chan dialed
	stopEarly context.CancelFunc
}

type dialed struct {
	conn *pgx.Conn
	err  error
}

// dialEarly starts connecting to the target's database in the background.
func (r *runner) dialEarly(ctx context.Context) {
	ctx, r.stopEarly = context.WithCancel(ctx)
	early := make(chan dialed, 1)
	r.early = early
	go func() {
		c, err := tenancy.Connect(ctx, r.cfg)
		early <- dialed{c, err}
	}()
}

// takeEarly returns the early connection's result for database name
// (ok false: none is waiting for it).
func (r *runner) takeEarly(ctx context.Context, name string) (d dialed, ok bool) {
	if r.early == nil || name != r.cfg.Database {
		return d, false
	}
	early := r.early
	r.early = nil
	select {
	case d = <-early:
		return d, true
	case <-ctx.Done():
		return dialed{err: ctx.Err()}, true
	}
}

// targetDB is one target database and its catalog.
type targetDB struct {
	cfg    *pgx.ConnConfig
	exists bool
	cat    *tenancy.Catalog
	byName map[string]int
	// filter (schema model) limits cat to the shared tables and the
	// restored tenants' schemas; others says the target has more tables.
	filter *tenancy.SchemaFilter
	others bool

	mu      sync.Mutex
	touched map[int]bool // tables that received rows, by catalog index
	// idle connections, handed from the catalog read to the counts to the
	// tenant transactions: a one-tenant restore connects once.
	idle []*pgx.Conn
}

func (r *runner) close() {
	if r.stopEarly != nil {
		r.stopEarly()
	}
	if early := r.early; early != nil {
		// Never taken: the restore stopped before it reached the target.
		go func() {
			if d := <-early; d.conn != nil {
				d.conn.Close(context.Background())
			}
		}()
	}
	if r.hold != nil {
		r.hold.Close(context.Background())
	}
	for _, db := range r.dbs {
		db.mu.Lock()
		for _, c := range db.idle {
			c.Close(context.Background())
		}
		db.idle = nil
		db.mu.Unlock()
	}
}

// conn returns an idle connection to the database, or a new one.
func (db *targetDB) conn(ctx context.Context) (*pgx.Conn, error) {
	db.mu.Lock()
	for len(db.idle) > 0 {
		c := db.idle[len(db.idle)-1]
		db.idle = db.idle[:len(db.idle)-1]
		if !c.IsClosed() {
			db.mu.Unlock()
			return c, nil
		}
	}
	db.mu.Unlock()
	return tenancy.Connect(ctx, db.cfg)
}

// release keeps a connection for reuse when it is idle outside any
// transaction; otherwise (after a failure) it is closed.
func (db *targetDB) release(c *pgx.Conn) {
	if c.IsClosed() || c.PgConn().TxStatus() != 'I' || c.PgConn().IsBusy() {
		c.Close(context.Background())
		return
	}
	db.mu.Lock()
	db.idle = append(db.idle, c)
	db.mu.Unlock()
}

// database returns the target database a tenant's rows go to.
func (r *runner) database(model, tenant string) string {
	if model == tenancy.ModelDatabase {
		return tenant
	}
	return r.cfg.Database
}

// open reads a target database's catalog, once.
func (r *runner) open(ctx context.Context, name string, cfg tenancy.Config) (*targetDB, error) {
	if db, ok := r.dbs[name]; ok {
		return db, nil
	}
	db := &targetDB{cfg: tenancy.WithDatabase(r.cfg, name), filter: r.filter}
	var err error
	if d, ok := r.takeEarly(ctx, name); ok {
		if err = d.err; err == nil {
			db.idle = append(db.idle, d.conn)
		}
	}
	if err == nil {
		err = db.refresh(ctx)
	}
	if err != nil {
		var pg *pgconn.PgError
		var ie *tenantvault.InputError
		if cfg.Model == tenancy.ModelDatabase && (errors.As(err, &pg) && pg.Code == "3D000" || errors.As(err, &ie) && strings.Contains(err.Error(), "does not exist")) {
			r.dbs[name] = db // missing tenant database
			return db, nil
		}
		return nil, err
	}
	r.dbs[name] = db
	return db, nil
}

func (db *targetDB) refresh(ctx context.Context) error {
	conn, err := db.conn(ctx)
	if err != nil {
		return err
	}
	defer db.release(conn)
	// Restore follows the set's classification; of the target it needs
	// only the columns and foreign keys.
	var cat *tenancy.Catalog
	if db.filter != nil {
		cat, db.others, err = tenancy.ReadCatalogFiltered(ctx, conn, *db.filter)
	} else {
		cat, err = tenancy.ReadCatalog(ctx, conn)
	}
	if err != nil {
		return err
	}
	db.exists = true
	db.cat = cat
	db.byName = map[string]int{}
	for i, t := range cat.Tables {
		db.byName[tenancy.Ident(t.Schema, t.Name)] = i
	}
	return nil
}

func (db *targetDB) table(t *manifest.Table) (*manifest.Table, int) {
	i, ok := db.byName[tenancy.Ident(t.Schema, t.Name)]
	if !ok {
		return nil, -1
	}
	return &db.cat.Tables[i], i
}

// plan checks the target against every set involved and counts the rows
// each tenant already has there.
func (r *runner) plan(ctx context.Context, items []Item) (*Plan, error) {
	p := &Plan{Target: tenancy.Describe(r.cfg), Items: items}
	if len(items) == 0 {
		return p, nil
	}
	newest := items[0].Set
	for _, it := range items {
		if it.Set.ConsistentAt.After(newest.ConsistentAt) {
			newest = it.Set
		}
		if it.Set.Tenancy != newest.Tenancy {
			return nil, tenantvault.Inputf("the chosen sets use different tenancy settings (%s and %s): restore them separately", it.Set.ID, newest.ID)
		}
	}
	p.Model = newest.Tenancy.Model
	p.SchemaSet = newest
	tcfg := tenancy.Config{Model: p.Model}
	if p.Model == tenancy.ModelSchema && newest.Tenancy.SchemaPattern != "" {
		// Of a target with thousands of tenant schemas, only the shared
		// tables and the restored tenants' are read.
		r.filter = &tenancy.SchemaFilter{Pattern: newest.Tenancy.SchemaPattern}
		for _, it := range items {
			r.filter.Schemas = append(r.filter.Schemas, it.Tenant)
		}
	}
	if r.o.CreateSchema && p.Model != tenancy.ModelDatabase {
		db, err := r.open(ctx, r.cfg.Database, tcfg)
		if err != nil {
			return nil, err
		}
		switch {
		case r.o.SchemaInPlace:
			if p.Model != tenancy.ModelColumn {
				return nil, tenantvault.Inputf("a schema in place (a drill template) works for the column tenancy model only; set %s uses the %s model", newest.ID, p.Model)
			}
			if err := r.checkGlobalsInPlace(ctx, db, newest); err != nil {
				return nil, err
			}
			p.CreateSchema = true // the global tables are loaded; the rest is checked below
		case len(db.cat.Tables) == 0 && !db.others:
			if err := needSchemaArchive(newest); err != nil {
				return nil, err
			}
			p.CreateSchema = true
			return p, nil // the schema comes from the set, so it matches
		case p.Model == tenancy.ModelColumn:
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("--create-schema needs an empty target database, but %s has tables (%s, ...)", p.Target, db.cat.Tables[0].QualifiedName()),
				Hint: "nothing was written; restore into the existing schema without --create-schema, or into a new database",
			}
		}
		// Schema model into a live database: only missing tenant
		// schemas are created, below.
	}
	var problems []string
	var problemSet string
	for i := range p.Items {
		it := &p.Items[i]
		db, err := r.open(ctx, r.database(p.Model, it.Tenant), tcfg)
		if err != nil {
			return nil, err
		}
		if !db.exists || p.Model == tenancy.ModelSchema && !db.hasSchema(it.Tenant) {
			if !r.o.CreateSchema {
				what := "database"
				if p.Model == tenancy.ModelSchema {
					what = "schema"
				}
				return nil, &tenantvault.InputError{
					Msg:  fmt.Sprintf("tenant %q: %s %s does not exist in the target", it.Tenant, what, tenancy.Ident(it.Tenant)),
					Hint: "nothing was written; pass --create-schema to create it from the snapshot's schema",
				}
			}
			if err := needSchemaArchive(it.Set); err != nil {
				return nil, err
			}
			it.MissingSchema = true
			continue
		}
		for _, ti := range tenancy.TablesOf(it.Set.Tables, it.Tenant) {
			st := &it.Set.Tables[ti]
			tt, _ := db.table(st)
			if tt == nil {
				problems = append(problems, fmt.Sprintf("%s: table missing in the target", st.QualifiedName()))
				problemSet = it.Set.ID
				continue
			}
			if pr := compareTable(st, tt); len(pr) > 0 {
				problems = append(problems, pr...)
				problemSet = it.Set.ID
			}
		}
	}
	if len(problems) > 0 {
		return nil, &tenantvault.InputError{Err: &SchemaMismatchError{Set: problemSet, Problems: dedupeKeepOrder(problems)},
			Hint: "nothing was written; migrate the target to the snapshot's schema, or restore into an empty database with --create-schema"}
	}
	if err := r.countExisting(ctx, p); err != nil {
		return nil, err
	}
	return p, nil
}

// checkGlobalsInPlace makes sure a schema in place can take the set's
// global tables: each exists, matches, and is empty.
func (r *runner) checkGlobalsInPlace(ctx context.Context, db *targetDB, set *manifest.Manifest) error {
	var problems []string
	conn, err := db.conn(ctx)
	if err != nil {
		return err
	}
	defer db.release(conn)
	for _, ti := range globalTables(set) {
		st := &set.Tables[ti]
		tt, _ := db.table(st)
		if tt == nil {
			problems = append(problems, fmt.Sprintf("%s: table missing in the target", st.QualifiedName()))
			continue
		}
		problems = append(problems, compareTable(st, tt)...)
		var rows bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+tenancy.Ident(st.Schema, st.Name)+")").Scan(&rows); err != nil {
			return fmt.Errorf("look at %s: %w", st.QualifiedName(), err)
		}
		if rows {
			problems = append(problems, fmt.Sprintf("%s: has rows (the set's global rows are loaded into it: it must be empty)", st.QualifiedName()))
		}
	}
	if len(problems) > 0 {
		return &tenantvault.InputError{Err: &SchemaMismatchError{Set: set.ID, Problems: problems},
			Hint: "nothing was written; the template must hold the snapshot's schema and no rows"}
	}
	return nil
}

// ErrNoSchemaArchive is wrapped by the error of a restore that must create
// a schema from a set taken with --schema-archive=none.
var ErrNoSchemaArchive = errors.New("the snapshot set has no schema archive")

// needSchemaArchive refuses to create a schema from a set that holds none.
func needSchemaArchive(set *manifest.Manifest) error {
	if set.HasSchemaArchive() {
		return nil
	}
	return &tenantvault.InputError{
		Msg: fmt.Sprintf("snapshot set %s has no schema archive (it was taken with --schema-archive=none), so --create-schema cannot create the schema", set.ID),
		Err: ErrNoSchemaArchive,
		Hint: "nothing was written; create the schema in the target first (e.g. run your migrations on it), " +
			"then restore into it without --create-schema",
	}
}

func dedupeKeepOrder(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func (db *targetDB) hasSchema(name string) bool {
	for _, t := range db.cat.Tables {
		if t.Schema == name {
			return true
		}
	}
	return false
}

// countExisting records the rows each tenant already has in the target.
// Shared tables are counted with one grouped query per table for all
// tenants, not one query per tenant and table: a mass restore plans in
// seconds. Tables with a tenant column come first; a table that reaches
// its tenant through foreign keys is counted only for the tenants that have
// rows at the end of its path (it has none for the others: its rows are
// found by an inner join through that table), and a tenant column that
// leads an index is first probed for which tenants have any row, so that
// restoring tenants that are gone (the common case of a mass restore)
// counts nothing by scanning large tables (measured, BENCHMARKS.md "Mass
// restore": 6.4 s -> 0.2 s for 403 of 1,008 tenants at 1 GB).
func (r *runner) countExisting(ctx context.Context, p *Plan) error {
	conns := map[string]*pgx.Conn{}
	defer func() {
		for name, c := range conns {
			r.dbs[name].release(c)
		}
	}()
	conn := func(name string) (*pgx.Conn, error) {
		if c, ok := conns[name]; ok {
			return c, nil
		}
		c, err := r.dbs[name].conn(ctx)
		if err == nil {
			conns[name] = c
		}
		return c, err
	}
	// Shared tables, grouped by set so each table definition is the set's.
	bySet := map[*manifest.Manifest][]*Item{}
	for i := range p.Items {
		if it := &p.Items[i]; !it.MissingSchema {
			bySet[it.Set] = append(bySet[it.Set], it)
		}
	}
	for set, items := range bySet {
		for _, ti := range byHops(set.Tables) {
			t := &set.Tables[ti]
			if t.Kind != manifest.TableScoped {
				continue
			}
			if t.Owner != "" {
				for _, it := range items {
					if it.Tenant != t.Owner {
						continue
					}
					c, err := conn(r.database(p.Model, it.Tenant))
					if err != nil {
						return err
					}
					var n int64
					if err := c.QueryRow(ctx, tenancy.CountSQL(t), it.Tenant).Scan(&n); err != nil {
						return fmt.Errorf("count rows of tenant %q in %s: %w", it.Tenant, t.QualifiedName(), err)
					}
					it.addExisting(t.QualifiedName(), n)
				}
				continue
			}
			c, err := conn(r.cfg.Database)
			if err != nil {
				return err
			}
			byID := map[string]*Item{}
			var ids []string
			root := pathRoot(set, t)
			for _, it := range items {
				if root != nil && it.Existing[root.QualifiedName()] == 0 {
					continue // no rows at the end of its path: none here
				}
				byID[it.Tenant] = it
				ids = append(ids, it.Tenant)
			}
			if len(ids) > 0 && t.Scope != nil && len(t.Scope.Hops) == 0 {
				if ids, err = tenantsWithRows(ctx, c, t, ids); err != nil {
					return err
				}
			}
			for len(ids) > 0 {
				batch := ids[:min(len(ids), 1000)]
				ids = ids[len(batch):]
				rows, err := c.Query(ctx, tenancy.CountByTenantSQL(t, batch))
				if err != nil {
					return fmt.Errorf("count existing rows in %s: %w", t.QualifiedName(), err)
				}
				for rows.Next() {
					var id string
					var n int64
					if err := rows.Scan(&id, &n); err != nil {
						rows.Close()
						return err
					}
					if it := byID[id]; it != nil {
						it.addExisting(t.QualifiedName(), n)
					}
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					return fmt.Errorf("count existing rows in %s: %w", t.QualifiedName(), err)
				}
			}
		}
	}
	return nil
}

func (it *Item) addExisting(table string, n int64) {
	if n == 0 {
		return
	}
	if it.Existing == nil {
		it.Existing = map[string]int64{}
	}
	it.Existing[table] += n
}

// createDatabase prepares an empty target (column model) from the newest
// set's schema, then loads that set's global rows, in one transaction.
func (r *runner) createDatabase(ctx context.Context, p *Plan) error {
	set := p.SchemaSet
	var sql string
	if !r.o.SchemaInPlace {
		if err := needSchemaArchive(set); err != nil {
			return err
		}
		var err error
		if sql, err = r.schemaScript(ctx, p, set); err != nil {
			return err
		}
	}
	db := r.dbs[r.cfg.Database]
	conn, err := tenancy.Connect(ctx, db.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if sql != "" {
		if err := execScript(ctx, conn, sql); err != nil {
			return fmt.Errorf("create schema from set %s: %w", set.ID, err)
		}
		if _, err := conn.Exec(ctx, tenancy.SessionSQL); err != nil {
			return err // the script changed search_path and more
		}
	}
	if err := suppressTriggers(ctx, conn); err != nil {
		return err
	}
	for _, c := range set.Global {
		t := &set.Tables[c.Table]
		if _, err := r.loadChunk(ctx, conn, set, c); err != nil {
			return fmt.Errorf("load global table %s: %w", t.QualifiedName(), err)
		}
		if err := verifyChunk(ctx, conn, t, c, "", true); err != nil {
			return err
		}
	}
	if err := moveSequences(ctx, conn, set.Tables, globalTables(set)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}
	r.o.Logger.Info("prepared empty target", "target", p.Target, "set", set.ID, "global_tables", len(set.Global), "schema_in_place", r.o.SchemaInPlace)
	return db.refresh(ctx)
}

// schemaScript renders the set's schema archive for an empty target.
func (r *runner) schemaScript(ctx context.Context, p *Plan, set *manifest.Manifest) (string, error) {
	if set.Schemas[0].TenantSchemasOnly {
		return "", tenantvault.WithHint(fmt.Sprintf("snapshot set %s holds the schema of its own tenant schemas only (a pre-restore set): restoring it into an empty database would miss what lives outside them", set.ID),
			"restore it into the database it was taken from, or restore from a full set (--set ID; tenantvault list --tenant ID lists them)")
	}
	if p.Model == tenancy.ModelSchema {
		// A tenant restored from a set with another schema (one taken
		// before the newest, say, when the tenant was dropped since) is
		// not in this set's schema, or not as its rows were taken: its
		// schema is created from its own set afterwards.
		var ts []*manifest.Tenant
		for i := range p.Items {
			it := &p.Items[i]
			if sameSchema(it.Set, set) {
				ts = append(ts, it.T)
			} else {
				it.MissingSchema = true
			}
		}
		if sql, ok, err := r.splitSchemaScript(ctx, &set.Schemas[0], true, ts); ok || err != nil {
			return sql, err
		}
	}
	if p.Model == tenancy.ModelSchema && set.ExactTenants {
		// Its entries name only the tenants it captured, so the whole
		// archive's other tenant schemas cannot be told apart from the
		// shared ones to leave them out.
		return "", tenantvault.WithHint(fmt.Sprintf("snapshot set %s is a partial set without split schema SQL: restoring it into an empty database would create every tenant schema of its archive", set.ID),
			"restore it into the database it was taken from, or restore from a full set (--set ID; tenantvault list --tenant ID lists them)")
	}
	// In the schema model, the schemas of tenants not being restored stay
	// out: an empty schema would look like a tenant with no rows.
	var exclude []string
	if p.Model == tenancy.ModelSchema {
		restoring := map[string]bool{}
		for _, it := range p.Items {
			restoring[it.Tenant] = !it.MissingSchema
		}
		// A schema-model tenant is the owner of its tables: the header's
		// tables name every one, without reading the tenant index.
		seen := map[string]bool{}
		for _, t := range set.Tables {
			if t.Owner != "" && !restoring[t.Owner] && !seen[t.Owner] {
				seen[t.Owner] = true
				exclude = append(exclude, t.Owner)
			}
		}
		if set.Version >= manifest.Version3 {
			// Set format 3 keeps a tenant's tables in its index entry, so
			// the header names only the tenants read so far: the rest are
			// found in the index (this path renders the whole archive
			// anyway).
			s, err := r.o.Vault.OpenSet(ctx, set.ID)
			if err != nil {
				return "", err
			}
			err = s.Tenants(ctx, func(t *manifest.Tenant) error {
				if !restoring[t.ID] && !seen[t.ID] {
					seen[t.ID] = true
					exclude = append(exclude, t.ID)
				}
				return nil
			})
			if err != nil {
				return "", err
			}
		}
		sort.Strings(exclude)
	}
	return r.renderArchives(ctx, set.Schemas, "", exclude)
}

// sameSchema reports whether set a's schema is set b's: the same set, or
// the same split schema SQL (stored once, content-addressed).
func sameSchema(a, b *manifest.Manifest) bool {
	if a.ID == b.ID {
		return true
	}
	sa, sb := a.Schemas, b.Schemas
	return len(sa) > 0 && len(sb) > 0 && sa[0].Split != nil && sb[0].Split != nil && sa[0].Split.Key == sb[0].Split.Key
}

func globalTables(m *manifest.Manifest) []int {
	var out []int
	seen := map[int]bool{}
	for _, c := range m.Global {
		if !seen[c.Table] {
			seen[c.Table] = true
			out = append(out, c.Table)
		}
	}
	return out
}

// createTenantSchemas creates the missing schema or database of tenants in
// the schema and database models.
func (r *runner) createTenantSchemas(ctx context.Context, p *Plan) error {
	stale := map[*targetDB]bool{}
	for i := range p.Items {
		it := &p.Items[i]
		if !it.MissingSchema {
			continue
		}
		dbName := r.database(p.Model, it.Tenant)
		var dump *manifest.SchemaDump
		for j := range it.Set.Schemas {
			if p.Model != tenancy.ModelDatabase || it.Set.Schemas[j].Database == it.Tenant {
				dump = &it.Set.Schemas[j]
				break
			}
		}
		if dump == nil {
			return tenantvault.Integrityf("snapshot set %s has no schema archive for tenant %q", it.Set.ID, it.Tenant)
		}
		sql, split, err := "", false, error(nil)
		if p.Model == tenancy.ModelSchema {
			sql, split, err = r.splitSchemaScript(ctx, dump, false, []*manifest.Tenant{it.T})
		}
		if err == nil && !split {
			dumps := []manifest.SchemaDump{*dump}
			if p.Model == tenancy.ModelSchema {
				dumps = it.Set.Schemas // several when dumped in batches
			}
			sql, err = r.renderTenantSchema(ctx, p, it, dumps)
		}
		if err != nil {
			return err
		}
		if p.Model == tenancy.ModelDatabase {
			admin, err := tenancy.Connect(ctx, r.cfg)
			if err != nil {
				return err
			}
			_, err = admin.Exec(ctx, "CREATE DATABASE "+tenancy.Ident(dbName))
			admin.Close(context.Background())
			if err != nil {
				return fmt.Errorf("create database for tenant %q: %w", it.Tenant, err)
			}
		}
		db := r.dbs[dbName]
		conn, err := tenancy.Connect(ctx, db.cfg)
		if err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "BEGIN")
		if err == nil && p.Model == tenancy.ModelSchema {
			// pg_restore --schema restores what is in the schema, not
			// the schema itself. A schema that exists without the tenant's
			// tables (created by hand, or by an older build's restore of
			// another tenant) is used as it is.
			_, err = conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+tenancy.Ident(it.Tenant))
		}
		if err == nil {
			err = execScript(ctx, conn, sql)
		}
		if err == nil {
			_, err = conn.Exec(ctx, "COMMIT")
		}
		conn.Close(context.Background())
		if err != nil {
			return fmt.Errorf("create schema of tenant %q from set %s: %w", it.Tenant, it.Set.ID, err)
		}
		stale[db] = true
		r.o.Logger.Info("created tenant schema", "tenant", it.Tenant, "set", it.Set.ID)
	}
	// The catalog is read again once for all the schemas created, not once
	// a tenant: each read covers every restored tenant's schema, so that a
	// mass restore creating n schemas would read n^2 tables' worth.
	for db := range stale {
		if err := db.refresh(ctx); err != nil {
			return err
		}
	}
	return nil
}

// preRestore snapshots the current rows of the tenants about to be
// replaced. The snapshot it is taken at stays exported until the restore
// ends, and each replacing transaction imports it, so what is deleted is
// exactly what was saved; a tenant changed since fails to serialize instead
// of losing the change.
func (r *runner) preRestore(ctx context.Context, p *Plan, conflicts []*Item) (string, error) {
	if p.Model == tenancy.ModelDatabase {
		// Each tenant database is its own instant; no shared snapshot.
		return r.preRestoreSet(ctx, conflicts, "")
	}
	hold, err := tenancy.Connect(ctx, r.cfg)
	if err != nil {
		return "", err
	}
	r.hold = hold
	if _, err := hold.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return "", err
	}
	if err := hold.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&r.snap); err != nil {
		return "", err
	}
	return r.preRestoreSet(ctx, conflicts, r.snap)
}

func (r *runner) preRestoreSet(ctx context.Context, conflicts []*Item, snap string) (string, error) {
	so := r.o.Snapshot
	so.Source, so.Vault, so.Snapshot = r.o.Target, r.o.Vault, snap
	so.Kind = manifest.KindPreRestore
	so.OnlyTenantSchemas = true // it goes back into this database
	so.Tenancy = tenancyConfig(conflicts[0].Set.Tenancy)
	if !conflicts[0].Set.HasSchemaArchive() {
		// It goes back into this same live database, whose schema is in
		// place; and the pg_dump at hand may not read the target.
		so.SchemaArchive = manifest.SchemaArchiveNone
	}
	so.Tenants = nil
	for _, it := range conflicts {
		so.Tenants = append(so.Tenants, it.Tenant)
	}
	so.Note = fmt.Sprintf("rows replaced by a restore from set %s", conflicts[0].Set.ID)
	so.Progress = nil
	m, err := snapshot.Run(ctx, so)
	if err != nil {
		return "", err
	}
	r.o.Logger.Info("took pre-restore snapshot", "set", m.ID, "tenants", len(so.Tenants))
	return m.ID, nil
}

func tenancyConfig(t manifest.Tenancy) tenancy.Config {
	return tenancy.Config{Model: t.Model, TenantColumn: t.TenantColumn, TenantTable: t.TenantTable, SchemaPattern: t.SchemaPattern, DatabasePattern: t.DatabasePattern}
}

// restoreAll restores tenants in parallel, each in its own transaction,
// then moves the sequences of every table that received rows.
func (r *runner) restoreAll(ctx context.Context, p *Plan) []TenantResult {
	results := make([]TenantResult, len(p.Items))
	jobs := make(chan int)
	var wg sync.WaitGroup
	// Tables created empty have no statistics: once the first tenants are
	// in, ANALYZE them so the rest are planned from real numbers (the
	// plans otherwise shift whenever autovacuum gets there).
	analyzeAfter := int64(-1)
	if p.CreateSchema {
		analyzeAfter = int64(max(5, len(p.Items)/20))
	}
	var done atomic.Int64
	var analyze sync.Once
	for range min(r.o.Parallel, len(p.Items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				results[i] = r.restoreTenant(ctx, p, &p.Items[i])
				if r.o.Progress != nil {
					r.o.Progress(results[i])
				}
				if done.Add(1) == analyzeAfter && len(p.Items) > int(analyzeAfter) {
					analyze.Do(func() { r.analyzeTouched(ctx) })
				}
			}
		}()
	}
	for i := range p.Items {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := r.moveTouchedSequences(ctx); err != nil {
		// The rows are committed and verified; say what is left to do.
		r.o.Logger.Error("restored rows are committed, but moving sequences past them failed; new rows may collide until they are moved", "err", err)
	}
	return results
}

// analyzeTouched refreshes the planner statistics of the tables that
// received rows so far.
func (r *runner) analyzeTouched(ctx context.Context) {
	for _, db := range r.dbs {
		db.mu.Lock()
		var names []string
		for i := range db.touched {
			t := &db.cat.Tables[i]
			names = append(names, tenancy.Ident(t.Schema, t.Name))
		}
		db.mu.Unlock()
		if len(names) == 0 {
			continue
		}
		conn, err := db.conn(ctx)
		if err != nil {
			r.o.Logger.Warn("could not analyze restored tables", "err", err)
			continue
		}
		if _, err := conn.Exec(ctx, "ANALYZE "+strings.Join(names, ", ")); err != nil {
			r.o.Logger.Warn("could not analyze restored tables", "err", err)
		}
		db.release(conn)
	}
}

// touch records the target tables a tenant's rows went into.
func (r *runner) touch(db *targetDB, order []int, targetIdx map[int]int) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.touched == nil {
		db.touched = map[int]bool{}
	}
	for _, si := range order {
		db.touched[targetIdx[si]] = true
	}
}

// moveTouchedSequences moves each owned sequence of the tables that
// received rows past the largest value in the table. It runs once after all
// tenants rather than in every tenant's transaction: sequences are not
// transactional, and a live database's sequences are normally ahead of
// every restored ID already.
func (r *runner) moveTouchedSequences(ctx context.Context) error {
	var errs []error
	for _, db := range r.dbs {
		if len(db.touched) == 0 {
			continue
		}
		idx := make([]int, 0, len(db.touched))
		for i := range db.touched {
			idx = append(idx, i)
		}
		sort.Ints(idx)
		conn, err := db.conn(ctx) // the last tenant's, idle since its commit
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, moveSequences(ctx, conn, db.cat.Tables, idx))
		db.release(conn)
	}
	return errors.Join(errs...)
}

// byHops returns the indexes of tables in order of the length of their
// path to the tenant key, shortest first (stable).
func byHops(tables []manifest.Table) []int {
	idx := make([]int, len(tables))
	for i := range idx {
		idx[i] = i
	}
	hops := func(i int) int {
		if tables[i].Scope == nil {
			return 0
		}
		return len(tables[i].Scope.Hops)
	}
	sort.SliceStable(idx, func(a, b int) bool { return hops(idx[a]) < hops(idx[b]) })
	return idx
}

// pathRoot returns the set's table at the end of t's path to the tenant
// key when that table holds the key itself (no hops), so that a tenant
// with no rows there has none in t; nil otherwise.
func pathRoot(set *manifest.Manifest, t *manifest.Table) *manifest.Table {
	if t.Scope == nil || len(t.Scope.Hops) == 0 {
		return nil
	}
	last := t.Scope.Hops[len(t.Scope.Hops)-1]
	for i := range set.Tables {
		rt := &set.Tables[i]
		if rt.Schema == last.RefSchema && rt.Name == last.RefTable && rt.Kind == manifest.TableScoped && rt.Owner == "" &&
			rt.Scope != nil && len(rt.Scope.Hops) == 0 && rt.Scope.Column == t.Scope.Column {
			return rt
		}
	}
	return nil
}

// tenantsWithRows returns those of ids that have at least one row in t (a
// table with a tenant column), by one probe per tenant into an index led
// by the tenant column; without such an index it returns ids unchanged,
// for the grouped count's single scan.
func tenantsWithRows(ctx context.Context, c *pgx.Conn, t *manifest.Table, ids []string) ([]string, error) {
	var typ string
	for _, col := range t.Columns {
		if col.Name == t.Scope.Column {
			typ = col.Type
		}
	}
	var indexed bool
	err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = $1::regclass AND a.attname = $2 AND i.indisvalid AND i.indpred IS NULL)`,
		tenancy.Ident(t.Schema, t.Name), t.Scope.Column).Scan(&indexed)
	if err != nil {
		return nil, fmt.Errorf("look for an index on %s: %w", t.QualifiedName(), err)
	}
	if !indexed || typ == "" {
		return ids, nil
	}
	var out []string
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 1000)]
		ids = ids[len(batch):]
		vals := make([]string, len(batch))
		for i, id := range batch {
			vals[i] = "(" + tenancy.Literal(id) + ")"
		}
		// The key is compared as the column's type, so that the index
		// serves; the text of the ID is returned.
		rows, err := c.Query(ctx, fmt.Sprintf("SELECT v.k FROM (VALUES %s) AS v(k) WHERE EXISTS (SELECT 1 FROM %s AS t0 WHERE t0.%s = v.k::%s)",
			strings.Join(vals, ", "), tenancy.Ident(t.Schema, t.Name), tenancy.Ident(t.Scope.Column), typ))
		if err != nil {
			return nil, fmt.Errorf("find tenants with rows in %s: %w", t.QualifiedName(), err)
		}
		found, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("find tenants with rows in %s: %w", t.QualifiedName(), err)
		}
		out = append(out, found...)
	}
	return out, nil
}
