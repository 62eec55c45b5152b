package restore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/vault"
)

func openVault(t testing.TB, ctx context.Context, url string) (*vault.Vault, repo.Backend) {
	t.Helper()
	b, err := repo.Open(ctx, url, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	return v, b
}

func readAll(t *testing.T, ctx context.Context, db string, tenants []string) map[string]fixture.State {
	t.Helper()
	conn := testenv.Connect(t, db)
	out := map[string]fixture.State{}
	for _, id := range tenants {
		st, err := fixture.Read(ctx, conn, id)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = st
	}
	return out
}

func count(t *testing.T, ctx context.Context, db, sql string) int64 {
	t.Helper()
	var n int64
	if err := testenv.Connect(t, db).QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIncidentReplay replays the incident: a maintenance script deletes
// several tenants and corrupts another while the rest keep working; restore
// puts them back into the live database.
func TestIncidentReplay(t *testing.T) {
	for _, backend := range []string{"file", "s3"} {
		t.Run(backend, func(t *testing.T) {
			repoURL := "file://" + t.TempDir()
			if backend == "s3" {
				repoURL = testenv.NewS3Repo(t)
			}
			incidentReplay(t, repoURL)
		})
	}
}

func incidentReplay(t *testing.T, repoURL string) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	v, _ := openVault(t, ctx, repoURL)
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v})
	if err != nil {
		t.Fatal(err)
	}
	before := readAll(t, ctx, db, fixture.Tenants)
	auditBefore := count(t, ctx, db, "SELECT count(*) FROM audit")

	deleted := []string{"acme", "o'brien & co", "a/../b", "tab\there"}
	corrupted := "Ünïcödé GmbH"
	untouched := []string{"empty-ish"}
	live := []string{"globex", "big"}

	// The maintenance script, run in the wrong mode with the wrong IDs.
	testenv.Exec(t, db, `
DELETE FROM events WHERE tenant_id IN ('acme', 'o''brien & co', 'a/../b', E'tab\there');
DELETE FROM tenants WHERE id IN ('acme', 'o''brien & co', 'a/../b', E'tab\there');
UPDATE users SET email = 'corrupted@example' WHERE tenant_id = 'Ünïcödé GmbH';
DELETE FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE tenant_id = 'Ünïcödé GmbH') AND parent_id IS NOT NULL;`)

	w := fixture.StartWriter(t, db, live, 2)
	time.Sleep(50 * time.Millisecond)

	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: deleted, Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tenants) != len(deleted) || rep.PreRestoreSet != "" {
		t.Fatalf("report: %+v", rep)
	}
	for _, tr := range rep.Tenants {
		if !tr.Verified || tr.Set != set.ID {
			t.Fatalf("tenant %q: %+v", tr.Tenant, tr)
		}
	}
	// The corrupted tenant needs --if-exists replace.
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{corrupted}})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), `"Ünïcödé GmbH": public.events (9), public.projects (6), public.task_notes (13)`) {
		t.Fatalf("restore over existing rows: %v", err)
	}
	rep, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{corrupted}, IfExists: restore.IfExistsReplace})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PreRestoreSet == "" || rep.Tenants[0].Deleted == 0 {
		t.Fatalf("replace report: %+v", rep)
	}
	w.Stop()
	if err, _ := w.Err.Load().(error); err != nil {
		t.Fatalf("live writers failed during the restore: %v", err)
	}
	if w.Commits.Load() == 0 {
		t.Fatal("writers made no commits")
	}

	after := readAll(t, ctx, db, fixture.Tenants)
	for _, id := range append(append(deleted, corrupted), untouched...) {
		if d := fixture.Diff(before[id], after[id]); d != "" {
			t.Errorf("tenant %q differs from its snapshot:\n%s", id, d)
		}
	}
	for _, id := range live {
		for _, table := range []string{"tenants", "users", "events"} {
			if d := fixture.Diff(fixture.State{table: before[id][table]}, fixture.State{table: after[id][table]}); d != "" {
				t.Errorf("live tenant %q changed: %s", id, d)
			}
		}
	}
	// No trigger fired on restored rows.
	if got := count(t, ctx, db, "SELECT count(*) FROM audit WHERE what NOT LIKE 'task %' OR what IS NULL"); got != 0 {
		t.Fatalf("unexpected audit rows: %d", got)
	}
	auditAfter := count(t, ctx, db, "SELECT count(*) FROM audit")
	if auditAfter-auditBefore != w.Commits.Load() {
		t.Errorf("audit grew by %d, writers committed %d: restore fired triggers", auditAfter-auditBefore, w.Commits.Load())
	}
	// Sequences moved forward: new rows get fresh IDs.
	testenv.Exec(t, db, `INSERT INTO users (tenant_id, email) VALUES ('acme', 'new@acme.example');
INSERT INTO projects (tenant_id, name) VALUES ('acme', 'new');`)

	// The pre-restore set holds the corrupted state, and is never picked by
	// default.
	pre, err := v.ReadManifest(ctx, rep.PreRestoreSet)
	if err != nil {
		t.Fatal(err)
	}
	if pre.Kind != manifest.KindPreRestore || pre.Tenant(corrupted) == nil || len(pre.Tenants) != 1 {
		t.Fatalf("pre-restore set: kind %s, tenants %v", pre.Kind, pre.Tenants)
	}
}

// TestCreateSchema restores into an empty database.
func TestCreateSchema(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: src, Vault: v}); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, ctx, src, fixture.Tenants)
	dst := testenv.NewDatabase(t)
	ids := []string{"acme", "big", "o'brien & co"}
	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: ids, CreateSchema: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Plan.CreateSchema {
		t.Fatal("plan should create the schema")
	}
	got := readAll(t, ctx, dst, fixture.Tenants)
	for _, id := range fixture.Tenants {
		w := want[id]
		restored := false
		for _, r := range ids {
			restored = restored || r == id
		}
		if !restored {
			w = fixture.State{}
		}
		if d := fixture.Diff(w, got[id]); d != "" {
			t.Errorf("tenant %q:\n%s", id, d)
		}
	}
	for name, sql := range fixture.GlobalTables {
		var a, b string
		testenv.Connect(t, src).QueryRow(ctx, "SELECT string_agg(x, '|') FROM ("+sql+") s(x)").Scan(&a)
		testenv.Connect(t, dst).QueryRow(ctx, "SELECT string_agg(x, '|') FROM ("+sql+") s(x)").Scan(&b)
		if a != b || a == "" {
			t.Errorf("global table %s: %q vs %q", name, a, b)
		}
	}
	// New rows can be inserted: sequences are past the restored IDs.
	testenv.Exec(t, dst, `INSERT INTO users (tenant_id, email) VALUES ('acme', 'new@acme.example');
INSERT INTO projects (tenant_id, name) VALUES ('big', 'new');
INSERT INTO tasks (project_id, title) SELECT min(id), 'new' FROM projects;`)
	// A second --create-schema into the now non-empty target is refused.
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: []string{"globex"}, CreateSchema: true})
	if err == nil || !strings.Contains(err.Error(), "--create-schema needs an empty target database") {
		t.Fatalf("err = %v", err)
	}
}

func TestShard(t *testing.T) {
	for _, bad := range []string{"1", "2/2", "-1/3", "a/b", "0/0", "01/3"} {
		if _, err := restore.ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
	const n = 4
	seen := map[string]int{}
	counts := make([]int, n)
	for i := range 2000 {
		id := fmt.Sprintf("tenant-%d", i)
		for s := range n {
			sh, err := restore.ParseShard(fmt.Sprintf("%d/%d", s, n))
			if err != nil {
				t.Fatal(err)
			}
			if sh.Has(id) {
				seen[id]++
				counts[s]++
			}
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s is in %d shards", id, c)
		}
	}
	if len(seen) != 2000 {
		t.Fatalf("%d of 2000 tenants in some shard", len(seen))
	}
	for s, c := range counts {
		if c < 400 || c > 600 {
			t.Errorf("shard %d has %d of 2000 tenants", s, c)
		}
	}
}
