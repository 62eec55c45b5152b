package snapshot

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// databases snapshots the database model: every tenant is a database of its
// own. Each database is captured consistently in itself; the set's instant
// is the latest of theirs, so `restore --at` never picks a set that holds
// changes from after the requested time.
func (r *run) databases(ctx context.Context) error {
	o := &r.o
	admin, err := tenancy.Connect(ctx, r.cfg)
	if err != nil {
		return err
	}
	rows, err := admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY datname`, o.Tenancy.DatabasePattern)
	if err != nil {
		admin.Close(context.Background())
		return fmt.Errorf("list tenant databases: %w", err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	admin.Close(context.Background())
	if err != nil {
		return fmt.Errorf("list tenant databases: %w", err)
	}
	found := map[string]bool{}
	for _, d := range dbs {
		found[d] = true
	}
	if err := unknownTenants(o.Tenants, found, "server "+tenancy.Describe(r.cfg)); err != nil {
		return err
	}
	if len(o.Tenants) > 0 {
		dbs = o.Tenants
	}
	if len(dbs) == 0 {
		return fmt.Errorf("no database matches --database-pattern %q", o.Tenancy.DatabasePattern)
	}
	r.owners = dbs
	r.m.Source = manifest.Source{Host: fmt.Sprintf("%s:%d", r.cfg.Host, r.cfg.Port), Name: o.SourceName}
	if err := r.loadPrevious(ctx); err != nil {
		return err
	}

	var mu sync.Mutex
	jobs := make(chan string, len(dbs))
	for _, d := range dbs {
		jobs <- d
	}
	close(jobs)
	g, gctx := errgroup.WithContext(ctx)
	for range min(o.Parallel, len(dbs)) {
		g.Go(func() error {
			packer, err := r.w.NewPacker()
			if err != nil {
				return err
			}
			for db := range jobs {
				if err := r.database(gctx, db, packer, &mu); err != nil {
					packer.Close()
					return err
				}
			}
			return packer.Close()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sort.Slice(r.m.Schemas, func(a, b int) bool { return r.m.Schemas[a].Database < r.m.Schemas[b].Database })
	return nil
}

// database captures one tenant database in its own transaction.
func (r *run) database(ctx context.Context, db string, packer *vault.Packer, mu *sync.Mutex) error {
	cfg := tenancy.WithDatabase(r.cfg, db)
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	snap, err := r.begin(ctx, conn, "")
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SET LOCAL work_mem = "+tenancy.Literal(r.o.WorkMem)); err != nil {
		return err
	}
	cat, err := tenancy.Discover(ctx, conn, r.o.Tenancy, db)
	if err != nil {
		return err
	}
	if err := lockTables(ctx, conn, cat.Tables, r.o.LockTimeout); err != nil {
		return err
	}
	r.o.Progress.TablesTotal.Add(int64(len(cat.Tables)))
	for _, n := range cat.Bytes {
		r.o.Progress.BytesTotal.Add(n)
	}
	var d *manifest.SchemaDump
	if r.o.SchemaArchive != manifest.SchemaArchiveNone {
		f, err := spoolSchema(ctx, r.o.TempDir, r.o.PgDump, cfg, r.ssl, snap.name, snap.source.ServerNum, nil)
		if err != nil {
			return fmt.Errorf("database %s: %w", db, err)
		}
		sd, err := r.w.PutSchemaFile(ctx, db, f)
		dropTemp(f)
		if err != nil {
			return err
		}
		d = &sd
	}
	var results []tableResult
	order := bySize(cat)
	next := func() (int, bool) {
		if len(order) == 0 {
			return 0, false
		}
		i := order[0]
		order = order[1:]
		return i, true
	}
	err = r.exportTables(ctx, conn, packer, cat.Tables, next, func(i int, res tableResult) {
		results = append(results, res)
		r.o.Progress.TablesDone.Add(1)
		r.o.Progress.DiskDone.Add(cat.Bytes[i])
	})
	if err != nil {
		return fmt.Errorf("database %s: %w", db, err)
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}

	mu.Lock()
	defer mu.Unlock()
	base := len(r.m.Tables)
	r.m.Tables = append(r.m.Tables, cat.Tables...)
	for _, res := range results {
		res.table += base
		r.results = append(r.results, res)
	}
	if d != nil {
		r.m.Schemas = append(r.m.Schemas, *d)
	}
	if snap.at.After(r.m.ConsistentAt) {
		r.m.ConsistentAt, r.m.LSN = snap.at, snap.lsn
	}
	r.m.Source.ServerVersion, r.m.Source.ServerNum, r.m.Source.SystemID = snap.source.ServerVersion, snap.source.ServerNum, snap.source.SystemID
	return nil
}
