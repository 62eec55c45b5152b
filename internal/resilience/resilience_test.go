package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/faultnet"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// runs is how many faulty runs each scenario makes: a few in the normal
// test command (the whole suite stays within a few minutes), more for a
// soak: TENANTVAULT_SOAK=N multiplies them (see docs/SECURITY.md).
func runs(n int) int {
	if s, err := strconv.Atoi(os.Getenv("TENANTVAULT_SOAK")); err == nil && s > 1 {
		return n * s
	}
	return n
}

// world is one scenario's source database, expected tenant states,
// repository, keys and restore target.
type world struct {
	t       *testing.T
	name    string
	src     string
	target  string
	want    map[string]fixture.State
	repoURL string
	tempDir string // for packs while they fill; "" means a fresh one
	keys    keys
	rnd     *rand.Rand

	// counts, for the report
	snapshots, snapFail int
	restores, restFail  int
	faults              int
	violations          int
}

type keys struct{ reader, writer *vault.Keys }

func newKeys(t testing.TB) keys {
	id, sign, _, _, err := vault.NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := vault.ParseKeyFile(strings.NewReader(id))
	w, _ := vault.ParseKeyFile(strings.NewReader(sign))
	return keys{reader: r, writer: w}
}

// newWorld makes a fixture source, an encrypted or plaintext repository
// at repoURL with one good set, and a target database holding every
// tenant (restored from that set).
func newWorld(t *testing.T, name, repoURL string, encrypted bool) *world {
	t.Helper()
	w := &world{t: t, name: name, src: testenv.NewDatabase(t), repoURL: repoURL, rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))}
	if encrypted {
		w.keys = newKeys(t)
	}
	fixture.Create(t, w.src)
	ctx := testenv.Context(t, time.Minute)
	conn := testenv.Connect(t, w.src)
	w.want = map[string]fixture.State{}
	for _, id := range fixture.Tenants {
		st, err := fixture.Read(ctx, conn, id)
		if err != nil {
			t.Fatal(err)
		}
		w.want[id] = st
	}
	b := w.open(repoURL, true)
	if _, err := w.snapshot(ctx, b, true); err != nil {
		t.Fatalf("first snapshot: %v", err)
	}
	b.Close()
	w.target = testenv.NewDatabase(t)
	if err := w.restore(ctx, w.open(repoURL, false), fixture.Tenants, true, restore.IfExistsFail); err != nil {
		t.Fatalf("first restore: %v", err)
	}
	return w
}

// open opens the repository at u with fast retries.
func (w *world) open(u string, create bool) repo.Backend {
	w.t.Helper()
	b, err := w.tryOpen(u, create)
	if err != nil {
		w.t.Fatalf("open %s: %v", u, err)
	}
	return b
}

func (w *world) tryOpen(u string, create bool) (repo.Backend, error) {
	b, err := repo.Open(testenv.Context(w.t, time.Minute), u, repo.Options{Create: create})
	if err != nil {
		return nil, err
	}
	return fastRetry(b), nil
}

func fastRetry(b repo.Backend) repo.Backend {
	return repo.Retry(b, repo.RetryOptions{Attempts: 4, Base: 5 * time.Millisecond, Max: 100 * time.Millisecond, Logger: quiet})
}

var quiet = slog.New(slog.DiscardHandler)

func (w *world) vault(ctx context.Context, b repo.Backend, keys *vault.Keys, init bool) (*vault.Vault, error) {
	return vault.Open(ctx, b, vault.Options{Init: init, Keys: keys, Logger: quiet})
}

// snapshot takes a set through b (the whole data when full, else only what
// changed).
func (w *world) snapshot(ctx context.Context, b repo.Backend, full bool) (*manifest.Manifest, error) {
	v, err := w.vault(ctx, b, w.keys.writer, true)
	if err != nil {
		return nil, err
	}
	temp := w.tempDir
	if temp == "" {
		temp = w.t.TempDir()
	}
	return snapshot.Run(ctx, snapshot.Options{Source: w.src, Vault: v, Full: full, TempDir: temp, PackSize: 8 << 10, Logger: quiet})
}

// restore restores tenants into the target from the newest complete set.
func (w *world) restore(ctx context.Context, b repo.Backend, tenants []string, createSchema bool, ifExists string) error {
	v, err := w.vault(ctx, b, w.keys.reader, false)
	if err != nil {
		return err
	}
	id, err := newestComplete(ctx, v)
	if err != nil {
		return err
	}
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: w.target, Tenants: tenants, CreateSchema: createSchema, IfExists: ifExists,
		Select: restore.Selector{SetID: id}, Logger: quiet, Snapshot: snapshot.Options{TempDir: w.t.TempDir(), Logger: quiet}})
	return err
}

func newestComplete(ctx context.Context, v *vault.Vault) (string, error) {
	ids, err := v.ListSets(ctx)
	if err != nil {
		return "", err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		x, err := v.ReadIndex(ctx, ids[i])
		if err != nil {
			return "", err
		}
		if !x.Partial {
			return ids[i], nil
		}
	}
	return "", errors.New("no complete set")
}

// violation records a broken invariant.
func (w *world) violation(format string, args ...any) {
	w.t.Helper()
	w.violations++
	w.t.Errorf("%s: INVARIANT VIOLATED: "+format, append([]any{w.name}, args...)...)
}

// checkSets: every listed set is complete and verifiable, every byte read
// back (decrypted and digested when encrypted).
func (w *world) checkSets(ctx context.Context) {
	w.t.Helper()
	b := w.open(w.repoURL, false)
	defer b.Close()
	v, err := w.vault(ctx, b, w.keys.reader, false)
	if err != nil {
		w.violation("repository cannot be opened: %v", err)
		return
	}
	res, err := v.Verify(ctx, nil, true, nil)
	if err != nil {
		w.violation("verify could not run: %v", err)
		return
	}
	for _, p := range res.Problems {
		w.violation("listed set not verifiable: %s", p)
	}
}

// checkTenants: each tenant is either absent from the target or equal to
// its snapshot, read back with plain SQL; never half restored.
func (w *world) checkTenants(ctx context.Context, tenants []string, mustExist bool) {
	w.t.Helper()
	conn, err := pgx.Connect(ctx, w.target)
	if err != nil {
		w.t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	for _, id := range tenants {
		got, err := fixture.Read(ctx, conn, id)
		if err != nil {
			w.violation("read tenant %q: %v", id, err)
			continue
		}
		if got.Rows() == 0 && !mustExist {
			continue
		}
		if d := fixture.Diff(w.want[id], got); d != "" {
			w.violation("tenant %q is neither absent nor equal to its snapshot:\n%s", id, d)
		}
	}
}

// dropTenants deletes tenants from the target, as a bad script would.
func (w *world) dropTenants(tenants []string) {
	w.t.Helper()
	for _, id := range tenants {
		lit := "'" + strings.ReplaceAll(id, "'", "''") + "'"
		testenv.Exec(w.t, w.target, fmt.Sprintf("DELETE FROM events WHERE tenant_id = %[1]s; DELETE FROM tenants WHERE id = %[1]s", lit))
	}
}

func (w *world) pick(n int) []string {
	ids := append([]string(nil), fixture.Tenants...)
	w.rnd.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ids[:n]
}

// faultyDeadline bounds each faulty snapshot and restore: a fault that
// hangs (a stalled server) fails the run instead of the test.
const faultyDeadline = 10 * time.Second

// cycle is one faulty run: a snapshot and a restore of two dropped tenants
// through the faulty backend, the invariants, then a clean snapshot and
// restore that must succeed.
func (w *world) cycle(faulty func() (repo.Backend, error), inject func(), clear func()) {
	w.t.Helper()
	start := time.Now()
	defer func() { w.t.Logf("%s: cycle took %s", w.name, time.Since(start).Round(time.Millisecond)) }()
	ctx := testenv.Context(w.t, 2*time.Minute)
	inject()
	w.snapshots++
	if fb, err := faulty(); err != nil {
		w.snapFail++ // opening the repository already failed
	} else {
		sctx, cancel := context.WithTimeout(ctx, faultyDeadline)
		if _, err := w.snapshot(sctx, fb, w.rnd.IntN(10) < 7); err != nil {
			w.snapFail++
		}
		cancel()
		fb.Close()
	}
	clear()
	w.checkSets(ctx)

	tenants := w.pick(2)
	w.dropTenants(tenants)
	inject()
	w.restores++
	if fb, err := faulty(); err != nil {
		w.restFail++
	} else {
		rctx, cancel := context.WithTimeout(ctx, faultyDeadline)
		if err := w.restore(rctx, fb, tenants, false, restore.IfExistsFail); err != nil {
			w.restFail++
		}
		cancel()
		fb.Close()
	}
	clear()
	w.checkTenants(ctx, tenants, false)

	// The next run succeeds.
	b := w.open(w.repoURL, false)
	defer b.Close()
	if _, err := w.snapshot(ctx, b, false); err != nil {
		w.violation("the snapshot after the faults failed: %v", err)
	}
	if err := w.restore(ctx, b, tenants, false, restore.IfExistsReplace); err != nil {
		w.violation("the restore after the faults failed: %v", err)
	}
	w.checkTenants(ctx, tenants, true)
	w.checkConnections(ctx)
}

// checkConnections: whatever failed, tenantvault left no session open on
// the source or the target (a leak would exhaust a production server's
// connections after enough failed runs). Backends take a moment to exit
// after their client closes.
func (w *world) checkConnections(ctx context.Context) {
	w.t.Helper()
	const q = `SELECT count(*) FROM pg_stat_activity WHERE datname IN ($1, $2) AND pid <> pg_backend_pid()`
	src, _ := tenancy.ParseURL(w.src)
	dst, _ := tenancy.ParseURL(w.target)
	conn, err := pgx.Connect(ctx, testenv.PostgresURL(w.t))
	if err != nil {
		w.t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var n int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(ctx, q, src.Database, dst.Database).Scan(&n); err != nil {
			w.t.Fatal(err)
		}
		// The world's own reader of the source stays open.
		if n <= 1 || time.Now().After(deadline) {
			break
		}
	}
	if n > 1 {
		w.violation("%d sessions are still open on the source and target databases after the runs", n)
	}
}

// prune marks every set but the newest keep and purges them, with no grace
// and no minimum age for garbage.
func (w *world) prune(ctx context.Context, keep int) {
	w.t.Helper()
	b := w.open(w.repoURL, false)
	defer b.Close()
	v, err := w.vault(ctx, b, w.keys.reader, false)
	if err != nil {
		w.t.Fatal(err)
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	for i := 0; i < len(ids)-keep; i++ {
		if _, err := v.MarkSet(ctx, ids[i], "test", "test", 0); err != nil {
			w.t.Fatal(err)
		}
	}
	if _, err := v.Purge(ctx, vault.PurgeOptions{GC: vault.GCOptions{MinAge: -1}}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) report(what string) {
	w.checkSets(testenv.Context(w.t, time.Minute))
	testenv.Report(w.t, "faults %s: %d runs, %d faults injected, %d of %d snapshots failed, %d of %d restores failed, %d invariant violations",
		what, w.snapshots, w.faults, w.snapFail, w.snapshots, w.restFail, w.restores, w.violations)
}

// TestFaults is the fault-injection suite against the real PostgreSQL and
// MinIO. Each scenario runs a few cycles of a snapshot and a restore under
// faults; after each: every listed set verifies with every byte read
// back, every tenant is absent or exactly its snapshot, and the next
// (fault-free) snapshot and restore succeed. The counts are logged.
func TestFaults(t *testing.T) {
	t.Run("s3 connection resets", testS3Resets)
	t.Run("s3 errors and timeouts", testS3Errors)
	t.Run("postgres terminated", testPostgresTerminated)
	t.Run("full disk", testFullDisk)
}

// testS3Resets sends the repository's traffic through a TCP proxy that
// resets connections at random points of requests (uploads) and responses
// (downloads), and stalls some responses.
func testS3Resets(t *testing.T) {
	t.Parallel()
	ep, err := url.Parse(testenv.S3Endpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultnet.Listen(ep.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	bucket := testenv.NewBucket(t)
	direct := testenv.S3RepoURL(t, bucket, "repo")
	viaProxy := strings.Replace(direct, url.QueryEscape(ep.String()), url.QueryEscape("http://"+proxy.Addr()), 1)
	w := newWorld(t, "s3-resets", direct, true)
	var mu sync.Mutex // guards rate and prnd, used by the proxy's goroutine
	rate := 0.0
	prnd := rand.New(rand.NewPCG(w.rnd.Uint64(), 2))
	proxy.SetPlan(func(n int) faultnet.Plan {
		mu.Lock()
		defer mu.Unlock()
		var p faultnet.Plan
		switch r := prnd.Float64(); {
		case r < rate/2:
			p.CutUp = 1 + prnd.Int64N(24<<10)
		case r < rate:
			p.CutDown = 1 + prnd.Int64N(24<<10)
		case r < rate*1.3:
			p.Stall = time.Duration(prnd.IntN(300)) * time.Millisecond
		}
		return p
	})
	// Besides the cuts planned per connection, reset every open
	// connection at random moments: keep-alive connections carry many
	// requests, and this cuts them wherever they are.
	var stopChaos func()
	chaos := func(every time.Duration) func() {
		done, finished := make(chan struct{}), make(chan struct{})
		seed := w.rnd.Uint64()
		go func() {
			defer close(finished)
			r := rand.New(rand.NewPCG(seed, 1))
			for {
				select {
				case <-done:
					return
				case <-time.After(time.Duration(r.Int64N(int64(every)))):
					proxy.ResetAll()
				}
			}
		}()
		return func() { close(done); <-finished }
	}
	for i := range runs(6) {
		w.cycle(func() (repo.Backend, error) { return w.tryOpen(viaProxy, false) },
			func() {
				mu.Lock()
				// Light, heavy, and so heavy that retries run out.
				rate = []float64{0.2, 0.6, 1}[i%3]
				mu.Unlock()
				stopChaos = chaos([]time.Duration{2 * time.Second, 400 * time.Millisecond, 20 * time.Millisecond}[i%3])
			},
			func() {
				stopChaos()
				mu.Lock()
				rate = 0
				mu.Unlock()
			})
	}
	accepted, cuts, stalls := proxy.Counts()
	w.faults = int(cuts + stalls)
	testenv.Report(t, "proxy: %d connections, %d reset, %d stalled", accepted, cuts, stalls)
	w.report("s3 connection resets")
}

// testS3Errors wraps MinIO in repo.Faulty: transient errors (500s,
// refused connections) and permanent ones on random calls, reads cut
// mid-stream, and delays past the run's deadline.
func testS3Errors(t *testing.T) {
	t.Parallel()
	repoURL := testenv.NewS3Repo(t)
	w := newWorld(t, "s3-errors", repoURL, false)
	var f *repo.Faulty
	for i := range runs(6) {
		w.cycle(func() (repo.Backend, error) {
			b, err := repo.Open(testenv.Context(t, time.Minute), repoURL, repo.Options{})
			if err != nil {
				t.Fatal(err)
			}
			f = repo.NewFaulty(b)
			inject(w, f, i)
			return fastRetry(f), nil
		}, func() {}, func() {})
	}
	w.report("s3 errors and timeouts")
}

// inject arms a few random faults on f.
func inject(w *world, f *repo.Faulty, i int) {
	ops := []repo.Op{repo.OpPut, repo.OpGet, repo.OpStat, repo.OpList}
	for range 1 + w.rnd.IntN(4) {
		ft := repo.Fault{Op: ops[w.rnd.IntN(len(ops))], After: w.rnd.IntN(12), Times: 1 + w.rnd.IntN(6)}
		switch w.rnd.IntN(6) {
		case 0, 1:
			ft.Err = fmt.Errorf("503 Service Unavailable (%w)", repo.ErrInjected)
		case 2:
			ft.Err = repo.Permanent(fmt.Errorf("403 Access Denied (%w)", repo.ErrInjected))
		case 3:
			ft.Op, ft.Read = repo.OpGet, repo.FailReadAfter(w.rnd.Int64N(4096))
		case 5:
			// The upload reaches the storage, its answer does not.
			ft.Op, ft.Lost = []repo.Op{repo.OpPut, repo.OpDelete}[w.rnd.IntN(2)], true
			ft.Err = fmt.Errorf("read: connection reset by peer (%w)", repo.ErrInjected)
		case 4:
			if i%3 == 2 {
				// Longer than the faulty run's deadline: it times out.
				ft.Delay = faultyDeadline + time.Second
			} else {
				ft.Delay = time.Duration(w.rnd.IntN(500)) * time.Millisecond
			}
		}
		f.Inject(ft)
		w.faults++
	}
}

// testPostgresTerminated kills tenantvault's PostgreSQL sessions with
// pg_terminate_backend at a random moment of the snapshot (on the source)
// and of the restore (on the target).
func testPostgresTerminated(t *testing.T) {
	t.Parallel()
	repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
	w := newWorld(t, "postgres-terminated", repoURL, true)
	admin := testenv.Connect(t, testenv.PostgresURL(t))
	var stop func()
	killer := func(db string) func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		name := strings.TrimPrefix(mustURL(t, db).Path, "/")
		// From the start to past the end of a typical run, so that some
		// runs are hit early, some late, and some not at all.
		delay := 20*time.Millisecond + time.Duration(w.rnd.IntN(1500))*time.Millisecond
		go func() {
			defer close(done)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			var n int
			err := admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND application_name LIKE 'tenantvault%' AND pid <> pg_backend_pid()`, name).Scan(&n)
			if err == nil {
				w.faults += n
			}
		}()
		return func() { cancel(); <-done }
	}
	for i := range runs(6) {
		_ = i
		phase := 0
		w.cycle(func() (repo.Backend, error) {
			return w.open(repoURL, false), nil
		}, func() {
			db := w.src
			if phase == 1 {
				db = w.target
			}
			phase++
			stop = killer(db)
		}, func() { stop() })
	}
	w.report("postgres terminated")
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// testFullDisk puts a file:// repository on a tiny tmpfs, partly filled
// so that snapshots run out of space at a random point (ENOSPC from a
// write, a sync or a rename), and the packs' temp directory on another
// one in some runs. Mounting needs root (CAP_SYS_ADMIN); without it the
// scenario falls back to repo.Faulty failing random Puts with ENOSPC.
func testFullDisk(t *testing.T) {
	t.Parallel()
	dir, tmp := t.TempDir(), t.TempDir()
	mounted := mountTmpfs(t, dir, "512k") && mountTmpfs(t, tmp, "256k")
	repoURL := "file://" + filepath.Join(dir, "repo")
	w := newWorld(t, "full-disk", repoURL, false)
	free := func(d string) int64 {
		var st syscall.Statfs_t
		syscall.Statfs(d, &st)
		return int64(st.Bavail) * st.Bsize
	}
	// fill leaves about room bytes free on the file system of d.
	fill := func(d string, room int64) {
		if n := free(d) - room; n > 0 {
			if err := exec.Command("fallocate", "-l", strconv.FormatInt(n, 10), filepath.Join(d, "filler")).Run(); err != nil {
				os.WriteFile(filepath.Join(d, "filler"), make([]byte, n), 0o600)
			}
		}
	}
	for i := range runs(6) {
		w.cycle(func() (repo.Backend, error) {
			b := w.open(repoURL, false)
			if mounted {
				return b, nil
			}
			f := repo.NewFaulty(b)
			f.Inject(repo.Fault{Op: repo.OpPut, After: w.rnd.IntN(8), Err: fmt.Errorf("write: %w (%w)", syscall.ENOSPC, repo.ErrInjected)})
			w.faults++
			return f, nil
		}, func() {
			if !mounted {
				return
			}
			if i%2 == 0 {
				// The repository's disk: between nothing and a set's
				// worth of space left.
				fill(dir, w.rnd.Int64N(48<<10))
			} else {
				// The disk that holds packs while they fill.
				w.tempDir = tmp
				fill(tmp, w.rnd.Int64N(16<<10))
			}
			w.faults++
		}, func() {
			os.Remove(filepath.Join(dir, "filler"))
			os.Remove(filepath.Join(tmp, "filler"))
			w.tempDir = ""
			// Keep the tiny disk from filling up with sets over a soak:
			// mark all but the newest sets and purge them at once.
			w.prune(testenv.Context(t, time.Minute), 2)
		})
	}
	how := "repository on a 512 KiB tmpfs, pack temp files on a 256 KiB one"
	if !mounted {
		how = "repo.Faulty ENOSPC (no permission to mount a tmpfs)"
	}
	testenv.Report(t, "full disk: %s", how)
	w.report("full disk")
}

// mountTmpfs mounts a tmpfs of the given size at dir, unmounting it when
// the test ends. It reports false when mounting is not permitted.
func mountTmpfs(t *testing.T, dir, size string) bool {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Logf("cannot mount a tmpfs (%v): simulating a full disk with injected ENOSPC", err)
		return false
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return true
}
