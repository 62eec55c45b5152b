// Package snapshot captures every tenant of a source database at one consistent instant, streaming each tenant's rows per table into compressed, checksummed chunks of a repository.
package snapshot

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Options configure one snapshot run.
type Options struct {
	// Source is the database URL (for the database model: any database on
	// the server, used to list the tenant databases).
	Source  string
	Vault   *vault.Vault
	Tenancy tenancy.Config
	// Tenants limits the set to these tenants (a partial set).
	Tenants []string
	// Parallel is the number of tables exported at once.
	Parallel int
	// Level is the zstd level, 1 (fastest) to 4 (best).
	Level    int
	PackSize int64
	TempDir  string
	// WorkMem is the sort memory of each export session (e.g. "128MB").
	WorkMem string
	// ServerSort orders every table on the server (one ORDER BY per
	// table, as before the sorted export) instead of on the client.
	ServerSort bool
	// LockTimeout bounds the wait for the ACCESS SHARE table locks.
	LockTimeout time.Duration
	// PgDump is the pg_dump binary used for the schema; "" means from PATH.
	PgDump string
	// SchemaArchive is manifest.SchemaArchivePgDump ("" means it) or
	// manifest.SchemaArchiveNone: no pg_dump, for a schema kept in
	// migrations or a server newer than the pg_dump at hand. Such a set
	// restores into an existing schema only.
	SchemaArchive string
	// OnlyTenantSchemas limits the schema archive of a partial set of the
	// schema model to the requested tenant schemas (pg_dump --schema; its
	// discovery reads only those anyway), so the set restores only into a
	// database that has everything else, the one it was taken from.
	// restore --if-exists replace takes its pre-restore sets so: at 10,000
	// tenant schemas a whole-database pg_dump costs 15 s and 264 MiB.
	OnlyTenantSchemas bool
	// SchemaBatch is how many tenant schemas one pg_dump run dumps when
	// the schema model's archive is of the whole database and there are
	// more (schemabatch.go): 0 means DefaultSchemaBatch, a negative value
	// one run for all.
	SchemaBatch int
	// Kind, Note and SourceName are recorded in the manifest.
	Kind       string
	Note       string
	SourceName string
	// Snapshot, when set, is an exported snapshot to import instead of
	// taking a new one (restore's pre-restore set uses its own).
	Snapshot string
	// Full uploads every chunk, even when an earlier set holds the same.
	Full bool
	// ExactLSN takes the set at a replication slot's consistent point, so
	// the change log continues it exactly (needs wal_level=logical and
	// the REPLICATION attribute).
	ExactLSN bool
	// Progress, when set, is updated as the snapshot runs.
	Progress *Progress
	Logger   *slog.Logger
	Now      func() time.Time
}

// DefaultLevel is zstd's default level (klauspost's scale, 2): on the
// benchmark database it stores 11% less than level 1 (within 1.5% of
// pg_dump's gzip) for 38% more client CPU, and the snapshot stays faster
// than pg_dump -Fd -j 2 (BENCHMARKS.md).
const DefaultLevel = 2

// Progress counts work done, for a progress display; read it with Load.
type Progress struct {
	TablesTotal atomic.Int64
	TablesDone  atomic.Int64
	Rows        atomic.Int64
	Bytes       atomic.Int64 // uncompressed bytes read
	// BytesTotal is the exported tables' size on disk, known once the
	// catalog is read (database model: per database); DiskDone is that of
	// the finished tables, and ReadDone what was read from them, so a
	// display can estimate the remaining bytes from the ratio.
	BytesTotal atomic.Int64
	DiskDone   atomic.Int64
	ReadDone   atomic.Int64
	Written    func() int64 // bytes uploaded so far
}

// EstimatedBytes estimates what Bytes will reach: the bytes read from the
// finished tables, plus the rest's size on disk scaled by how the finished
// tables' COPY text compared with theirs.
func (p *Progress) EstimatedBytes() int64 {
	total, disk, read := p.BytesTotal.Load(), p.DiskDone.Load(), p.ReadDone.Load()
	if disk <= 0 || read <= 0 {
		return total
	}
	return read + int64(float64(max(total-disk, 0))*float64(read)/float64(disk))
}

func (o *Options) normalize() error {
	if o.Vault == nil {
		return errors.New("snapshot: no repository")
	}
	if err := o.Tenancy.Normalize(); err != nil {
		return err
	}
	if o.Parallel <= 0 {
		o.Parallel = 2
	}
	if o.Parallel > 64 {
		return tenantvault.Inputf("--parallel %d is too many (at most 64)", o.Parallel)
	}
	if o.Level == 0 {
		o.Level = DefaultLevel
	}
	if o.Level < 1 || o.Level > 4 {
		return tenantvault.Inputf("--compression-level %d out of range 1 (fastest) .. 4 (smallest)", o.Level)
	}
	if o.WorkMem == "" {
		o.WorkMem = "64MB"
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = 30 * time.Second
	}
	if o.Kind == "" {
		o.Kind = manifest.KindManual
	}
	if o.SchemaBatch == 0 {
		o.SchemaBatch = DefaultSchemaBatch
	}
	switch o.SchemaArchive {
	case "":
		o.SchemaArchive = manifest.SchemaArchivePgDump
	case manifest.SchemaArchivePgDump, manifest.SchemaArchiveNone:
	default:
		return tenantvault.Inputf("--schema-archive %q: use pg_dump or none", o.SchemaArchive)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Progress == nil {
		o.Progress = &Progress{}
	}
	o.Tenants = dedupe(o.Tenants)
	for _, id := range o.Tenants {
		if strings.ContainsRune(id, 0) {
			return tenantvault.Inputf("tenant ID %q contains a NUL byte", id)
		}
	}
	return nil
}

func dedupe(ids []string) []string {
	if len(ids) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Run takes one snapshot set and returns its manifest once it is written.
// On any error no manifest is written and the packs uploaded so far are
// removed (what removal misses, prune collects), except after a failed
// manifest upload, which may have been stored all the same: then the packs
// stay, for the set or for prune.
func Run(ctx context.Context, o Options) (*manifest.Manifest, error) {
	if err := o.normalize(); err != nil {
		return nil, err
	}
	cfg, err := tenancy.ParseURL(o.Source)
	if err != nil {
		return nil, err
	}
	started := o.Now()
	r := &run{o: o, cfg: cfg, ssl: libpqParams(o.Source)}
	r.m = &manifest.Manifest{
		Version: manifest.Version, ID: vault.NewSetID(started), Kind: o.Kind, Note: o.Note,
		Tenancy: o.Tenancy.Manifest(), StartedAt: started.UTC(), Partial: len(o.Tenants) > 0,
	}
	r.m.ExactTenants = r.m.Partial
	if o.SchemaArchive == manifest.SchemaArchiveNone {
		r.m.SchemaArchive = manifest.SchemaArchiveNone
	}
	r.w, err = o.Vault.NewSetWriter(ctx, r.m.ID, vault.WriterOptions{TempDir: o.TempDir, PackSize: o.PackSize, Level: o.Level})
	if err != nil {
		return nil, err
	}
	o.Progress.Written = r.w.Written
	defer func() {
		for _, res := range r.results {
			res.spool.close()
		}
	}()
	if o.Tenancy.Model == tenancy.ModelDatabase {
		err = r.databases(ctx)
	} else {
		err = r.single(ctx)
	}
	if err == nil {
		err = r.w.Close()
	}
	if err == nil {
		err = r.finish(ctx)
	}
	if err != nil {
		r.w.Abort()
		return nil, err
	}
	return r.m, nil
}

// run is the state of one snapshot.
type run struct {
	o   Options
	cfg *pgx.ConnConfig
	ssl map[string]string
	m   *manifest.Manifest
	w   *vault.SetWriter

	prev    map[prevKey]vault.ChunkRef
	reuse   *vault.ReuseIndex // encrypted repositories: see loadPrevious
	results []tableResult
	owners  []string // tenants that exist even without rows (schema and database models)
	// splitTenants, when set, are the tenant schemas the schema archive
	// is split by (a partial set's owners are only the requested ones)
	splitTenants []string
	// schemaParts: each tenant schema's part of the split schema SQL
	schemaParts map[string]manifest.Range

	parents parentMaps // routed exports' (key, tenant) maps
	arenaMu sync.Mutex
	arenas  []*arena // the sorted export's, one per worker
}

type prevKey struct {
	tenant string
	global bool
	sig    string
}

// tableResult is what exporting one table produced.
type tableResult struct {
	table int
	// chunks are the global chunks and, until the table spills, its
	// tenant chunks (scoped counts those).
	chunks []tenantChunk
	scoped int
	spool  *chunkSpool
}

type tenantChunk struct {
	tenant string
	global bool
	rows   int64
	ref    vault.ChunkRef
}

// single snapshots one database (column and schema models).
func (r *run) single(ctx context.Context) error {
	o := &r.o
	exp, err := tenancy.Connect(ctx, r.cfg)
	if err != nil {
		return err
	}
	defer exp.Close(context.Background())
	imported := o.Snapshot
	var exactLSN string
	if o.ExactLSN && imported == "" {
		slot, err := exactSnapshot(ctx, r.cfg)
		if err != nil {
			return err
		}
		defer slot.conn.Close(context.Background())
		imported, exactLSN = slot.snapshot, slot.lsn
	}
	snap, err := r.begin(ctx, exp, imported)
	if err != nil {
		return err
	}
	r.m.ConsistentAt, r.m.LSN = snap.at, snap.lsn
	if exactLSN != "" {
		r.m.LSN, r.m.LSNExact = exactLSN, true
	}
	r.m.Source = snap.source
	r.m.Source.Name = o.SourceName
	// A partial set of the schema model reads the catalog of the requested
	// tenant schemas only (at 10,000 schemas the others' 30,000 tables
	// cost a minute and a 1.4 MB header); its whole-database schema
	// archive is split by the list of every tenant schema.
	var cat *tenancy.Catalog
	if r.partialSchemas() {
		cat, err = tenancy.DiscoverSchemas(ctx, exp, o.Tenancy, o.Tenants)
		if err == nil && !o.OnlyTenantSchemas && o.SchemaArchive != manifest.SchemaArchiveNone {
			r.splitTenants, err = tenancy.TenantSchemas(ctx, exp, o.Tenancy)
		}
	} else {
		cat, err = tenancy.Discover(ctx, exp, o.Tenancy, "")
	}
	if err != nil {
		return err
	}
	if err := lockTables(ctx, exp, cat.Tables, o.LockTimeout); err != nil {
		return err
	}
	if o.Tenancy.Model == tenancy.ModelSchema {
		for _, t := range cat.Tables {
			if t.Owner != "" {
				r.owners = append(r.owners, t.Owner)
			}
		}
		r.owners = dedupe(r.owners)
	}
	if err := r.checkTenants(ctx, exp, cat); err != nil {
		return err
	}
	r.m.Tables = cat.Tables
	if err := r.loadPrevious(ctx); err != nil {
		return err
	}
	for i := range cat.Tables {
		if r.wanted(&cat.Tables[i]) {
			o.Progress.TablesTotal.Add(1)
			o.Progress.BytesTotal.Add(cat.Bytes[i])
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	if o.SchemaArchive != manifest.SchemaArchiveNone {
		g.Go(func() error {
			// A pg_dump older than the server refuses it within
			// milliseconds, which cancels the export at once.
			var only []string
			if r.partialSchemas() && o.OnlyTenantSchemas && len(r.owners) > 0 {
				only = r.owners
			}
			if only == nil {
				if done, err := r.dumpSchemaBatched(gctx, snap); done || err != nil {
					return err
				}
			}
			f, err := spoolSchema(gctx, o.TempDir, o.PgDump, r.cfg, r.ssl, snap.name, snap.source.ServerNum, schemaArgs("--schema", only))
			if err != nil {
				return err
			}
			defer dropTemp(f)
			d, err := r.w.PutSchemaFile(gctx, r.cfg.Database, f)
			if err == nil {
				d.TenantSchemasOnly = only != nil
				err = r.splitSchema(gctx, &d, f.Name())
			}
			r.m.Schemas = []manifest.SchemaDump{d}
			return err
		})
	}
	jobs := make(chan int, len(cat.Tables))
	for _, i := range bySize(cat) {
		if r.wanted(&cat.Tables[i]) {
			jobs <- i
		}
	}
	close(jobs)
	results := make([][]tableResult, o.Parallel)
	for w := range o.Parallel {
		g.Go(func() error {
			conn, err := r.worker(gctx, r.cfg, snap.name)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			packer, err := r.w.NewPacker()
			if err != nil {
				return err
			}
			next := func() (int, bool) { i, ok := <-jobs; return i, ok }
			err = r.exportTables(gctx, conn, packer, cat.Tables, next, func(i int, res tableResult) {
				results[w] = append(results[w], res)
				o.Progress.TablesDone.Add(1)
				o.Progress.DiskDone.Add(cat.Bytes[i])
			})
			if err != nil {
				packer.Close()
				return err
			}
			return packer.Close()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, rs := range results {
		r.results = append(r.results, rs...)
	}
	_, err = exp.Exec(ctx, "COMMIT")
	return err
}

// partialSchemas tells whether this is a partial set of the schema model,
// whose discovery reads only the requested tenant schemas.
func (r *run) partialSchemas() bool {
	return r.o.Tenancy.Model == tenancy.ModelSchema && len(r.o.Tenants) > 0
}

// wanted skips tables that hold no rows of the requested tenants.
func (r *run) wanted(t *manifest.Table) bool {
	if len(r.o.Tenants) == 0 {
		return true
	}
	if t.Kind == manifest.TableGlobal {
		return false // a partial set restores into a database that has them
	}
	if t.Owner == "" {
		return true
	}
	i := sort.SearchStrings(r.o.Tenants, t.Owner)
	return i < len(r.o.Tenants) && r.o.Tenants[i] == t.Owner
}

// bySize orders table indexes largest first, so the longest export starts
// early and parallel workers finish together.
func bySize(cat *tenancy.Catalog) []int {
	idx := make([]int, len(cat.Tables))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return cat.Bytes[idx[a]] > cat.Bytes[idx[b]] })
	return idx
}

type snapInfo struct {
	name   string
	at     time.Time
	lsn    string
	source manifest.Source
}

// begin opens the repeatable-read transaction that fixes the set's instant
// and exports it (or imports the given one).
func (r *run) begin(ctx context.Context, conn *pgx.Conn, imported string) (snapInfo, error) {
	var s snapInfo
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return s, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	exportExpr := "pg_export_snapshot()"
	if imported != "" {
		if _, err := conn.Exec(ctx, "SET TRANSACTION SNAPSHOT "+tenancy.Literal(imported)); err != nil {
			return s, fmt.Errorf("import snapshot %s: %w", imported, err)
		}
		exportExpr = tenancy.Literal(imported)
	}
	err := conn.QueryRow(ctx, `SELECT `+exportExpr+`, statement_timestamp(),
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
  current_database(), current_setting('server_version'), current_setting('server_version_num')::int,
  coalesce((SELECT system_identifier::text FROM pg_control_system()), '')`).Scan(
		&s.name, &s.at, &s.lsn, &s.source.Database, &s.source.ServerVersion, &s.source.ServerNum, &s.source.SystemID)
	if err != nil {
		return s, fmt.Errorf("export snapshot: %w", err)
	}
	s.at = s.at.UTC()
	s.source.Host = fmt.Sprintf("%s:%d", r.cfg.Host, r.cfg.Port)
	return s, nil
}

// worker opens an export session that sees the exported snapshot.
func (r *run) worker(ctx context.Context, cfg *pgx.ConnConfig, snapName string) (*pgx.Conn, error) {
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	for _, q := range []string{
		"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		"SET TRANSACTION SNAPSHOT " + tenancy.Literal(snapName),
		"SET LOCAL work_mem = " + tenancy.Literal(r.o.WorkMem),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("start export session: %w", err)
		}
	}
	return conn, nil
}

func lockTables(ctx context.Context, conn *pgx.Conn, tables []manifest.Table, timeout time.Duration) error {
	if len(tables) == 0 {
		return nil
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = tenancy.Ident(t.Schema, t.Name)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", timeout.Milliseconds())); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "LOCK TABLE "+strings.Join(names, ", ")+" IN ACCESS SHARE MODE"); err != nil {
		return fmt.Errorf("lock tables (ACCESS SHARE; is a migration holding an exclusive lock?): %w", err)
	}
	_, err := conn.Exec(ctx, "SET LOCAL lock_timeout = 0")
	return err
}

// checkTenants makes sure every requested tenant exists before anything is
// written.
func (r *run) checkTenants(ctx context.Context, conn *pgx.Conn, cat *tenancy.Catalog) error {
	if len(r.o.Tenants) == 0 {
		return nil
	}
	found := map[string]bool{}
	if r.o.Tenancy.Model == tenancy.ModelSchema {
		for _, s := range r.owners {
			found[s] = true
		}
	} else {
		lits := make([]string, len(r.o.Tenants))
		for i, id := range r.o.Tenants {
			lits[i] = tenancy.Literal(id)
		}
		for _, t := range cat.Tables {
			if t.Scope == nil || len(t.Scope.Hops) > 0 {
				continue
			}
			col := tenancy.Ident(t.Scope.Column)
			rows, err := conn.Query(ctx, fmt.Sprintf("SELECT DISTINCT %s::text FROM %s WHERE %s IN (%s)",
				col, tenancy.Ident(t.Schema, t.Name), col, strings.Join(lits, ", ")))
			if err != nil {
				return fmt.Errorf("look up tenants in %s: %w", t.QualifiedName(), err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("look up tenants in %s: %w", t.QualifiedName(), err)
			}
			for _, id := range ids {
				found[id] = true
			}
		}
	}
	return unknownTenants(r.o.Tenants, found, "source database "+r.cfg.Database)
}

// UnknownTenantsError lists requested tenant IDs that do not exist.
type UnknownTenantsError struct {
	IDs   []string
	Where string
}

func (e *UnknownTenantsError) Error() string {
	q := make([]string, len(e.IDs))
	for i, id := range e.IDs {
		q[i] = fmt.Sprintf("%q", id)
	}
	return fmt.Sprintf("%d unknown tenant(s) in %s: %s", len(e.IDs), e.Where, strings.Join(q, ", "))
}

func unknownTenants(want []string, found map[string]bool, where string) error {
	var missing []string
	for _, id := range want {
		if !found[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &tenantvault.InputError{Err: &UnknownTenantsError{IDs: missing, Where: where}}
}

// loadPrevious indexes the newest earlier set of the same source, whose
// unchanged chunks this set references instead of storing again.
func (r *run) loadPrevious(ctx context.Context) error {
	r.prev = map[prevKey]vault.ChunkRef{}
	if r.o.Full {
		return nil
	}
	// The vault picks the newest usable earlier set of the same source
	// (not marked for deletion, every pack present) and indexes its
	// chunks; in an encrypted repository by tags only the signing side
	// can compute, since the manifests hide their digests.
	var err error
	r.reuse, err = r.o.Vault.PreviousChunks(ctx, r.m)
	return err
}

// finish assembles the set and writes it: in set format 2 the tenants are
// merged from the tables' results in ID order straight into the tenant
// index's pages, so no second copy of every tenant's chunks is built.
func (r *run) finish(ctx context.Context) error {
	m := r.m
	packIndex := map[string]int{}
	pack := func(key string) int {
		i, ok := packIndex[key]
		if !ok {
			i = len(m.Packs)
			packIndex[key] = i
			m.Packs = append(m.Packs, key)
		}
		return i
	}
	st := &m.Stats
	chunk := func(table int, tc tenantChunk) manifest.Chunk {
		c := manifest.Chunk{
			Table: table, Rows: tc.rows, Size: tc.ref.Size, Digest: tc.ref.Digest,
			Pack: pack(tc.ref.Pack), Offset: tc.ref.Offset, Length: tc.ref.Length, SHA256: tc.ref.SHA256, Reused: tc.ref.Reused,
		}
		st.Chunks++
		st.Rows += c.Rows
		st.Size += c.Size
		st.Stored += c.Length
		if c.Reused {
			st.Reused += c.Length
			st.ReusedChunks++
		} else {
			st.Written += c.Length
		}
		return c
	}
	sort.Slice(r.results, func(a, b int) bool { return r.results[a].table < r.results[b].table })
	// Global chunks first, in table order; then each table's tenant
	// chunks, in ID order, merged.
	h := &mergeHeap{}
	defer func() {
		for _, c := range *h {
			c.spool.close()
		}
	}()
	for i := range r.results {
		res := &r.results[i]
		scoped := res.chunks[:0]
		for _, tc := range res.chunks {
			if tc.global {
				c := chunk(res.table, tc)
				m.Global = append(m.Global, c)
				if m.Tables[res.table].Kind == manifest.TableScoped {
					st.Unscoped += c.Rows
				}
				continue
			}
			scoped = append(scoped, tc)
		}
		cur := &mergeCursor{table: res.table}
		if res.spool != nil {
			sp, err := res.spool.inOrder(r.o.TempDir)
			if err != nil {
				return err
			}
			res.spool, cur.spool = nil, sp
		} else {
			sort.SliceStable(scoped, func(a, b int) bool { return scoped[a].tenant < scoped[b].tenant })
			cur.mem = scoped
		}
		res.chunks = nil
		ok, err := cur.advance()
		if err != nil {
			return err
		}
		if ok {
			heap.Push(h, cur)
		}
	}
	var iw *vault.IndexWriter
	if r.o.Vault.WritesIndexed() {
		var err error
		if iw, err = r.o.Vault.NewIndexWriter(m.ID, r.o.TempDir); err != nil {
			return err
		}
		defer iw.Close()
		iw.SetTables(m.Tables)
	}
	// Erased tenants (tenantvault forget) whose rows the source still
	// holds: one listing, then a keyed hash per tenant when there are any.
	erased, err := r.o.Vault.ErasedTenants(ctx)
	if err != nil {
		return err
	}
	var present []string
	// Tenants that exist without rows (schema and database models, and
	// every requested one) get an entry too; a partial set's only for the
	// tenants it captured, or restores would take the others' (empty)
	// entries for their state.
	empty := r.o.Tenants
	if len(empty) == 0 {
		empty = r.owners
	}
	next := 0 // into empty
	for h.Len() > 0 || next < len(empty) {
		var id string
		switch {
		case h.Len() == 0:
			id = empty[next]
		case next < len(empty) && empty[next] < (*h)[0].head.tenant:
			id = empty[next]
		default:
			id = (*h)[0].head.tenant
		}
		if next < len(empty) && empty[next] == id {
			next++
		}
		t := manifest.Tenant{ID: id}
		if rg, ok := r.schemaParts[id]; ok {
			t.SchemaSQL = &rg
			// A sealed part is under the tenant's key, which the entry
			// names even when the tenant has no chunks.
			if t.Key, err = r.w.TenantKey(ctx, id); err != nil {
				return err
			}
		}
		if erased.Has(id) {
			present = append(present, id)
		}
		for h.Len() > 0 && (*h)[0].head.tenant == id {
			cur := (*h)[0]
			c := chunk(cur.table, cur.head)
			if (len(t.Chunks) > 0 || t.SchemaSQL != nil) && cur.head.ref.Key != t.Key {
				return fmt.Errorf("tenant %q: chunks sealed with two keys (%s, %s)", id, t.Key, cur.head.ref.Key)
			}
			t.Key = cur.head.ref.Key
			t.Chunks = append(t.Chunks, c)
			t.Rows += c.Rows
			t.Size += c.Size
			t.Stored += c.Length
			ok, err := cur.advance()
			if err != nil {
				return err
			}
			if ok {
				heap.Fix(h, 0)
			} else {
				heap.Pop(h)
				cur.spool.close()
			}
		}
		if iw != nil {
			if err := iw.Add(&t); err != nil {
				return err
			}
			st.Tenants++
		} else {
			m.Tenants = append(m.Tenants, t)
		}
	}
	r.results = nil
	if iw == nil {
		st.Tenants = len(m.Tenants)
	}
	st.Tables = len(m.Tables)
	m.Fingerprint = tenancy.Fingerprint(m.Tables)
	m.FinishedAt = r.o.Now().UTC()
	st.Seconds = m.FinishedAt.Sub(m.StartedAt).Seconds()
	if st.Unscoped > 0 {
		r.o.Logger.Warn("some rows of tenant tables belong to no tenant; they are kept with the global data", "rows", st.Unscoped)
	}
	if m.ErasedPresent = len(present); len(present) > 0 {
		// Restores refuse them anyway; the rows must go from the source,
		// and forget run again for this set.
		r.o.Logger.Warn("the source still holds rows of tenants that were erased from this repository (tenantvault forget): delete them from the database, then run forget for them again; restores refuse them meanwhile",
			"tenants", len(present), "first", present[:min(len(present), 10)])
	}
	if iw == nil {
		return r.o.Vault.WriteManifest(ctx, m)
	}
	if err := r.o.Vault.CommitSet(ctx, m, iw); err != nil {
		return err
	}
	// The set exists; the catalog only speeds up list, so a failure to
	// update it is not the snapshot's. A pre-restore set leaves it to the
	// next snapshot: a restore must not wait for it.
	if m.Kind == manifest.KindPreRestore {
		return nil
	}
	if err := r.o.Vault.UpdateCatalog(ctx, r.o.TempDir); err != nil {
		r.o.Logger.Warn("could not update the repository's catalog (list stays correct, only slower)", "err", err)
	}
	return nil
}

// mergeCursor walks one table's tenant chunks, in ID order, from memory
// or from its spool.
type mergeCursor struct {
	table int
	mem   []tenantChunk
	spool *chunkSpool
	head  tenantChunk
}

// advance moves to the next chunk; false at the end.
func (c *mergeCursor) advance() (bool, error) {
	if c.spool != nil {
		tc, err := c.spool.next()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		c.head = tc
		return true, nil
	}
	if len(c.mem) == 0 {
		return false, nil
	}
	c.head, c.mem = c.mem[0], c.mem[1:]
	return true, nil
}

// mergeHeap orders cursors by their next tenant, then by table, so that a
// tenant's chunks come in table order.
type mergeHeap []*mergeCursor

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(a, b int) bool {
	if ha, hb := h[a].head.tenant, h[b].head.tenant; ha != hb {
		return ha < hb
	}
	return h[a].table < h[b].table
}
func (h mergeHeap) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(*mergeCursor)) }
func (h *mergeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Plan is what a snapshot would capture, for --dry-run.
type Plan struct {
	Tenancy   tenancy.Config
	Tables    []manifest.Table
	Bytes     []int64  // estimated size on disk per table
	Databases []string // database model: the tenant databases
}

// Explain discovers what Run would capture, without writing anything.
func Explain(ctx context.Context, o Options) (*Plan, error) {
	if err := o.Tenancy.Normalize(); err != nil {
		return nil, err
	}
	cfg, err := tenancy.ParseURL(o.Source)
	if err != nil {
		return nil, err
	}
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	p := &Plan{Tenancy: o.Tenancy}
	if o.Tenancy.Model == tenancy.ModelDatabase {
		rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY datname`, o.Tenancy.DatabasePattern)
		if err != nil {
			return nil, err
		}
		p.Databases, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return p, err
	}
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return nil, err
	}
	cat, err := tenancy.Discover(ctx, conn, o.Tenancy, "")
	if err != nil {
		return nil, err
	}
	p.Tables, p.Bytes = cat.Tables, cat.Bytes
	return p, nil
}

// slotSnapshot is a snapshot exported by a temporary replication slot; it
// lives while conn is open and idle.
type slotSnapshot struct {
	conn     *pgconn.PgConn
	snapshot string
	lsn      string
}

// exactSnapshot creates a temporary logical slot that exports its snapshot:
// the snapshot holds exactly the transactions that committed before the
// slot's consistent point, the position where logical decoding, and so the
// change log, picks up.
func exactSnapshot(ctx context.Context, cfg *pgx.ConnConfig) (*slotSnapshot, error) {
	rc := cfg.Config.Copy()
	rc.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("open replication connection for an exact-LSN snapshot (needs the REPLICATION attribute and wal_level=logical): %w", err)
	}
	name := "tenantvault_snap_" + strings.ReplaceAll(vault.NewSetID(time.Now())[len("20060102T150405.000Z-"):], "-", "")
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("create temporary replication slot for an exact-LSN snapshot: %w", err)
	}
	return &slotSnapshot{conn: conn, snapshot: res.SnapshotName, lsn: res.ConsistentPoint}, nil
}
