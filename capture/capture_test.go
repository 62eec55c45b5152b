package capture_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// A child process runs a capture that the test kills with SIGKILL.
func TestMain(m *testing.M) {
	if os.Getenv("TV_CAPTURE_CHILD") == "1" {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		v := mustVault(ctx, os.Getenv("TV_REPO"))
		err := capture.Run(ctx, capture.Options{Source: os.Getenv("TV_SOURCE"), Vault: v, SetReplicaIdentity: true, FlushInterval: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
		fmt.Fprintln(os.Stderr, "capture ended:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func mustVault(ctx context.Context, url string) *vault.Vault {
	b, err := repo.Open(ctx, url, repo.Options{Create: true})
	if err != nil {
		panic(err)
	}
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		panic(err)
	}
	return v
}

const schema = `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE orders (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE, n bigint NOT NULL, note text);
CREATE TABLE lines (order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE, n bigint NOT NULL, PRIMARY KEY (order_id, n));
INSERT INTO tenants VALUES ('a'), ('b'), ('c');`

// writer commits numbered orders (each with a line, in one transaction)
// until stopped, and returns the numbers that committed.
func writer(t testing.TB, db string, stop <-chan struct{}) func() []int64 {
	conn := testenv.Connect(t, db)
	var mu sync.Mutex
	var done []int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx := context.Background()
		for n := int64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			tenant := []string{"a", "b", "c"}[n%3]
			_, err := conn.Exec(ctx, `WITH o AS (INSERT INTO orders (tenant_id, n, note) VALUES ($1, $2, repeat('x', 100)) RETURNING id)
INSERT INTO lines SELECT id, $2 FROM o`, tenant, n)
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			mu.Lock()
			done = append(done, n)
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() []int64 {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return append([]int64(nil), done...)
	}
}

// archived reads every order insert in the stream's log: the number of
// each, per tenant, and how often it appears.
func archived(t *testing.T, ctx context.Context, v *vault.Vault, db string) map[int64]int {
	t.Helper()
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	cfg, _ := tenancy.ParseURL(db)
	refs, err := v.ListSegments(ctx, vault.StreamName(sys, cfg.Database))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]int{}
	var prevEnd uint64
	for i, ref := range refs {
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && idx.Start != prevEnd {
			t.Fatalf("gap or overlap in the change log: segment starts at %s, the previous ended at %s", vault.LSNString(idx.Start), vault.LSNString(prevEnd))
		}
		prevEnd = idx.End
		rels := map[uint32]vault.Relation{}
		for _, r := range idx.Relations {
			rels[r.OID] = r
		}
		for _, tenant := range []string{"a", "b", "c"} {
			changes, err := v.ReadChanges(ctx, idx, tenant)
			if err != nil {
				t.Fatal(err)
			}
			for _, ch := range changes {
				if ch.Shared || ch.Op != vault.OpInsert || rels[ch.Rel].Name != "orders" {
					continue
				}
				n, _ := strconv.ParseInt(string(ch.New[2].Data), 10, 64)
				if string(ch.New[1].Data) != tenant {
					t.Fatalf("order %d of tenant %s archived for tenant %s", n, ch.New[1].Data, tenant)
				}
				seen[n]++
			}
		}
	}
	return seen
}

func checkExactlyOnce(t *testing.T, committed []int64, seen map[int64]int) {
	t.Helper()
	for _, n := range committed {
		if seen[n] != 1 {
			t.Fatalf("order %d was archived %d times", n, seen[n])
		}
	}
	if len(seen) != len(committed) {
		t.Fatalf("%d orders archived, %d committed", len(seen), len(committed))
	}
}

// waitSlot waits until the capture's slot is consistent, which its first
// (empty) segment records: changes count from there on. A slot is listed
// before it is consistent, and a fixed sleep was too short on a busy server.
func waitSlot(t *testing.T, ctx context.Context, v *vault.Vault, db string) {
	t.Helper()
	cfg, _ := tenancy.ParseURL(db)
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	for {
		refs, err := v.ListSegments(ctx, vault.StreamName(sys, cfg.Database))
		if err == nil && len(refs) > 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the capture never started its change log")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitUntil waits for the log to reach the source's clock.
func waitUntil(t *testing.T, ctx context.Context, v *vault.Vault, db string) {
	t.Helper()
	var now time.Time
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT clock_timestamp(), system_identifier::text FROM pg_control_system()").Scan(&now, &sys)
	cfg, _ := tenancy.ParseURL(db)
	for ctx.Err() == nil {
		_, until, err := v.ArchivedUntil(ctx, vault.StreamName(sys, cfg.Database))
		if err == nil && !until.Before(now) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the change log did not catch up")
}

// TestKilledCaptureLosesNothing kills a capture with SIGKILL twice while a
// writer commits, restarts it, and checks every committed change is in the
// log exactly once, with no gap between segments.
func TestKilledCaptureLosesNothing(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, schema+`ALTER TABLE lines REPLICA IDENTITY FULL;`)
	repoURL := "file://" + t.TempDir()
	v := mustVault(ctx, repoURL)
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })

	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "TV_CAPTURE_CHILD=1", "TV_SOURCE="+db, "TV_REPO="+repoURL)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	child := start()
	waitSlot(t, ctx, v, db)
	stop := make(chan struct{})
	committed := writer(t, db, stop)
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		child.Process.Signal(syscall.SIGKILL)
		child.Wait()
		time.Sleep(300 * time.Millisecond)
		child = start()
	}
	time.Sleep(700 * time.Millisecond)
	close(stop)
	got := committed()
	waitUntil(t, ctx, v, db)
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	seen := archived(t, ctx, v, db)
	checkExactlyOnce(t, got, seen)
	t.Logf("%d changes committed across 2 kills, each archived exactly once", len(got))
}

// TestRepositoryOutage makes the repository unreachable while changes are
// committed; the capture stops with an error, is restarted, and the log
// still holds every change exactly once.
func TestRepositoryOutage(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, schema+`ALTER TABLE lines REPLICA IDENTITY FULL;`)
	b, err := repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	faulty := repo.NewFaulty(b)
	v, err := vault.Open(ctx, faulty, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var runs, failures int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for cctx.Err() == nil {
			runs++
			err := capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, FlushInterval: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
			if err != nil {
				failures++
				time.Sleep(200 * time.Millisecond) // the agent backs off likewise
			}
		}
	}()
	waitSlot(t, ctx, v, db)
	stop := make(chan struct{})
	committed := writer(t, db, stop)
	time.Sleep(500 * time.Millisecond)
	faulty.SetUnreachable(true)
	time.Sleep(2 * time.Second)
	faulty.SetUnreachable(false)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	got := committed()
	waitUntil(t, ctx, v, db)
	cancel()
	wg.Wait()
	checkExactlyOnce(t, got, archived(t, ctx, v, db))
	if failures == 0 {
		t.Fatal("the outage did not reach the capture")
	}
	t.Logf("%d changes committed; outage made %d of %d capture runs fail; each change archived exactly once", len(got), failures, runs)
}

// TestCorruptedSegment damages a segment: reading it fails with an
// integrity error.
func TestCorruptedSegment(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, schema+`ALTER TABLE lines REPLICA IDENTITY FULL;`)
	dir := t.TempDir()
	v := mustVault(ctx, "file://"+dir)
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, FlushInterval: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	}()
	waitSlot(t, ctx, v, db)
	cfg, _ := tenancy.ParseURL(db)
	testenv.Exec(t, db, `INSERT INTO orders (tenant_id, n) VALUES ('a', 1), ('b', 2)`)
	waitUntil(t, ctx, v, db)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	refs, _ := v.ListSegments(ctx, vault.StreamName(sys, cfg.Database))
	var idx *vault.SegmentIndex
	for _, ref := range refs {
		i, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if i.Records > 0 {
			idx = i
		}
	}
	if idx == nil {
		t.Fatal("no segment with records")
	}
	path := dir + "/" + idx.Key()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var failed int
	for _, tenant := range []string{"a", "b"} {
		_, err := v.ReadChanges(ctx, idx, tenant)
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("err = %v", err)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("a damaged segment read back without error")
	}
}

// TestPublicationMustCoverTenantTables: an existing publication that
// leaves out a tenant table would make the log silently miss its changes;
// the capture refuses it and names the tables.
func TestPublicationMustCoverTenantTables(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, schema+`CREATE PUBLICATION tenantvault FOR TABLE tenants, orders`)
	v := mustVault(ctx, "file://"+t.TempDir())
	err := capture.Run(ctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "publication tenantvault leaves out tenant table(s) public.lines") || !strings.Contains(ie.Hint, "ADD TABLE") {
		t.Fatalf("capture with a partial publication: %v", err)
	}
	var slots int
	testenv.Connect(t, db).QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").Scan(&slots)
	if slots != 0 {
		t.Fatalf("a refused capture left %d replication slot(s)", slots)
	}
}

// TestPartitionAttachedLater: a partition created or attached while the
// capture runs keeps the default replica identity (PostgreSQL does not
// pass the root's on), so its deletes log only its key while the root's
// FULL identity promises whole old rows: the server sends the tenant
// column as NULL. Taken for a row of no tenant, the delete would vanish
// (and where the column may be NULL, no change could tell). The capture
// stops instead, on the change or before archiving anything once such a
// partition exists, names the partition and says how to go on, and does
// not archive the transaction.
func TestPartitionAttachedLater(t *testing.T) {
	for _, c := range []struct{ name, sql string }{
		{"delete", `INSERT INTO events (tenant_id, day) VALUES ('b', '2026-02-02'), ('b', '2026-02-03');
UPDATE events SET tenant_id = 'a' WHERE day = '2026-01-02';
DELETE FROM events WHERE day = '2026-02-03'`},
		{"inserts only", `INSERT INTO events (tenant_id, day) VALUES ('b', '2026-02-02'), ('b', '2026-01-03')`},
	} {
		t.Run(c.name, func(t *testing.T) { partitionAttachedLater(t, c.sql) })
	}
}

func partitionAttachedLater(t *testing.T, writes string) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE events (id bigserial, tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE, day date NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE events_jan PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
INSERT INTO tenants VALUES ('a'), ('b');
INSERT INTO events (tenant_id, day) VALUES ('a', '2026-01-02')`)
	v := mustVault(ctx, "file://"+t.TempDir())
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, FlushInterval: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	}()
	waitSlot(t, ctx, v, db)
	// The root and the partition that existed were widened.
	var idents string
	if err := testenv.Connect(t, db).QueryRow(ctx, `SELECT string_agg(relname::text || '=' || relreplident::text, ' ' ORDER BY relname) FROM pg_class WHERE relname IN ('events', 'events_jan')`).Scan(&idents); err != nil {
		t.Fatal(err)
	}
	if idents != "events=f events_jan=f" {
		t.Fatalf("replica identities: %s", idents)
	}
	testenv.Exec(t, db, `CREATE TABLE events_feb (LIKE events INCLUDING ALL);
ALTER TABLE events ATTACH PARTITION events_feb FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
`+writes)
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the capture went on archiving with a partition whose replica identity lacks the tenant column")
	}
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "partition(s) public.events_feb of public.events keep a narrower replica identity") ||
		!strings.Contains(ie.Hint, "ALTER TABLE public.events_feb REPLICA IDENTITY FULL") || !strings.Contains(ie.Hint, "--drop-slot") {
		t.Fatalf("capture after a partition was attached with the default identity: %v (hint %q)", err, hintOf(err))
	}
	// Nothing of the transaction was archived.
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	cfg, _ := tenancy.ParseURL(db)
	refs, err := v.ListSegments(ctx, vault.StreamName(sys, cfg.Database))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		for _, tenant := range []string{"a", "b"} {
			changes, err := v.ReadChanges(ctx, idx, tenant)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) > 0 {
				t.Fatalf("tenant %s: %d change(s) archived from the transaction written with the narrow partition attached", tenant, len(changes))
			}
		}
	}
}

func hintOf(err error) string {
	var ie *tenantvault.InputError
	if errors.As(err, &ie) {
		return ie.Hint
	}
	return ""
}
