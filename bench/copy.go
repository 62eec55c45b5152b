package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/bench/datagen"
)

// tenantQuery is one table's SELECT of some tenants' rows, written by hand
// for the generated schema, as an incident team would write it.
type tenantQuery struct {
	table string
	sql   string
}

// tenantQueries returns, in foreign-key order, the queries that read the
// rows of the given tenants from every tenant table of the generated
// schema, following the foreign keys for the tables without tenant_id.
func tenantQueries(shape string, ids []string) []tenantQuery {
	lits := make([]string, len(ids))
	for i, id := range ids {
		lits[i] = "'" + strings.ReplaceAll(id, "'", "''") + "'"
	}
	arr := "ARRAY[" + strings.Join(lits, ",") + "]::text[]"
	direct := func(t string) tenantQuery {
		return tenantQuery{t, fmt.Sprintf("SELECT x.* FROM public.%s x WHERE x.tenant_id = ANY(%s)", t, arr)}
	}
	if shape == datagen.ShapeChain {
		return []tenantQuery{
			{"tenants", fmt.Sprintf("SELECT x.* FROM public.tenants x WHERE x.id = ANY(%s)", arr)},
			direct("issues"),
			{"comments", fmt.Sprintf("SELECT x.* FROM public.comments x JOIN public.issues i ON i.id = x.issue_id WHERE i.tenant_id = ANY(%s)", arr)},
			{"reactions", fmt.Sprintf("SELECT x.* FROM public.reactions x JOIN public.comments c ON c.id = x.comment_id JOIN public.issues i ON i.id = c.issue_id WHERE i.tenant_id = ANY(%s)", arr)},
		}
	}
	return []tenantQuery{
		{"tenants", fmt.Sprintf("SELECT x.* FROM public.tenants x WHERE x.id = ANY(%s)", arr)},
		direct("users"), direct("projects"), direct("milestones"), direct("issues"),
		{"issue_watchers", fmt.Sprintf("SELECT x.* FROM public.issue_watchers x JOIN public.issues i ON i.id = x.issue_id WHERE i.tenant_id = ANY(%s)", arr)},
		{"comments", fmt.Sprintf("SELECT x.* FROM public.comments x JOIN public.issues i ON i.id = x.issue_id WHERE i.tenant_id = ANY(%s)", arr)},
		{"attachments", fmt.Sprintf("SELECT x.* FROM public.attachments x JOIN public.comments c ON c.id = x.comment_id JOIN public.issues i ON i.id = c.issue_id WHERE i.tenant_id = ANY(%s)", arr)},
		direct("events"), direct("audit_log"),
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// copyBetween streams the rows of query from src into table on dst with
// COPY TO STDOUT | COPY FROM STDIN, and returns the bytes moved.
func copyBetween(ctx context.Context, src, dst *pgx.Conn, query, table string) (int64, error) {
	pr, pw := io.Pipe()
	var n atomic.Int64
	done := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, countWriter{pw, &n}, "COPY ("+query+") TO STDOUT")
		pw.CloseWithError(err)
		done <- err
	}()
	_, err := dst.PgConn().CopyFrom(ctx, pr, "COPY public."+table+" FROM STDIN")
	pr.CloseWithError(io.ErrClosedPipe)
	if serr := <-done; serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return n.Load(), fmt.Errorf("copy %s: %w", table, err)
	}
	return n.Load(), nil
}

// copyTenants copies the tenants' rows from the database at srcURL into
// the one at dstURL, table by table in foreign-key order, in one
// transaction, with triggers (and so foreign-key checks) off: the fastest
// version of what an incident team does by hand with psql.
func copyTenants(ctx context.Context, shape, srcURL, dstURL string, ids []string) (int64, error) {
	src, err := pgx.Connect(ctx, srcURL)
	if err != nil {
		return 0, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := pgx.Connect(ctx, dstURL)
	if err != nil {
		return 0, err
	}
	defer dst.Close(context.WithoutCancel(ctx))
	if _, err := dst.Exec(ctx, "BEGIN"); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
		return 0, err
	}
	var total int64
	for _, q := range tenantQueries(shape, ids) {
		n, err := copyBetween(ctx, src, dst, q.sql, q.table)
		total += n
		if err != nil {
			return total, err
		}
	}
	_, err = dst.Exec(ctx, "COMMIT")
	return total, err
}

// extractTenants writes the tenants' rows of every table into
// dir/<table>.copy in COPY text format and returns the file paths in
// foreign-key order.
func extractTenants(ctx context.Context, shape, srcURL, dir string, ids []string) ([]string, int64, error) {
	conn, err := pgx.Connect(ctx, srcURL)
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	var files []string
	var total int64
	for _, q := range tenantQueries(shape, ids) {
		p := filepath.Join(dir, q.table+".copy")
		f, err := os.Create(p)
		if err != nil {
			return nil, 0, err
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		var n atomic.Int64
		_, err = conn.PgConn().CopyTo(ctx, countWriter{bw, &n}, "COPY ("+q.sql+") TO STDOUT")
		if err == nil {
			err = bw.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, 0, fmt.Errorf("extract %s: %w", q.table, err)
		}
		files = append(files, p)
		total += n.Load()
	}
	return files, total, nil
}

// loadFiles loads COPY files (named <table>.copy) into the database with
// plain COPY FROM STDIN on `workers` connections, each in one transaction
// with triggers off; tables are dealt to the workers largest first.
func loadFiles(ctx context.Context, dbURL string, files []string, workers int) (int64, error) {
	type job struct {
		path string
		size int64
	}
	var jobs []job
	for _, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			return 0, err
		}
		jobs = append(jobs, job{p, fi.Size()})
	}
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].size > jobs[j].size })
	buckets := make([][]job, workers)
	loads := make([]int64, workers)
	for _, j := range jobs {
		w := 0
		for i := range loads {
			if loads[i] < loads[w] {
				w = i
			}
		}
		buckets[w] = append(buckets[w], j)
		loads[w] += j.size
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for _, bucket := range buckets {
		if len(bucket) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				conn, err := pgx.Connect(ctx, dbURL)
				if err != nil {
					return err
				}
				defer conn.Close(context.WithoutCancel(ctx))
				if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
					return err
				}
				if _, err := conn.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
					return err
				}
				for _, j := range bucket {
					f, err := os.Open(j.path)
					if err != nil {
						return err
					}
					table := strings.TrimSuffix(filepath.Base(j.path), ".copy")
					_, err = conn.PgConn().CopyFrom(ctx, bufio.NewReaderSize(f, 1<<20), "COPY public."+table+" FROM STDIN")
					f.Close()
					if err != nil {
						return fmt.Errorf("load %s: %w", table, err)
					}
					total.Add(j.size)
				}
				_, err = conn.Exec(ctx, "COMMIT")
				return err
			}()
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return total.Load(), err
	}
	return total.Load(), nil
}
