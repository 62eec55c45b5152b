// Command tvscale measures how tenantvault's per-tenant commands scale with the tenant count and the number of sets (issue 13); it is run by hand, never in CI.
//
// Usage:
//
//	tvscale --pg URL --tv BINARY [--tenants 1000,10000,100000] [--size 30MB]
//	        [--sets 10,100,1000] [--set-tenants 1000] [--s3] [--work DIR]
//
// For each tenant count it generates a database (bench/datagen), takes a set
// and an incremental one with the tenantvault binary into a file://
// repository, and measures (wall time, peak RSS of the process) restore of
// the median tenant into an empty database, list --tenant, list, verify and
// prune --dry-run; metadata bytes are counted in-process by a counting
// wrapper around the backend while resolving the tenant as restore does.
// Then, from the --set-tenants repository, it writes synthetic sets
// directly through the vault's writer (copies of the newest set's index
// under new IDs, sharing its packs) up to each --sets count and measures
// list --tenant and list, on file:// and, with --s3, on MinIO
// (TENANTVAULT_TEST_S3_ENDPOINT, AWS_* credentials), where every ranged GET
// is counted. Results go to stdout as Markdown table rows.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/tenantvault/tenantvault/bench/datagen"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/vault"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tvscale:", err)
		os.Exit(1)
	}
}

type config struct {
	pg, tv, work  string
	tenants, sets []int
	size          int64
	setTenants    int
	s3            bool
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func run() error {
	var c config
	var tenants, sets, size string
	flag.StringVar(&c.pg, "pg", os.Getenv("TENANTVAULT_TEST_PG_URL"), "PostgreSQL URL of a database to connect to for CREATE DATABASE")
	flag.StringVar(&c.tv, "tv", "", "tenantvault binary (go build -o ... ./cmd/tenantvault)")
	flag.StringVar(&c.work, "work", "", "working directory (default: a temporary one, removed at the end)")
	flag.StringVar(&tenants, "tenants", "1000,10000,100000", "tenant counts")
	flag.StringVar(&sets, "sets", "10,100,1000", "set counts for list --tenant")
	flag.StringVar(&size, "size", "30MB", "target data size of every generated database")
	flag.IntVar(&c.setTenants, "set-tenants", 1000, "tenant count of the repository the set series grows from (one of --tenants)")
	flag.BoolVar(&c.s3, "s3", false, "also run the set series on MinIO")
	flag.Parse()
	var err error
	if c.tenants, err = ints(tenants); err != nil {
		return err
	}
	if c.sets, err = ints(sets); err != nil {
		return err
	}
	mb, err := strconv.ParseInt(strings.TrimSuffix(strings.ToUpper(size), "MB"), 10, 64)
	if err != nil {
		return fmt.Errorf("--size %q: want e.g. 30MB", size)
	}
	c.size = mb << 20
	if c.pg == "" || c.tv == "" {
		return errors.New("--pg and --tv are required")
	}
	if c.work == "" {
		if c.work, err = os.MkdirTemp("", "tvscale-"); err != nil {
			return err
		}
		defer os.RemoveAll(c.work)
	}
	ctx := context.Background()
	fmt.Println("| tenants | step | wall s | peak RSS MiB | metadata read | GETs |")
	fmt.Println("|---|---|---|---|---|---|")
	repos := map[int]string{}
	medians := map[int]string{}
	for _, n := range c.tenants {
		r, tenant, err := c.tenantSeries(ctx, n)
		if err != nil {
			return fmt.Errorf("%d tenants: %w", n, err)
		}
		repos[n], medians[n] = r, tenant
	}
	base, ok := repos[c.setTenants]
	if !ok {
		return nil
	}
	fmt.Println()
	fmt.Println("| backend | sets | step | wall s | peak RSS MiB | metadata read | GETs |")
	fmt.Println("|---|---|---|---|---|---|---|")
	if err := c.setSeries(ctx, "file", base, medians[c.setTenants]); err != nil {
		return err
	}
	if c.s3 {
		return c.setSeries(ctx, "s3", base, medians[c.setTenants])
	}
	return nil
}

// measure runs the tenantvault binary and returns its wall time and peak
// RSS.
func (c *config) measure(args ...string) (time.Duration, int64, string, error) {
	// Through /usr/bin/time: the peak RSS a child reports to this process
	// includes what this process held when it forked.
	rssFile := filepath.Join(c.work, "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, c.tv}, args...)...)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var rss int64
	if b, rerr := os.ReadFile(rssFile); rerr == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		kb, _ := strconv.ParseInt(lines[len(lines)-1], 10, 64)
		rss = kb << 10
	}
	if err != nil {
		return wall, rss, out.String(), fmt.Errorf("tenantvault %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return wall, rss, out.String(), nil
}

func dbURL(admin, name string) string {
	u, _ := url.Parse(admin)
	u.Path = "/" + name
	return u.String()
}

func exec1(ctx context.Context, admin, sql string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func mib(b int64) string { return fmt.Sprintf("%.0f", float64(b)/(1<<20)) }

func human(b int64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

// tenantSeries generates a database of n tenants, snapshots it twice and
// measures the per-tenant commands. It returns the repository and the
// median tenant.
func (c *config) tenantSeries(ctx context.Context, n int) (string, string, error) {
	name := fmt.Sprintf("tvscale_%d", n)
	src := dbURL(c.pg, name)
	exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+name)
	if err := exec1(ctx, c.pg, "CREATE DATABASE "+name); err != nil {
		return "", "", err
	}
	defer exec1(context.Background(), c.pg, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	start := time.Now()
	st, err := datagen.Generate(ctx, src, datagen.Options{Tenants: n, TargetBytes: c.size, Seed: 1})
	if err != nil {
		return "", "", err
	}
	fmt.Fprintf(os.Stderr, "generated %d tenants, %d MB, in %s\n", n, st.TableBytes>>20, time.Since(start).Round(time.Second))
	ids := make([]string, 0, len(st.TenantRows))
	for id := range st.TenantRows {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(a, b int) bool {
		if st.TenantRows[ids[a]] != st.TenantRows[ids[b]] {
			return st.TenantRows[ids[a]] < st.TenantRows[ids[b]]
		}
		return ids[a] < ids[b]
	})
	median := ids[len(ids)/2]
	dir := filepath.Join(c.work, name)
	r := "file://" + dir
	row := func(step string, wall time.Duration, rss int64, meta, gets string) {
		fmt.Printf("| %d | %s | %.2f | %s | %s | %s |\n", n, step, wall.Seconds(), mib(rss), meta, gets)
	}
	for i, step := range []string{"snapshot", "snapshot (incremental)"} {
		args := []string{"snapshot", "--source", src, "--repo", r}
		if i == 0 {
			args = append(args, "--init")
		}
		wall, rss, _, err := c.measure(args...)
		if err != nil {
			return "", "", err
		}
		row(step, wall, rss, "", "")
	}
	meta, gets, err := resolveCost(ctx, r, median)
	if err != nil {
		return "", "", err
	}
	target := name + "_target"
	exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+target)
	if err := exec1(ctx, c.pg, "CREATE DATABASE "+target); err != nil {
		return "", "", err
	}
	defer exec1(context.Background(), c.pg, "DROP DATABASE IF EXISTS "+target+" WITH (FORCE)")
	wall, rss, _, err := c.measure("restore", "--repo", r, "--target", dbURL(c.pg, target), "--tenant", median, "--create-schema", "--yes")
	if err != nil {
		return "", "", err
	}
	row(fmt.Sprintf("restore median tenant (%d rows)", st.TenantRows[median]), wall, rss, human(meta), strconv.Itoa(gets))
	// A second restore of another tenant into the existing schema: what an
	// incident restore into a live database costs without --create-schema.
	other := ids[len(ids)/2+1]
	wall, rss, _, err = c.measure("restore", "--repo", r, "--target", dbURL(c.pg, target), "--tenant", other, "--yes")
	if err != nil {
		return "", "", err
	}
	row("restore one more tenant (schema exists)", wall, rss, human(meta), strconv.Itoa(gets))
	lmeta, lgets, err := historyCost(ctx, r, median)
	if err != nil {
		return "", "", err
	}
	steps := []struct {
		name       string
		args       []string
		meta, gets string
	}{
		{"list --tenant", []string{"list", "--repo", r, "--tenant", median}, human(lmeta), strconv.Itoa(lgets)},
		{"list", []string{"list", "--repo", r}, "", ""},
		{"verify", []string{"verify", "--repo", r}, "", ""},
		{"prune --dry-run --keep-last 1", []string{"prune", "--repo", r, "--keep-last", "1", "--dry-run"}, "", ""},
	}
	for _, s := range steps {
		wall, rss, _, err := c.measure(s.args...)
		if err != nil {
			return "", "", err
		}
		row(s.name, wall, rss, s.meta, s.gets)
	}
	return r, median, nil
}

// counting counts what is read from sets/ and catalog/ (headers, tenant
// indexes, catalogs).
type counting struct {
	repo.Backend
	gets, bytes atomic.Int64
}

type countReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r countReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (c *counting) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := c.Backend.Get(ctx, key, offset, length)
	if err != nil || !strings.HasPrefix(key, vault.SetsPrefix) && !strings.HasPrefix(key, vault.CatalogPrefix) {
		return rc, err
	}
	c.gets.Add(1)
	return countReader{rc, &c.bytes}, nil
}

func (c *counting) Unwrap() repo.Backend { return c.Backend }

func openCounting(ctx context.Context, r string) (*vault.Vault, *counting, error) {
	b, err := repo.Open(ctx, r, repo.Options{})
	if err != nil {
		return nil, nil, err
	}
	cb := &counting{Backend: b}
	v, err := vault.Open(ctx, cb, vault.Options{})
	return v, cb, err
}

// resolveCost is the metadata restore reads to find one tenant: newest set
// first, header, directory and one page, until a set holds it.
func resolveCost(ctx context.Context, r, tenant string) (int64, int, error) {
	v, cb, err := openCounting(ctx, r)
	if err != nil {
		return 0, 0, err
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return 0, 0, err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		s, err := v.OpenSet(ctx, ids[i])
		if err != nil {
			return 0, 0, err
		}
		t, err := s.Tenant(ctx, tenant)
		if err != nil {
			return 0, 0, err
		}
		if t != nil {
			break
		}
	}
	return cb.bytes.Load(), int(cb.gets.Load()), nil
}

// historyCost is the metadata list --tenant reads.
func historyCost(ctx context.Context, r, tenant string) (int64, int, error) {
	v, cb, err := openCounting(ctx, r)
	if err != nil {
		return 0, 0, err
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return 0, 0, err
	}
	sets, err := v.TenantHistory(ctx, ids, tenant)
	if err != nil {
		return 0, 0, err
	}
	if len(sets) == 0 {
		return 0, 0, fmt.Errorf("tenant %q in no set", tenant)
	}
	return cb.bytes.Load(), int(cb.gets.Load()), nil
}

// setSeries grows a copy of the base repository with synthetic sets (the
// newest set's header and tenant index under new IDs, sharing its packs)
// and measures list --tenant and list at each count.
func (c *config) setSeries(ctx context.Context, kind, base, tenant string) error {
	src, err := repo.Open(ctx, base, repo.Options{})
	if err != nil {
		return err
	}
	var r string
	switch kind {
	case "file":
		r = "file://" + filepath.Join(c.work, "sets-file")
	case "s3":
		endpoint := os.Getenv("TENANTVAULT_TEST_S3_ENDPOINT")
		if endpoint == "" {
			return errors.New("--s3 needs TENANTVAULT_TEST_S3_ENDPOINT")
		}
		bucket := fmt.Sprintf("tvscale-%d", time.Now().UnixNano())
		u, _ := url.Parse(endpoint)
		mc, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""), Secure: u.Scheme == "https"})
		if err != nil {
			return err
		}
		if err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
			return err
		}
		defer removeBucket(mc, bucket)
		r = fmt.Sprintf("s3://%s/repo?endpoint=%s&region=us-east-1", bucket, url.QueryEscape(endpoint))
	}
	dst, err := repo.Open(ctx, r, repo.Options{Create: true})
	if err != nil {
		return err
	}
	// Copy the base repository.
	err = src.List(ctx, "", func(o repo.ObjectInfo) error {
		rc, err := src.Get(ctx, o.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			return err
		}
		return dst.Put(ctx, o.Key, strings.NewReader(string(data)), int64(len(data)))
	})
	if err != nil {
		return err
	}
	v, err := vault.Open(ctx, dst, vault.Options{})
	if err != nil {
		return err
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return err
	}
	newest, err := v.OpenSet(ctx, ids[len(ids)-1])
	if err != nil {
		return err
	}
	hdr := *newest.Header()
	at, _ := time.Parse("20060102T150405.000Z", hdr.ID[:20])
	have := len(ids)
	for _, want := range c.sets {
		start := time.Now()
		for ; have < want; have++ {
			if err := cloneSet(ctx, v, newest, hdr, at.Add(time.Duration(have)*time.Hour)); err != nil {
				return err
			}
			// As snapshots do after their sets (once per catalog's worth of
			// sets here: the same catalogs, less waiting).
			if have%vault.CatalogFanout == vault.CatalogFanout-1 {
				if err := v.UpdateCatalog(ctx, ""); err != nil {
					return err
				}
			}
		}
		fmt.Fprintf(os.Stderr, "%s: %d sets (written in %s)\n", kind, have, time.Since(start).Round(time.Second))
		measure := func(how string) error {
			meta, gets, err := historyCost(ctx, r, tenant)
			if err != nil {
				return err
			}
			for _, s := range []struct {
				name       string
				args       []string
				meta, gets string
			}{
				{"list --tenant" + how, []string{"list", "--repo", r, "--tenant", tenant}, human(meta), strconv.Itoa(gets)},
				{"list" + how, []string{"list", "--repo", r}, "", ""},
			} {
				wall, rss, _, err := c.measure(s.args...)
				if err != nil {
					return err
				}
				fmt.Printf("| %s | %d | %s | %.2f | %s | %s | %s |\n", kind, want, s.name, wall.Seconds(), mib(rss), s.meta, s.gets)
			}
			return nil
		}
		// With the catalog, then set by set (the catalog moved aside), in
		// the same run.
		if err := measure(""); err != nil {
			return err
		}
		if err := moveCatalog(ctx, dst, vault.CatalogPrefix, "catalog-aside/"); err != nil {
			return err
		}
		if err := measure(" (no catalog)"); err != nil {
			return err
		}
		if err := moveCatalog(ctx, dst, "catalog-aside/", vault.CatalogPrefix); err != nil {
			return err
		}
	}
	return nil
}

// moveCatalog moves every object under from to the same name under to.
func moveCatalog(ctx context.Context, b repo.Backend, from, to string) error {
	var keys []string
	if err := b.List(ctx, from, func(o repo.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		data, err := repo.ReadAll(ctx, b, k)
		if err != nil {
			return err
		}
		if err := b.Put(ctx, to+strings.TrimPrefix(k, from), strings.NewReader(string(data)), int64(len(data))); err != nil {
			return err
		}
		if err := b.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// cloneSet writes a synthetic set through the vault's writer: hdr under a
// new ID, with every tenant entry of from.
func cloneSet(ctx context.Context, v *vault.Vault, from *vault.Set, hdr manifest.Manifest, at time.Time) error {
	hdr.ID = vault.NewSetID(at)
	hdr.StartedAt, hdr.ConsistentAt, hdr.FinishedAt = at, at, at
	hdr.Index = nil
	w, err := v.NewIndexWriter(hdr.ID, "")
	if err != nil {
		return err
	}
	defer w.Close()
	if err := from.Tenants(ctx, func(t *manifest.Tenant) error { return w.Add(t) }); err != nil {
		return err
	}
	return v.CommitSet(ctx, &hdr, w)
}

func removeBucket(mc *minio.Client, bucket string) {
	ctx := context.Background()
	for o := range mc.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		mc.RemoveObject(ctx, bucket, o.Key, minio.RemoveObjectOptions{})
	}
	mc.RemoveBucket(ctx, bucket)
}
