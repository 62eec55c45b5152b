// Package datagen fills a PostgreSQL database with a deterministic, realistic multi-tenant issue tracker for benchmarks and tests.
package datagen

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options says what to generate. The same Options give the same data, byte
// for byte (Workers and Logf aside, which change nothing): the data depends
// on nothing else, not on the clock, the machine, the Go release or the
// order in which tables are loaded. Row IDs are part of the data.
type Options struct {
	// Tenants is the number of tenants, at least 1.
	Tenants int
	// TargetBytes is the approximate total size of the tables (heap and
	// TOAST, without indexes) to generate, from a few MB to tens of GB;
	// indexes add about a tenth on top. Every tenant gets a minimum of rows
	// (about 10 kB), and the 49 partitions of events take about 2 MB even
	// when almost empty, so many tenants with a small target overshoot it.
	TargetBytes int64
	// Seed selects the data; any value is valid.
	Seed int64
	// ZipfS is the exponent of the Zipf law of tenant sizes: the tenant of
	// rank k gets a share proportional to k^-ZipfS on top of a small
	// minimum. Zero means DefaultZipfS; use a tiny positive value for
	// tenants of (nearly) equal size.
	ZipfS float64
	// OddIDs replaces some regular tenant IDs (t0001, ...) with IDs that
	// break naive code: quotes, slashes, "..", tabs, backslashes, `\N`,
	// LIKE wildcards, non-ASCII, leading spaces, case-only differences. Up
	// to half of the tenants get one.
	OddIDs bool
	// Workers is the number of connections that load tables and build
	// indexes at the same time; zero means 2.
	Workers int
	// Logf, if not nil, receives progress messages.
	Logf func(format string, args ...any)
	// Shape selects the schema: ShapeTracker ("" too) or ShapeChain.
	Shape string
}

// DefaultZipfS is the Zipf exponent used when Options.ZipfS is zero: with
// 1000 tenants the largest holds about 18% of the data and the median about
// 0.02%, as in a typical SaaS customer base.
const DefaultZipfS = 1.1

// TableStats describes one generated table.
type TableStats struct {
	Name string
	Rows int64
	// Bytes is pg_table_size (heap, TOAST, free space and visibility maps),
	// summed over partitions.
	Bytes int64
	// IndexBytes is pg_indexes_size, summed over partitions.
	IndexBytes int64
}

// Stats describes a generated database.
type Stats struct {
	// Tables lists every table in load order, reference tables first.
	Tables []TableStats
	// TenantRows is the number of rows that belong to each tenant, over
	// all tables, counting the tenant's own row in tenants and the rows
	// that belong to it only through foreign keys (comments, attachments,
	// issue_watchers).
	TenantRows map[string]int64
	// TableBytes is the sum of Tables[i].Bytes: what TargetBytes aims at.
	TableBytes int64
	// DatabaseBytes is pg_database_size: tables, indexes and catalogs.
	DatabaseBytes int64
	// Elapsed is the whole run; LoadElapsed the COPY phase; VacuumElapsed
	// the VACUUM (FREEZE, ANALYZE) after it; IndexElapsed the keys,
	// indexes and foreign keys.
	Elapsed, LoadElapsed, IndexElapsed, VacuumElapsed time.Duration
}

// Rows returns the number of rows of table, or 0 for an unknown table.
func (s Stats) Rows(table string) int64 {
	for _, t := range s.Tables {
		if t.Name == table {
			return t.Rows
		}
	}
	return 0
}

// TotalRows returns the number of rows in all tables.
func (s Stats) TotalRows() int64 {
	var n int64
	for _, t := range s.Tables {
		n += t.Rows
	}
	return n
}

// Tables lists the generated tables in load order: reference tables, then
// tenants, then tenant data. Benchmarks and tests iterate over it.
var Tables = []string{
	"plans", "countries", "tenants",
	"users", "projects", "milestones", "issues", "issue_watchers",
	"comments", "attachments", "events", "audit_log",
}

func (o *Options) normalize() error {
	if o.Tenants < 1 {
		return fmt.Errorf("datagen: Tenants must be at least 1, got %d", o.Tenants)
	}
	if o.Tenants > 999999 {
		return fmt.Errorf("datagen: Tenants must be at most 999999, got %d", o.Tenants)
	}
	if o.TargetBytes <= 0 {
		return fmt.Errorf("datagen: TargetBytes must be positive, got %d", o.TargetBytes)
	}
	if o.ZipfS == 0 {
		o.ZipfS = DefaultZipfS
	}
	if o.ZipfS < 0 || o.ZipfS > 10 {
		return fmt.Errorf("datagen: ZipfS must be in (0, 10], got %g", o.ZipfS)
	}
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.Workers < 1 {
		return fmt.Errorf("datagen: Workers must be positive, got %d", o.Workers)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	switch o.Shape {
	case "":
		o.Shape = ShapeTracker
	case ShapeTracker, ShapeChain:
	default:
		return fmt.Errorf("datagen: unknown Shape %q (shapes: %s)", o.Shape, strings.Join(Shapes, ", "))
	}
	return nil
}

// Generate creates the schema in the database at dbURL, which should be
// empty, and fills it as opts says. It loads every table with COPY from
// rows generated on the fly; runs VACUUM (FREEZE, ANALYZE), so that the
// database is in the settled state of a long-lived production database
// (statistics known, tuples hinted and frozen, visibility map set: without
// that, whichever benchmark reads the data first pays for writing every
// page again); then adds keys, indexes and foreign keys (faster than
// maintaining them during the load, and the foreign keys check the
// generated data). On error the database is left half-filled: drop it.
func Generate(ctx context.Context, dbURL string, opts Options) (Stats, error) {
	start := time.Now()
	if err := opts.normalize(); err != nil {
		return Stats{}, err
	}
	if opts.Shape == ShapeChain {
		return generateChain(ctx, dbURL, opts)
	}
	logf := opts.Logf
	p := newPlan(opts)
	if least := p.minimumBytes(); least > opts.TargetBytes {
		logf("datagen: %d tenants need about %d MB of rows at least; the target of %d MB will be exceeded",
			opts.Tenants, least>>20, opts.TargetBytes>>20)
	}

	conn, err := connect(ctx, dbURL)
	if err != nil {
		return Stats{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, schemaDDL+p.partitionDDL()); err != nil {
		return Stats{}, fmt.Errorf("datagen: create schema: %w", err)
	}
	if err := p.loadReference(ctx, conn); err != nil {
		return Stats{}, err
	}
	logf("datagen: schema created, %d tenants planned (%s)", len(p.tenants), p.summary())

	// Load the tenant data, largest tables first so that the workers finish
	// at about the same time.
	loadStart := time.Now()
	sources := []source{
		p.commentsSource(), p.issuesSource(), p.attachmentsSource(), p.eventsSource(),
		p.auditSource(), p.watchersSource(), p.usersSource(), p.projectsSource(), p.milestonesSource(),
	}
	jobs := make([]job, len(sources))
	for i, s := range sources {
		jobs[i] = copyJob(logf, s.table(), s.columns(), s)
	}
	if err := runJobs(ctx, dbURL, opts.Workers, jobs); err != nil {
		return Stats{}, err
	}
	loadElapsed := time.Since(loadStart)

	// VACUUM before the indexes: it then has no index to scan, and the
	// checks of the foreign keys get statistics (without them the planner
	// checks each events partition with a full scan of issues) and
	// index-only scans.
	vacuumStart := time.Now()
	if err := runJobs(ctx, dbURL, opts.Workers, vacuumJobs(Tables)); err != nil {
		return Stats{}, err
	}
	vacuumElapsed := time.Since(vacuumStart)
	logf("datagen: vacuumed in %s", vacuumElapsed.Round(time.Millisecond))

	indexStart := time.Now()
	var idx []job
	for _, stmts := range postLoadIndexes {
		idx = append(idx, timedJob(logf, "indexed "+strings.Fields(stmts[0])[2], execJob(stmts...)))
	}
	if err := runJobs(ctx, dbURL, opts.Workers, idx); err != nil {
		return Stats{}, err
	}
	fkStart := time.Now()
	addFKs, validateFKs := foreignKeyJobs()
	for _, stmt := range addFKs {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return Stats{}, fmt.Errorf("datagen: %s: %w", stmt, err)
		}
	}
	var fks []job
	for _, stmts := range validateFKs {
		fks = append(fks, timedJob(logf, "checked foreign keys of "+strings.Fields(stmts[0])[2], execJob(stmts...)))
	}
	if err := runJobs(ctx, dbURL, opts.Workers, fks); err != nil {
		return Stats{}, err
	}
	logf("datagen: foreign keys in %s", time.Since(fkStart).Round(time.Millisecond))
	if _, err := conn.Exec(ctx, resetSequences); err != nil {
		return Stats{}, fmt.Errorf("datagen: reset sequences: %w", err)
	}
	indexElapsed := time.Since(indexStart)
	logf("datagen: keys, indexes and foreign keys in %s", indexElapsed.Round(time.Millisecond))

	st, err := tableStats(ctx, conn)
	if err != nil {
		return Stats{}, err
	}
	st.TenantRows = p.tenantRows(sources)
	st.LoadElapsed, st.IndexElapsed, st.VacuumElapsed = loadElapsed, indexElapsed, vacuumElapsed
	st.Elapsed = time.Since(start)
	logf("datagen: done in %s: %d rows, tables %d MB, database %d MB",
		st.Elapsed.Round(time.Millisecond), st.TotalRows(), st.TableBytes>>20, st.DatabaseBytes>>20)
	return st, nil
}

// connect opens a connection tuned for bulk loading. synchronous_commit=off
// is safe here: a crash loses the generated database anyway.
func connect(ctx context.Context, dbURL string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("datagen: connect: %w", err)
	}
	if _, err := conn.Exec(ctx, "SET synchronous_commit = off; SET maintenance_work_mem = '256MB'"); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("datagen: configure session: %w", err)
	}
	return conn, nil
}

// A job is one unit of work on a connection of its own.
type job func(ctx context.Context, c *pgx.Conn) error

// timedJob logs how long j took.
func timedJob(logf func(string, ...any), what string, j job) job {
	return func(ctx context.Context, c *pgx.Conn) error {
		t0 := time.Now()
		if err := j(ctx, c); err != nil {
			return err
		}
		logf("datagen: %s in %s", what, time.Since(t0).Round(time.Millisecond))
		return nil
	}
}

// copyJob loads the rows of src into public.table by COPY and logs how many
// and how long.
func copyJob(logf func(string, ...any), table string, cols []string, src pgx.CopyFromSource) job {
	return func(ctx context.Context, c *pgx.Conn) error {
		t0 := time.Now()
		n, err := c.CopyFrom(ctx, pgx.Identifier{"public", table}, cols, src)
		if err != nil {
			return fmt.Errorf("datagen: load %s: %w", table, err)
		}
		logf("datagen: loaded %s: %d rows in %s", table, n, time.Since(t0).Round(time.Millisecond))
		return nil
	}
}

// vacuumJobs freezes and analyzes each of tables, one job per table.
func vacuumJobs(tables []string) []job {
	var vac []job
	for _, t := range tables {
		vac = append(vac, execJob("VACUUM (FREEZE, ANALYZE) public."+t))
	}
	return vac
}

func execJob(stmts ...string) job {
	return func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range stmts {
			if _, err := c.Exec(ctx, s); err != nil {
				return fmt.Errorf("datagen: %s: %w", s, err)
			}
		}
		return nil
	}
}

// runJobs runs jobs in order on up to workers connections and returns the
// first error; the other jobs are then cancelled.
func runJobs(ctx context.Context, dbURL string, workers int, jobs []job) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers = min(workers, len(jobs))
	next := make(chan job)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := connect(ctx, dbURL)
			if err != nil {
				errs <- err
				cancel()
				return
			}
			defer c.Close(context.WithoutCancel(ctx))
			if err := registerTypes(ctx, c); err != nil {
				errs <- err
				cancel()
				return
			}
			for j := range next {
				if err := j(ctx, c); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case next <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if len(all) > 0 {
		return all[0]
	}
	return ctx.Err()
}

// registerTypes makes the enum issue_status known to pgx, which needs it
// to send the column in COPY's binary format.
func registerTypes(ctx context.Context, c *pgx.Conn) error {
	var exists bool
	if err := c.QueryRow(ctx, "SELECT to_regtype('issue_status') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return err // the chain shape has no enum
	}
	t, err := c.LoadType(ctx, "issue_status")
	if err != nil {
		return fmt.Errorf("datagen: load type issue_status: %w", err)
	}
	c.TypeMap().RegisterType(t)
	return nil
}

// tableStats reads row counts and sizes of every generated table.
func tableStats(ctx context.Context, conn *pgx.Conn) (Stats, error) {
	return tablesStats(ctx, conn, Tables)
}

func tablesStats(ctx context.Context, conn *pgx.Conn, tables []string) (Stats, error) {
	var st Stats
	for _, t := range tables {
		ts := TableStats{Name: t}
		// A partitioned table has no storage of its own: add up its
		// partitions. The count comes from a scan, not from statistics: it
		// must be exact.
		err := conn.QueryRow(ctx, `
			WITH leaves AS (
				SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf
				UNION ALL
				SELECT oid FROM pg_class WHERE oid = $1::regclass AND relkind = 'r')
			SELECT (SELECT count(*) FROM public.`+t+`),
			       coalesce(sum(pg_table_size(relid)), 0)::bigint,
			       coalesce(sum(pg_indexes_size(relid)), 0)::bigint
			FROM leaves`, "public."+t).
			Scan(&ts.Rows, &ts.Bytes, &ts.IndexBytes)
		if err != nil {
			return Stats{}, fmt.Errorf("datagen: size of %s: %w", t, err)
		}
		st.Tables = append(st.Tables, ts)
		st.TableBytes += ts.Bytes
	}
	if err := conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&st.DatabaseBytes); err != nil {
		return Stats{}, fmt.Errorf("datagen: database size: %w", err)
	}
	return st, nil
}

// TenantIDs returns the IDs of all tenants of a generated database, in
// byte order.
func TenantIDs(ctx context.Context, dbURL string) ([]string, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("datagen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return tenantIDs(ctx, conn)
}

func tenantIDs(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT id FROM public.tenants ORDER BY id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("datagen: list tenants: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("datagen: list tenants: %w", err)
	}
	return ids, nil
}

// TenantSize is the size of one tenant's data.
type TenantSize struct {
	ID string
	// Rows counts the tenant's rows in every table, as Stats.TenantRows.
	Rows int64
	// Bytes is the sum of pg_column_size of those rows: their size as
	// stored, compressed values included, without tuple and page overhead.
	Bytes int64
}

// TenantSizes measures every tenant of a generated database, largest
// first (ties by ID), so that a benchmark can pick a large, a median and a
// small tenant. It reads every table: expect seconds per gigabyte.
func TenantSizes(ctx context.Context, dbURL string) ([]TenantSize, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("datagen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sql := tenantSizesSQL
	if shape, err := DetectShape(ctx, conn); err != nil {
		return nil, err
	} else if shape == ShapeChain {
		sql = chainTenantSizesSQL
	}
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("datagen: tenant sizes: %w", err)
	}
	sizes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TenantSize, error) {
		var s TenantSize
		err := r.Scan(&s.ID, &s.Rows, &s.Bytes)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("datagen: tenant sizes: %w", err)
	}
	sort.SliceStable(sizes, func(i, j int) bool {
		if sizes[i].Rows != sizes[j].Rows {
			return sizes[i].Rows > sizes[j].Rows
		}
		return sizes[i].ID < sizes[j].ID
	})
	return sizes, nil
}

// tenantSizesSQL counts and measures each tenant's rows, following the
// foreign keys for the tables without a tenant column.
const tenantSizesSQL = `
SELECT t.id, coalesce(sum(s.n), 0)::bigint + 1, coalesce(sum(s.b), 0)::bigint + pg_column_size(t.*)
FROM public.tenants t LEFT JOIN (
	SELECT tenant_id, count(*) AS n, sum(pg_column_size(x.*)) AS b FROM public.users x GROUP BY 1
	UNION ALL SELECT tenant_id, count(*), sum(pg_column_size(x.*)) FROM public.projects x GROUP BY 1
	UNION ALL SELECT tenant_id, count(*), sum(pg_column_size(x.*)) FROM public.milestones x GROUP BY 1
	UNION ALL SELECT tenant_id, count(*), sum(pg_column_size(x.*)) FROM public.issues x GROUP BY 1
	UNION ALL SELECT tenant_id, count(*), sum(pg_column_size(x.*)) FROM public.events x GROUP BY 1
	UNION ALL SELECT tenant_id, count(*), sum(pg_column_size(x.*)) FROM public.audit_log x GROUP BY 1
	UNION ALL SELECT i.tenant_id, count(*), sum(pg_column_size(x.*))
		FROM public.issue_watchers x JOIN public.issues i ON i.id = x.issue_id GROUP BY 1
	UNION ALL SELECT i.tenant_id, count(*), sum(pg_column_size(x.*))
		FROM public.comments x JOIN public.issues i ON i.id = x.issue_id GROUP BY 1
	UNION ALL SELECT i.tenant_id, count(*), sum(pg_column_size(x.*))
		FROM public.attachments x JOIN public.comments c ON c.id = x.comment_id
		JOIN public.issues i ON i.id = c.issue_id GROUP BY 1
) s ON s.tenant_id = t.id
GROUP BY t.id`

var errNoTenants = errors.New("datagen: the database has no tenants")

// DetectShape tells which shape a generated database has: the chain shape
// is the one with a reactions table.
func DetectShape(ctx context.Context, conn *pgx.Conn) (string, error) {
	var chain bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('public.reactions') IS NOT NULL").Scan(&chain); err != nil {
		return "", fmt.Errorf("datagen: detect shape: %w", err)
	}
	if chain {
		return ShapeChain, nil
	}
	return ShapeTracker, nil
}
