package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault/bench/datagen"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// limits measures what this machine can do at best: read rows with plain
// COPY TO, write them with plain COPY FROM, compress and hash them, and
// write files.
func (b *bench) limits(ctx context.Context) error {
	sampleMax := int64(128 << 20)
	diskBytes := int64(1 << 30)
	if b.cfg.Smoke {
		sampleMax, diskBytes = 8<<20, 32<<20
	}

	// Disk: sequential 1 MiB writes and an fsync, in the work directory.
	for range b.cfg.Reps {
		s, err := b.measureFunc(func() (int64, error) { return diskWrite(filepath.Join(b.tmp, "disk.test"), diskBytes) })
		if err != nil {
			return err
		}
		b.add("limits/disk write", "sequential 1 MiB writes then fsync, in the work directory", s)
	}

	// COPY TO STDOUT of every table, two sessions at a time (as -j 2).
	for range b.cfg.Reps {
		s, err := b.measureFunc(func() (int64, error) { return copyOutAll(ctx, b.cfg.Shape, b.liveURL, 2) })
		if err != nil {
			return err
		}
		b.add("limits/copy out all tables", "plain COPY (SELECT * FROM t) TO STDOUT of every table, 2 sessions, output discarded", s)
	}

	// The largest table alone: plain, and as tenantvault's export query.
	cat, err := discover(ctx, b.liveURL)
	if err != nil {
		return err
	}
	exportSQL := ""
	for i := range cat {
		if cat[i].Name == "comments" {
			exportSQL = tenancy.ExportSQL(&cat[i], nil)
		}
	}
	for range b.cfg.Reps {
		s, err := b.measureFunc(func() (int64, error) {
			return copyOut(ctx, b.liveURL, "COPY public.comments TO STDOUT", "", io.Discard)
		})
		if err != nil {
			return err
		}
		b.add("limits/copy out comments", "plain COPY public.comments TO STDOUT, one session", s)
		if exportSQL != "" {
			s, err := b.measureFunc(func() (int64, error) { return copyOut(ctx, b.liveURL, exportSQL, "64MB", io.Discard) })
			if err != nil {
				return err
			}
			b.add("limits/export query comments", "tenantvault's ordered export COPY of comments (work_mem 64MB), one session", s)
		}
	}

	// A sample of real rows for the codec and hash measurements.
	var buf bytes.Buffer
	lw := &limitWriter{w: &buf, left: sampleMax}
	if _, err := copyOut(ctx, b.liveURL, "COPY public.comments TO STDOUT", "", lw); err != nil && err != errLimit && !strings.Contains(err.Error(), errLimit.Error()) {
		return err
	}
	sample := buf.Bytes()
	if i := bytes.LastIndexByte(sample, '\n'); i >= 0 {
		sample = sample[:i+1]
	}
	b.value("sample_bytes", float64(len(sample)))
	for _, level := range []int{1, 2} {
		var compressed []byte
		best := 0.0
		for range b.cfg.Reps {
			var out bytes.Buffer
			t0 := time.Now()
			enc, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.EncoderLevel(level)), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
			if err != nil {
				return err
			}
			for p := sample; len(p) > 0; {
				n := min(len(p), 64<<10) // COPY hands data over in small pieces
				enc.Write(p[:n])
				p = p[n:]
			}
			enc.Close()
			best = max(best, float64(len(sample))/time.Since(t0).Seconds())
			compressed = out.Bytes()
		}
		b.value(fmt.Sprintf("zstd%d_compress_Bps", level), best)
		b.value(fmt.Sprintf("zstd%d_ratio", level), float64(len(sample))/float64(len(compressed)))
		best = 0
		for range b.cfg.Reps {
			t0 := time.Now()
			dec, err := zstd.NewReader(bytes.NewReader(compressed), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				return err
			}
			if _, err := io.Copy(io.Discard, dec); err != nil {
				return err
			}
			dec.Close()
			best = max(best, float64(len(sample))/time.Since(t0).Seconds())
		}
		b.value(fmt.Sprintf("zstd%d_decompress_Bps", level), best)
	}
	best := 0.0
	for range b.cfg.Reps {
		t0 := time.Now()
		h := sha256.New()
		h.Write(sample)
		h.Sum(nil)
		best = max(best, float64(len(sample))/time.Since(t0).Seconds())
	}
	b.value("sha256_Bps", best)
	b.log.printf("zstd level 1: %.0f MB/s compress, %.0f MB/s decompress, ratio %.2f; level 2: %.0f MB/s, ratio %.2f; sha256 %.0f MB/s",
		b.res.Values["zstd1_compress_Bps"]/1e6, b.res.Values["zstd1_decompress_Bps"]/1e6, b.res.Values["zstd1_ratio"],
		b.res.Values["zstd2_compress_Bps"]/1e6, b.res.Values["zstd2_ratio"], best/1e6)

	// Plain COPY FROM STDIN of the sample into a table of the same shape
	// without indexes: the server's raw load speed.
	path := filepath.Join(b.tmp, "comments.copy")
	if err := os.WriteFile(path, sample, 0o644); err != nil {
		return err
	}
	defer os.Remove(path)
	for range b.cfg.Reps {
		if err := b.exec(ctx, b.liveURL, "DROP TABLE IF EXISTS public.tvbench_copyin", "CREATE TABLE public.tvbench_copyin (LIKE public.comments)"); err != nil {
			return err
		}
		s, err := b.measureFunc(func() (int64, error) {
			conn, err := pgx.Connect(ctx, b.liveURL)
			if err != nil {
				return 0, err
			}
			defer conn.Close(ctx)
			f, err := os.Open(path)
			if err != nil {
				return 0, err
			}
			defer f.Close()
			_, err = conn.PgConn().CopyFrom(ctx, f, "COPY public.tvbench_copyin FROM STDIN")
			return int64(len(sample)), err
		})
		if err != nil {
			return err
		}
		b.add("limits/copy in comments (no indexes)", "plain COPY FROM STDIN of a sample of comments into a table without indexes, one session", s)
	}
	return b.exec(ctx, b.liveURL, "DROP TABLE IF EXISTS public.tvbench_copyin")
}

var errLimit = fmt.Errorf("sample is full")

type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errLimit
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	if err == nil && l.left <= 0 {
		err = errLimit
	}
	return n, err
}

func diskWrite(path string, size int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i*7 + i>>8)
	}
	var n int64
	for n < size {
		k, err := f.Write(block)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}

// copyOut runs one COPY TO STDOUT into w, with work_mem set when given.
func copyOut(ctx context.Context, dbURL, sql, workMem string, w io.Writer) (int64, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if workMem != "" {
		if _, err := conn.Exec(ctx, "SET work_mem = "+quote(workMem)); err != nil {
			return 0, err
		}
	}
	var n atomic.Int64
	_, err = conn.PgConn().CopyTo(ctx, countWriter{w, &n}, sql)
	return n.Load(), err
}

// copyOutAll reads every generated table with plain COPY on `workers`
// sessions, largest tables first.
func copyOutAll(ctx context.Context, shape, dbURL string, workers int) (int64, error) {
	order := []string{"comments", "attachments", "issues", "events", "audit_log", "issue_watchers", "users", "milestones", "projects", "tenants", "plans", "countries"}
	if len(order) != len(datagen.Tables) || shape == datagen.ShapeChain {
		order = slices.Clone(datagen.TablesOf(shape))
		slices.Reverse(order) // the large tables come last in load order
	}
	jobs := make(chan string, len(order))
	for _, t := range order {
		jobs <- t
	}
	close(jobs)
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range jobs {
				n, err := copyOut(ctx, dbURL, "COPY (SELECT * FROM public."+t+") TO STDOUT", "", io.Discard)
				total.Add(n)
				if err != nil {
					errs <- err
					return
				}
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

// discover classifies the live database's tables as tenantvault does.
func discover(ctx context.Context, dbURL string) ([]manifest.Table, error) {
	cfg, err := tenancy.ParseURL(dbURL)
	if err != nil {
		return nil, err
	}
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tc := tenancy.Config{}
	if err := tc.Normalize(); err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return nil, err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	cat, err := tenancy.Discover(ctx, conn, tc, "")
	if err != nil {
		return nil, err
	}
	return cat.Tables, nil
}

// loadThroughput compares tenantvault restoring 40% of the tenants into an
// empty copy of the database with plain COPY FROM STDIN of the same rows
// into another empty copy (two sessions each, triggers off).
func (b *bench) loadThroughput(ctx context.Context) error {
	sc := b.res.Scenarios[len(b.res.Scenarios)-1]
	files, size, err := extractTenants(ctx, b.cfg.Shape, b.liveURL, filepath.Join(b.tmp, "extract"), sc.Tenants)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Join(b.tmp, "extract"))
	b.value("load_copy_bytes", float64(size))
	name := b.prefix + "empty"
	for range b.cfg.LoadReps {
		u, err := b.emptyCopy(ctx, name)
		if err != nil {
			return err
		}
		s, err := b.tvRestore(ctx, "tenantvault restore into empty copy", b.repos[0], u, sc)
		if err != nil {
			return err
		}
		b.add("load/tenantvault", "tenantvault restore --parallel 2 of "+sc.Name+" into an empty copy (schema, indexes, foreign keys); bytes = COPY bytes", s)
		u, err = b.emptyCopy(ctx, name)
		if err != nil {
			return err
		}
		s, err = b.measureFunc(func() (int64, error) { return loadFiles(ctx, u, files, 2) })
		if err != nil {
			return err
		}
		b.add("load/plain COPY", "plain COPY FROM STDIN of the same rows from files into an empty copy, 2 sessions, one transaction each, triggers off", s)
		for _, v := range b.cfg.RestoreVariants {
			u, err := b.emptyCopy(ctx, name)
			if err != nil {
				return err
			}
			s, err := b.tvRestore(ctx, "tenantvault restore into empty copy "+v.Name, b.repos[0], withParams(u, v.Args), sc, v.Flags...)
			if err != nil {
				return err
			}
			b.add("load/tenantvault "+v.Name, "what-if: tenantvault restore into an empty copy with "+v.describe(), s)
		}
	}
	return b.dropDB(ctx, name)
}

// profiles takes CPU profiles of a snapshot and of a restore of 40% of
// the tenants into an empty copy, and EXPLAIN ANALYZE of the export
// queries.
func (b *bench) profiles(ctx context.Context) error {
	out := b.cfg.OutDir
	repo := filepath.Join(b.tmp, "repo-profile")
	prof := filepath.Join(out, "snapshot.pprof")
	if _, err := b.tvSnapshot(ctx, repo, "tenantvault snapshot (profiled)", []string{"--cpu-profile", prof}); err != nil {
		return err
	}
	os.RemoveAll(repo)
	b.pprofTop(ctx, prof, filepath.Join(out, "snapshot-pprof-top.txt"))
	sc := b.res.Scenarios[len(b.res.Scenarios)-1]
	name := b.prefix + "empty"
	u, err := b.emptyCopy(ctx, name)
	if err != nil {
		return err
	}
	prof = filepath.Join(out, "restore.pprof")
	if _, err := b.tvRestore(ctx, "tenantvault restore (profiled)", b.repos[0], u, sc, "--cpu-profile", prof); err != nil {
		return err
	}
	b.pprofTop(ctx, prof, filepath.Join(out, "restore-pprof-top.txt"))
	if err := b.dropDB(ctx, name); err != nil {
		return err
	}
	return b.explain(ctx, filepath.Join(out, "explain.txt"))
}

func (b *bench) pprofTop(ctx context.Context, prof, dest string) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		b.note("go not on PATH: no pprof summary of %s", prof)
		return
	}
	out, err := exec.CommandContext(ctx, goBin, "tool", "pprof", "-top", "-nodecount=40", b.cfg.TenantVault, prof).CombinedOutput()
	if err != nil {
		b.note("pprof %s: %v", prof, err)
	}
	os.WriteFile(dest, out, 0o644)
	out2, _ := exec.CommandContext(ctx, goBin, "tool", "pprof", "-top", "-cum", "-nodecount=40", b.cfg.TenantVault, prof).CombinedOutput()
	os.WriteFile(strings.TrimSuffix(dest, ".txt")+"-cum.txt", out2, 0o644)
}

// explain runs EXPLAIN (ANALYZE, BUFFERS) of tenantvault's export query
// for every scoped table, at the default work_mem of 64MB and at 512MB.
func (b *bench) explain(ctx context.Context, dest string) error {
	cat, err := discover(ctx, b.liveURL)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, b.liveURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var w strings.Builder
	for _, wm := range []string{"64MB", "512MB"} {
		if _, err := conn.Exec(ctx, "SET work_mem = "+quote(wm)); err != nil {
			return err
		}
		for i := range cat {
			t := &cat[i]
			if t.Kind != manifest.TableScoped {
				continue
			}
			q := tenancy.ExportSQL(t, nil)
			q = strings.TrimSuffix(strings.TrimPrefix(q, "COPY ("), ") TO STDOUT")
			rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+q)
			if err != nil {
				return fmt.Errorf("explain %s: %w", t.Name, err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("explain %s: %w", t.Name, err)
			}
			fmt.Fprintf(&w, "-- %s, work_mem %s\n%s;\n%s\n\n", t.QualifiedName(), wm, q, strings.Join(lines, "\n"))
			for _, l := range lines {
				if ms, ok := strings.CutPrefix(strings.TrimSpace(l), "Execution Time: "); ok {
					var v float64
					fmt.Sscanf(ms, "%f", &v)
					b.value("explain_ms/"+wm+"/"+t.Name, v)
				}
			}
		}
	}
	return os.WriteFile(dest, []byte(w.String()), 0o644)
}

// incremental changes 1% of the tenants and snapshots again into every
// repository (each holds one full set), and takes pgBackRest differential
// backups (each against the last full one).
func (b *bench) incremental(ctx context.Context) error {
	pgbr := b.pgbr != nil && b.enabled(PartPgBackRest)
	if pgbr && !b.cfg.Smoke {
		// The restore parts rewrote much of the database since the full
		// backups: a fresh full backup is the base of the differential ones.
		s, err := b.pgbr.backup(ctx, "full")
		if err != nil {
			return err
		}
		b.add("incremental/pgbackrest full (base)", "pgbackrest backup --type=full just before the change: the base of the differential backups", s)
	}
	changed, err := datagen.Mutate(ctx, b.liveURL, 0.01, b.cfg.Seed)
	if err != nil {
		return err
	}
	b.log.printf("changed %d tenants", len(changed))
	b.value("incremental_changed_tenants", float64(len(changed)))
	if err := b.exec(ctx, b.liveURL, "CHECKPOINT"); err != nil {
		return err
	}
	for _, repo := range b.repos {
		before := dirSize(repo)
		s, err := b.tvSnapshot(ctx, repo, "tenantvault snapshot (incremental)", nil)
		if err != nil {
			return err
		}
		s.Bytes = dirSize(repo) - before
		b.add("incremental/tenantvault", "second tenantvault snapshot after 1% of tenants changed; bytes = repository growth", s)
	}
	if pgbr {
		for range b.cfg.Reps {
			s, err := b.pgbr.backup(ctx, "diff")
			if err != nil {
				return err
			}
			b.add("incremental/pgbackrest diff", "pgbackrest backup --type=diff after 1% of tenants changed; bytes = repository growth", s)
		}
	}
	return nil
}
