// Command tvschemas measures the schema tenancy model at many tenant schemas (issue 13): snapshot, list, verify and restore of one median schema; it is run by hand, never in CI.
//
// Usage:
//
//	tvschemas --pg URL --tv BINARY [--schemas 1000,10000] [--work DIR] [--repeat K] [--replace=false]
//
// For each count it makes (once; an existing database of that name is
// reused) a database h13s<N> holding N schemas tenant_00001... with three
// tables each (generate.sql: one server-side procedure, no client round
// trip per schema), takes a set with the tenantvault binary into a file://
// repository and measures (wall time, peak RSS through /usr/bin/time)
// snapshot, list, verify, and restore of the median schema with
// --create-schema into an empty database and into the live one (its schema
// dropped first), and the replace of it in place (--if-exists replace,
// which first takes a pre-restore set). Metadata bytes are what a restore
// of that tenant reads, counted in-process by a counting backend: the
// header, the directory and one page of the tenant index, and the schema
// SQL (the prelude and the tenant's part; the shared part too for an empty
// target). Then, with --repeat K, the two one-schema restores are run K
// more times, alternating between the counts so that each count sees the
// same load, and their medians and ratios printed: single times vary 2-3x
// on a shared machine. Results go to stdout as Markdown table rows.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

//go:embed generate.sql
var generateSQL string

type config struct {
	pg, tv, work string
	replace      bool
}

// sized is what the repeated restores need of one count.
type sized struct {
	n           int
	src, repo   string
	empty, live []time.Duration
}

func main() {
	var c config
	var counts string
	flag.StringVar(&c.pg, "pg", os.Getenv("TENANTVAULT_TEST_PG_URL"), "admin URL of the PostgreSQL server")
	flag.StringVar(&c.tv, "tv", "tenantvault", "tenantvault binary")
	flag.StringVar(&counts, "schemas", "1000,10000", "schema counts")
	flag.StringVar(&c.work, "work", "", "work directory (default: a temporary one)")
	repeat := flag.Int("repeat", 3, "one-schema restores to repeat at each count, alternating between counts")
	flag.BoolVar(&c.replace, "replace", true, "also measure --if-exists replace of the median schema")
	flag.Parse()
	if c.work == "" {
		d, err := os.MkdirTemp("", "tvschemas-*")
		if err != nil {
			fail(err)
		}
		c.work = d
	}
	ctx := context.Background()
	fmt.Println("| schemas | step | wall s | peak RSS MiB | notes |")
	fmt.Println("|---:|---|---:|---:|---|")
	var all []*sized
	for _, s := range strings.Split(counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 {
			fail(fmt.Errorf("--schemas: %q", s))
		}
		z, err := c.one(ctx, n)
		if err != nil {
			fail(err)
		}
		all = append(all, z)
	}
	if *repeat <= 0 {
		return
	}
	for range *repeat {
		for _, z := range all {
			if err := c.restoreBoth(ctx, z); err != nil {
				fail(err)
			}
		}
	}
	fmt.Println()
	fmt.Println("| schemas | into an empty database, s | median | into the live database (schema dropped), s | median |")
	fmt.Println("|---:|---|---:|---|---:|")
	for _, z := range all {
		fmt.Printf("| %d | %s | **%.2f** | %s | **%.2f** |\n", z.n, secs(z.empty), median(z.empty).Seconds(), secs(z.live), median(z.live).Seconds())
	}
	if len(all) > 1 {
		lo, hi := all[0], all[len(all)-1]
		fmt.Printf("\nratio %d / %d schemas: empty %.2fx, live %.2fx\n", hi.n, lo.n,
			median(hi.empty).Seconds()/median(lo.empty).Seconds(), median(hi.live).Seconds()/median(lo.live).Seconds())
	}
}

func secs(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.2f", d.Seconds())
	}
	return strings.Join(parts, ", ")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// restoreBoth restores the median schema into a fresh empty database, then
// into the live one after dropping it there, recording both times.
func (c *config) restoreBoth(ctx context.Context, z *sized) error {
	median := fmt.Sprintf("tenant_%05d", z.n/2)
	target := fmt.Sprintf("h13s%d_empty", z.n)
	exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+target)
	if err := exec1(ctx, c.pg, "CREATE DATABASE "+target); err != nil {
		return err
	}
	wall, _, err := c.measure("restore", "--repo", z.repo, "--target", dbURL(c.pg, target), "--tenant", median, "--create-schema", "--yes")
	if err != nil {
		return err
	}
	z.empty = append(z.empty, wall)
	if err := exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+target); err != nil {
		return err
	}
	if err := exec1(ctx, z.src, "DROP SCHEMA "+median+" CASCADE"); err != nil {
		return err
	}
	wall, _, err = c.measure("restore", "--repo", z.repo, "--target", z.src, "--tenant", median, "--create-schema", "--yes")
	if err != nil {
		return err
	}
	z.live = append(z.live, wall)
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tvschemas:", err)
	os.Exit(1)
}

func dbURL(admin, name string) string {
	u, _ := url.Parse(admin)
	u.Path = "/" + name
	return u.String()
}

func exec1(ctx context.Context, u, sql string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// source makes database h13s<n> unless it holds n tenant schemas already.
func (c *config) source(ctx context.Context, n int) (string, error) {
	name := fmt.Sprintf("h13s%d", n)
	u := dbURL(c.pg, name)
	if conn, err := pgx.Connect(ctx, u); err == nil {
		var have int
		err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\_%'`).Scan(&have)
		conn.Close(ctx)
		if err == nil && have == n {
			return u, nil
		}
	}
	if err := exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+name); err != nil {
		return "", err
	}
	if err := exec1(ctx, c.pg, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	start := time.Now()
	if err := exec1(ctx, u, generateSQL); err != nil {
		return "", err
	}
	// CALL with COMMITs inside runs outside a transaction block: a
	// statement of its own.
	if err := exec1(ctx, u, fmt.Sprintf("CALL public.tv_make_tenants(%d)", n)); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "generated %d schemas in %.0f s\n", n, time.Since(start).Seconds())
	return u, nil
}

// measure runs the tenantvault binary under /usr/bin/time.
func (c *config) measure(args ...string) (time.Duration, int64, error) {
	rssFile := filepath.Join(c.work, "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, c.tv}, args...)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
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
		return wall, rss, fmt.Errorf("tenantvault %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return wall, rss, nil
}

func (c *config) one(ctx context.Context, n int) (*sized, error) {
	src, err := c.source(ctx, n)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.work, fmt.Sprintf("repo-%d", n))
	os.RemoveAll(dir)
	r := "file://" + dir
	row := func(step string, wall time.Duration, rss int64, notes string) {
		fmt.Printf("| %d | %s | %.2f | %.0f | %s |\n", n, step, wall.Seconds(), float64(rss)/(1<<20), notes)
	}
	wall, rss, err := c.measure("snapshot", "--source", src, "--repo", r, "--init", "--tenancy", "schema", "--schema-pattern", `tenant\_%`)
	if err != nil {
		return nil, err
	}
	sizes := objectSizes(dir)
	row("snapshot", wall, rss, sizes)
	for _, s := range [][]string{{"list", "--repo", r}, {"verify", "--repo", r}} {
		wall, rss, err := c.measure(s...)
		if err != nil {
			return nil, err
		}
		row(s[0], wall, rss, "")
	}
	median := fmt.Sprintf("tenant_%05d", n/2)
	empty, live, err := restoreCost(ctx, r, median)
	if err != nil {
		return nil, err
	}
	target := fmt.Sprintf("h13s%d_empty", n)
	exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+target)
	if err := exec1(ctx, c.pg, "CREATE DATABASE "+target); err != nil {
		return nil, err
	}
	wall, rss, err = c.measure("restore", "--repo", r, "--target", dbURL(c.pg, target), "--tenant", median, "--create-schema", "--yes")
	if err != nil {
		return nil, err
	}
	row("restore "+median+" into an empty database", wall, rss, "metadata read: "+empty)
	if err := exec1(ctx, src, "DROP SCHEMA "+median+" CASCADE"); err != nil {
		return nil, err
	}
	wall, rss, err = c.measure("restore", "--repo", r, "--target", src, "--tenant", median, "--create-schema", "--yes")
	if err != nil {
		return nil, err
	}
	row("restore "+median+" into the live database (schema dropped)", wall, rss, "metadata read: "+live)
	if c.replace {
		wall, rss, err = c.measure("restore", "--repo", r, "--target", src, "--tenant", median, "--if-exists", "replace", "--yes")
		if err != nil {
			return nil, err
		}
		row("restore "+median+" over itself (--if-exists replace: pre-restore set first)", wall, rss, "")
	}
	return &sized{n: n, src: src, repo: r}, exec1(ctx, c.pg, "DROP DATABASE IF EXISTS "+target)
}

// objectSizes describes the set's objects.
func objectSizes(dir string) string {
	var parts []string
	for _, g := range []struct{ what, glob string }{
		{"header", "sets/*.json.zst"}, {"tenant index", "sets/*.tidx"},
		{"pg_dump archive", "schemas/*.dump"}, {"split schema", "schemas/*.parts"},
	} {
		m, _ := filepath.Glob(filepath.Join(dir, g.glob))
		var n int64
		for _, f := range m {
			if st, err := os.Stat(f); err == nil {
				n += st.Size()
			}
		}
		parts = append(parts, fmt.Sprintf("%s %s", g.what, human(n)))
	}
	return strings.Join(parts, ", ")
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// counting counts the bytes and GETs of metadata: sets/ (headers, tenant
// indexes) and schemas/ (split schema parts, archives).
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
	if err != nil || !strings.HasPrefix(key, vault.SetsPrefix) && !strings.HasPrefix(key, vault.SchemasPrefix) {
		return rc, err
	}
	c.gets.Add(1)
	return countReader{rc, &c.bytes}, nil
}

// restoreCost is the metadata a restore of tenant reads from the newest
// set: header, directory and page, then the schema SQL, for an empty
// target (prelude, shared part, the tenant's) and a live one (prelude, the
// tenant's).
func restoreCost(ctx context.Context, r, tenant string) (empty, live string, err error) {
	b, err := repo.Open(ctx, r, repo.Options{})
	if err != nil {
		return "", "", err
	}
	defer b.Close()
	cb := &counting{Backend: b}
	v, err := vault.Open(ctx, cb, vault.Options{})
	if err != nil {
		return "", "", err
	}
	ids, err := v.ListSets(ctx)
	if err != nil || len(ids) == 0 {
		return "", "", fmt.Errorf("no set: %v", err)
	}
	s, err := v.OpenSet(ctx, ids[len(ids)-1])
	if err != nil {
		return "", "", err
	}
	hdr := cb.bytes.Load()
	t, err := s.Tenant(ctx, tenant)
	if err != nil || t == nil {
		return "", "", fmt.Errorf("tenant %s: %v", tenant, err)
	}
	index := cb.bytes.Load() - hdr
	m := s.Header()
	if len(m.Schemas) == 0 || m.Schemas[0].Split == nil || t.SchemaSQL == nil {
		return "", "", fmt.Errorf("set %s has no split schema", m.ID)
	}
	sp := m.Schemas[0].Split
	before := cb.bytes.Load()
	if _, err := v.GetSchemaPart(ctx, sp, sp.Prelude, nil); err != nil {
		return "", "", err
	}
	if _, err := v.GetSchemaPart(ctx, sp, *t.SchemaSQL, t); err != nil {
		return "", "", err
	}
	own := cb.bytes.Load() - before
	if _, err := v.GetSchemaPart(ctx, sp, sp.Shared, nil); err != nil {
		return "", "", err
	}
	shared := cb.bytes.Load() - before - own
	live = fmt.Sprintf("%s (header %s, index %s, schema SQL %s) in %d GETs", human(hdr+index+own), human(hdr), human(index), human(own), cb.gets.Load()-1)
	empty = fmt.Sprintf("%s (+ shared part %s)", human(hdr+index+own+shared), human(shared))
	return empty, live, nil
}
