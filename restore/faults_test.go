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
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// world is a source with a set in which "acme" was then deleted.
type world struct {
	db     string
	set    *manifest.Manifest
	b      repo.Backend
	faulty *repo.Faulty
	v      *vault.Vault // reads through faulty
	want   fixture.State
}

func newWorld(t *testing.T, ctx context.Context) *world {
	t.Helper()
	w := &world{db: testenv.NewDatabase(t)}
	fixture.Create(t, w.db)
	v, b := openVault(t, ctx, "file://"+t.TempDir())
	set, err := snapshot.Run(ctx, snapshot.Options{Source: w.db, Vault: v})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if set, err = v.ReadManifest(ctx, set.ID); err != nil {
		t.Fatal(err)
	}
	w.set, w.b = set, b
	w.want = readAll(t, ctx, w.db, []string{"acme"})["acme"]
	testenv.Exec(t, w.db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	w.faulty = repo.NewFaulty(b)
	w.v, err = vault.Open(ctx, w.faulty, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// everything reads all tenants' rows and the global tables.
func everything(t *testing.T, ctx context.Context, db string) string {
	t.Helper()
	var b strings.Builder
	all := readAll(t, ctx, db, fixture.Tenants)
	for _, id := range fixture.Tenants {
		fmt.Fprintf(&b, "%s:%v\n", id, all[id])
	}
	var audit int64
	testenv.Connect(t, db).QueryRow(ctx, "SELECT count(*) FROM audit").Scan(&audit)
	fmt.Fprintf(&b, "audit:%d", audit)
	return b.String()
}

// chunkOf returns acme's chunk of a table and its pack key.
func (w *world) chunkOf(table string) (manifest.Chunk, string) {
	for _, c := range w.set.Tenant("acme").Chunks {
		if w.set.Tables[c.Table].Name == table {
			return c, w.set.Packs[c.Pack]
		}
	}
	panic("no chunk for " + table)
}

func TestRestoreFaults(t *testing.T) {
	cases := []struct {
		name      string
		setup     func(t *testing.T, ctx context.Context, w *world)
		integrity bool // the error must wrap ErrIntegrity (exit 3)
		want      string
	}{
		{"flipped byte", func(t *testing.T, ctx context.Context, w *world) {
			c, key := w.chunkOf("tasks")
			w.faulty.Inject(repo.Fault{Op: repo.OpGet, Match: func(k string) bool { return k == key }, Read: repo.FlipBit(c.Offset + c.Length/2)})
		}, true, "public.tasks"},
		{"missing object", func(t *testing.T, ctx context.Context, w *world) {
			_, key := w.chunkOf("users")
			if err := w.b.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}, true, "is missing"},
		{"truncated object", func(t *testing.T, ctx context.Context, w *world) {
			c, key := w.chunkOf("projects")
			w.faulty.Inject(repo.Fault{Op: repo.OpGet, Match: func(k string) bool { return k == key }, Read: repo.CutAfter(c.Length - 7)})
		}, true, "short"},
		{"repository unreachable mid-restore", func(t *testing.T, ctx context.Context, w *world) {
			w.faulty.Inject(repo.Fault{Op: repo.OpGet, After: 2, Err: errors.New("dial tcp: connection refused")})
		}, false, "connection refused"},
		{"connection killed mid-restore", func(t *testing.T, ctx context.Context, w *world) {
			_, key := w.chunkOf("tasks")
			w.faulty.Inject(repo.Fault{Op: repo.OpGet, Match: func(k string) bool { return k == key }, Delay: 3 * time.Second})
			go func() {
				time.Sleep(time.Second)
				testenv.Exec(t, w.db, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'tenantvault' AND pid <> pg_backend_pid()`)
			}()
		}, false, "acme"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := testenv.Context(t, 2*time.Minute)
			w := newWorld(t, ctx)
			before := everything(t, ctx, w.db)
			c.setup(t, ctx, w)
			_, err := restore.Run(ctx, restore.Options{Vault: w.v, Target: w.db, Tenants: []string{"acme", "globex-deleted-later"}[:1]})
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if got := errors.Is(err, tenantvault.ErrIntegrity); got != c.integrity {
				t.Fatalf("integrity = %v, want %v: %v", got, c.integrity, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if after := everything(t, ctx, w.db); after != before {
				t.Fatal("the failed restore changed the target")
			}
			// Once the fault is gone the same restore succeeds.
			w.faulty.Clear()
			if c.name == "missing object" {
				return
			}
			if _, err := restore.Run(ctx, restore.Options{Vault: w.v, Target: w.db, Tenants: []string{"acme"}}); err != nil {
				t.Fatal(err)
			}
			if d := fixture.Diff(w.want, readAll(t, ctx, w.db, []string{"acme"})["acme"]); d != "" {
				t.Fatal(d)
			}
		})
	}
}

func TestRestoreRefusals(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	w := newWorld(t, ctx)
	before := everything(t, ctx, w.db)
	cases := []struct {
		name string
		o    restore.Options
		want string
	}{
		{"unknown tenants", restore.Options{Tenants: []string{"acme", "nobody", "a/../c"}}, `2 unknown tenant(s) in any snapshot set of file://`},
		{"unknown in set", restore.Options{Tenants: []string{"nobody"}, Select: restore.Selector{SetID: w.set.ID}}, `1 unknown tenant(s) in snapshot set ` + w.set.ID + `: "nobody"`},
		{"no such set", restore.Options{Tenants: []string{"acme"}, Select: restore.Selector{SetID: "20200101T000000.000Z-00000000"}}, `no snapshot set 20200101T000000.000Z-00000000`},
		{"exists without replace", restore.Options{Tenants: []string{"acme", "globex"}}, `1 tenant(s) already have rows in the target:` + "\n" + `  "globex": public.events (9)`},
		{"at before the first set", restore.Options{Tenants: []string{"acme"}, Select: restore.Selector{At: w.set.ConsistentAt.Add(-time.Hour)}}, `is before the oldest snapshot set (` + w.set.ID},
		{"bad if-exists", restore.Options{Tenants: []string{"acme"}, IfExists: "merge"}, `--if-exists "merge": use fail or replace`},
		{"schema in target missing", restore.Options{Tenants: []string{"acme"}, CreateSchema: true}, `--create-schema needs an empty target database`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.Vault, c.o.Target = w.v, w.db
			_, err := restore.Run(ctx, c.o)
			var ie *tenantvault.InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want input error with %q", err, c.want)
			}
		})
	}
	t.Run("schema mismatch", func(t *testing.T) {
		testenv.Exec(t, w.db, `ALTER TABLE projects DROP COLUMN budget; ALTER TABLE users ALTER COLUMN age TYPE bigint;
ALTER TABLE task_notes ADD COLUMN must text NOT NULL DEFAULT 'x'; ALTER TABLE task_notes ALTER COLUMN must DROP DEFAULT`)
		before = everything(t, ctx, w.db)
		_, err := restore.Run(ctx, restore.Options{Vault: w.v, Target: w.db, Tenants: []string{"acme"}})
		var sm *restore.SchemaMismatchError
		if !errors.As(err, &sm) {
			t.Fatalf("err = %v", err)
		}
		want := []string{
			"public.projects.budget: missing in the target (snapshot has numeric)",
			"public.task_notes.must: NOT NULL without a default in the target, absent from the snapshot",
			"public.users.age: type is bigint in the target, public.posint in the snapshot",
		}
		for _, p := range want {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("mismatch report lacks %q:\n%v", p, err)
			}
		}
	})
	if after := everything(t, ctx, w.db); after != before {
		t.Fatal("a refused restore changed the target")
	}
}

// TestForeignKeysChecked restores a tenant whose rows reference a global
// row that no longer exists in the target: with foreign-key triggers
// suppressed, restore's own check must refuse it.
func TestForeignKeysChecked(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	testenv.Exec(t, db, `INSERT INTO countries VALUES ('XX', 'Nowhere'); UPDATE tenants SET country = 'XX' WHERE id = 'acme'`)
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v}); err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'; DELETE FROM countries WHERE code = 'XX'`)
	before := everything(t, ctx, db)
	_, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"acme"}})
	if err == nil || !strings.Contains(err.Error(), "foreign key tenants_country_fkey on public.tenants would break: 1 row(s) reference missing rows of public.countries") {
		t.Fatalf("err = %v", err)
	}
	if errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatal("a broken reference is not damaged data")
	}
	if after := everything(t, ctx, db); after != before {
		t.Fatal("the refused restore changed the target")
	}
}

// TestPlanCountsExisting: the plan's count of each tenant's rows already in
// the target is exact in every table, whether the table has the tenant
// column or reaches it through foreign keys, and whether the tenant is
// absent (acme), present, or has rows only in some tables: counting skips
// the joins for tenants with no rows at the end of a table's path, and
// probes indexes before counting, and must not lose a row by it.
func TestPlanCountsExisting(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	w := newWorld(t, ctx)
	rep, err := restore.Run(ctx, restore.Options{Vault: w.v, Target: w.db, Tenants: fixture.Tenants, IfExists: restore.IfExistsReplace, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	conn := testenv.Connect(t, w.db)
	checked := 0
	for _, it := range rep.Plan.Items {
		for ti := range it.Set.Tables {
			tb := &it.Set.Tables[ti]
			if tb.Kind != manifest.TableScoped || tb.Owner != "" {
				continue
			}
			var n int64
			if err := conn.QueryRow(ctx, tenancy.CountSQL(tb), it.Tenant).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if got := it.Existing[tb.QualifiedName()]; got != n {
				t.Errorf("tenant %q, %s: the plan counts %d existing rows, the target has %d", it.Tenant, tb.QualifiedName(), got, n)
			}
			if n > 0 && tb.Scope != nil && len(tb.Scope.Hops) > 0 {
				checked++
			}
		}
		if it.Tenant == "acme" && it.ExistingRows() != 0 {
			t.Errorf("acme was deleted, the plan counts %v", it.Existing)
		}
	}
	if checked == 0 {
		t.Fatal("no table reached through foreign keys had rows: the test proves nothing")
	}
}
