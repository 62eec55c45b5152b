package drill_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/drill"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// world is the fixture snapshotted into a MinIO repository, read back
// through a fault injector.
type world struct {
	src     string
	set     *manifest.Manifest
	faulty  *repo.Faulty
	v       *vault.Vault
	scratch string
}

func newWorld(t *testing.T, ctx context.Context) *world {
	t.Helper()
	w := &world{src: testenv.NewDatabase(t), scratch: testenv.PostgresURL(t)}
	fixture.Create(t, w.src)
	b, err := repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	if w.set, err = snapshot.Run(ctx, snapshot.Options{Source: w.src, Vault: v}); err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if w.set, err = v.ReadManifest(ctx, w.set.ID); err != nil {
		t.Fatal(err)
	}
	w.faulty = repo.NewFaulty(b)
	if w.v, err = vault.Open(ctx, w.faulty, vault.Options{}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) options(o drill.Options) drill.Options {
	o.Repo, o.Scratch = w.v, w.scratch
	return o
}

// chunkOf returns a tenant's chunk of a table and its pack key.
func (w *world) chunkOf(t *testing.T, tenant, table string) (manifest.Chunk, string) {
	t.Helper()
	for _, c := range w.set.Tenant(tenant).Chunks {
		if w.set.Tables[c.Table].Name == table {
			return c, w.set.Packs[c.Pack]
		}
	}
	t.Fatalf("tenant %q has no chunk of %s", tenant, table)
	return manifest.Chunk{}, ""
}

// databaseExists looks for a database by name on the test cluster.
func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	var n int
	conn := testenv.Connect(t, testenv.PostgresURL(t))
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// dropLater drops a database the test asked the drill to keep.
func dropLater(t *testing.T, name string) {
	t.Cleanup(func() {
		testenv.Exec(t, testenv.PostgresURL(t), "DROP DATABASE IF EXISTS "+tenancy.Ident(name)+" WITH (FORCE)")
	})
}

func requireGone(t *testing.T, rep *drill.Report) {
	t.Helper()
	if rep.Database == "" || !strings.HasPrefix(rep.Database, drill.DatabasePrefix) {
		t.Fatalf("report names no drill database: %q", rep.Database)
	}
	if databaseExists(t, rep.Database) {
		t.Fatalf("scratch database %s is still there (cleanup: %s)", rep.Database, rep.Cleanup)
	}
	if rep.Cleanup != "dropped" {
		t.Fatalf("cleanup = %q, want dropped", rep.Cleanup)
	}
}

func junitOf(t *testing.T, rep *drill.Report) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := rep.WriteJUnit(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDrill(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	w := newWorld(t, ctx)

	t.Run("passes", func(t *testing.T) {
		var mu sync.Mutex
		var progress []string
		rep, err := drill.Run(ctx, w.options(drill.Options{Count: 3, Seed: 42, MaxRTO: 10 * time.Minute, Parallel: 2,
			Progress: func(tr drill.TenantResult) { mu.Lock(); progress = append(progress, tr.Tenant); mu.Unlock() }}))
		if err != nil {
			t.Fatal(err)
		}
		requireGone(t, rep)
		if !rep.Passed || len(rep.Tenants) != 3 || !rep.Sampled || rep.Seed != 42 || rep.Set != w.set.ID || rep.Model != tenancy.ModelColumn {
			t.Fatalf("report: %+v", rep)
		}
		var rows int64
		for _, tr := range rep.Tenants {
			mt := w.set.Tenant(tr.Tenant)
			if !tr.Passed || !tr.Verified || tr.Rows != mt.Rows || tr.Bytes != mt.Size || tr.Duration <= 0 || tr.Database != rep.Database {
				t.Errorf("tenant %q: %+v", tr.Tenant, tr)
			}
			rows += tr.Rows
		}
		if rep.Rows != rows || rep.RTO <= 0 || rep.RTOExceeded || rep.Duration < rep.RTO || len(progress) != 3 {
			t.Errorf("totals: rows %d (want %d), RTO %s, duration %s, progress %q", rep.Rows, rows, rep.RTO, rep.Duration, progress)
		}
		if len(rep.Checks) != 1 {
			t.Fatalf("checks: %+v", rep.Checks)
		}
		dc := rep.Checks[0]
		// The fixture has 9 foreign keys and 14 btree indexes; amcheck is
		// installed with PostgreSQL here.
		if dc.ForeignKeys < 8 || dc.Indexes < 10 || len(dc.Problems) > 0 || len(dc.Skipped) > 0 {
			t.Errorf("database checks: %+v", dc)
		}
		s := validateJUnit(t, junitOf(t, rep))
		if s.Totals.Tests != 5 || s.Totals.Passed != 5 {
			t.Errorf("JUnit totals: %+v", s.Totals)
		}
		var j drill.JSONReport
		var buf bytes.Buffer
		if err := rep.WriteJSON(&buf); err != nil || json.Unmarshal(buf.Bytes(), &j) != nil {
			t.Fatal(err)
		}
		if !j.Passed || j.RTO != "ok" || len(j.Tenants) != 3 || j.Database != rep.Database || j.Seed != 42 {
			t.Errorf("JSON report: %s", buf.Bytes())
		}

		// The same seed over the same set picks the same tenants.
		again, err := drill.Run(ctx, w.options(drill.Options{Count: 3, Seed: 42, SetID: w.set.ID}))
		if err != nil {
			t.Fatal(err)
		}
		requireGone(t, again)
		for i := range rep.Tenants {
			if again.Tenants[i].Tenant != rep.Tenants[i].Tenant {
				t.Fatalf("seed 42 picked %q, then %q", rep.Tenants[i].Tenant, again.Tenants[i].Tenant)
			}
		}
	})

	t.Run("keep leaves the restored tenants", func(t *testing.T) {
		tenants := []string{"o'brien & co", "tab\there", "big"}
		rep, err := drill.Run(ctx, w.options(drill.Options{Tenants: tenants, Keep: true}))
		if err != nil {
			t.Fatal(err)
		}
		dropLater(t, rep.Database)
		if !rep.Passed || !rep.Kept || rep.Cleanup != "kept" || rep.Sampled || !databaseExists(t, rep.Database) {
			t.Fatalf("report: %+v", rep)
		}
		// Read back with plain SQL, independently of tenantvault.
		kept := testenv.Connect(t, testenv.DatabaseURL(t, rep.Database))
		src := testenv.Connect(t, w.src)
		for _, id := range tenants {
			want, err := fixture.Read(ctx, src, id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := fixture.Read(ctx, kept, id)
			if err != nil {
				t.Fatal(err)
			}
			if d := fixture.Diff(want, got); d != "" {
				t.Errorf("tenant %q in the kept database:\n%s", id, d)
			}
		}
		// The checks left nothing of theirs behind.
		var n int
		if err := kept.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenantvault_drill_check'").Scan(&n); err != nil || n != 0 {
			t.Errorf("check schema left in the kept database: %d, %v", n, err)
		}
	})

	t.Run("RTO budget exceeded fails that case alone", func(t *testing.T) {
		rep, err := drill.Run(ctx, w.options(drill.Options{Tenants: []string{"acme", "globex"}, MaxRTO: time.Nanosecond}))
		if !errors.Is(err, drill.ErrFailed) || errors.Is(err, tenantvault.ErrIntegrity) || !strings.Contains(err.Error(), "over the RTO budget of 1ns") {
			t.Fatalf("err = %v", err)
		}
		requireGone(t, rep)
		if rep.Passed || !rep.RTOExceeded || rep.RTOVerdict() != "exceeded" {
			t.Fatalf("report: %+v", rep)
		}
		s := validateJUnit(t, junitOf(t, rep))
		if s.Totals.Tests != 4 || s.Totals.Failed != 1 || s.Totals.Passed != 3 {
			t.Fatalf("JUnit totals: %+v", s.Totals)
		}
		if c := junitCase(t, s, drill.CaseRTO); c.Status != "failed" || !strings.Contains(c.Message, "over the budget of 1ns") {
			t.Fatalf("RTO case: %+v", c)
		}
	})

	t.Run("corrupted object fails its tenant", func(t *testing.T) {
		c, key := w.chunkOf(t, "globex", "tasks")
		w.faulty.Inject(repo.Fault{Op: repo.OpGet, Match: func(k string) bool { return k == key }, Read: repo.FlipBit(c.Offset + c.Length/2)})
		defer w.faulty.Clear()
		rep, err := drill.Run(ctx, w.options(drill.Options{Tenants: []string{"globex", "acme"}}))
		if !errors.Is(err, drill.ErrFailed) || !errors.Is(err, tenantvault.ErrIntegrity) || !strings.Contains(err.Error(), `"globex"`) {
			t.Fatalf("err = %v", err)
		}
		requireGone(t, rep)
		byID := map[string]drill.TenantResult{}
		for _, tr := range rep.Tenants {
			byID[tr.Tenant] = tr
		}
		if g := byID["globex"]; g.Passed || !g.Integrity || g.Verified || !strings.Contains(g.Failure, "public.tasks") {
			t.Errorf("globex: %+v", g)
		}
		if a := byID["acme"]; !a.Passed {
			t.Errorf("acme: %+v", a)
		}
		s := validateJUnit(t, junitOf(t, rep))
		if g := junitCase(t, s, "globex"); g.Status != "failed" || !strings.Contains(g.Message, "public.tasks") {
			t.Errorf("globex case: %+v", g)
		} else if g.Error == nil || !strings.Contains(g.Error.Error(), "globex") {
			t.Errorf("globex failure body: %v", g.Error)
		}
		if a := junitCase(t, s, "acme"); a.Status != "passed" {
			t.Errorf("acme case: %+v", a)
		}
		if s.Totals.Failed != 1 || s.Totals.Skipped != 1 { // the RTO case: no budget
			t.Errorf("JUnit totals: %+v", s.Totals)
		}
	})

	t.Run("interrupted mid-restore", func(t *testing.T) {
		// Hold every pack read back, and cancel once the restore waits on one.
		hit := make(chan struct{})
		var once sync.Once
		w.faulty.Inject(repo.Fault{Op: repo.OpGet, Delay: time.Minute, Match: func(k string) bool {
			if strings.HasPrefix(k, vault.PacksPrefix) {
				once.Do(func() { close(hit) })
				return true
			}
			return false
		}})
		defer w.faulty.Clear()
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-hit:
				time.Sleep(200 * time.Millisecond)
			case <-dctx.Done():
			}
			cancel()
		}()
		start := time.Now()
		rep, err := drill.Run(dctx, w.options(drill.Options{Count: 4, Seed: 7}))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if took := time.Since(start); took > 30*time.Second {
			t.Errorf("the interrupted drill took %s to return", took)
		}
		select {
		case <-hit:
		default:
			t.Fatal("the drill never read a pack: it was not interrupted mid-restore")
		}
		requireGone(t, rep)
		if rep.Passed || !rep.Interrupted || rep.RTOVerdict() != "not measured" {
			t.Fatalf("report: %+v", rep)
		}
		s := validateJUnit(t, junitOf(t, rep))
		if c := junitCase(t, s, drill.CaseRTO); c.Status != "skipped" {
			t.Errorf("RTO case of an interrupted drill: %+v", c)
		}
		for _, tr := range rep.Tenants {
			if c := junitCase(t, s, tr.Tenant); c.Status == "passed" {
				t.Errorf("tenant %q of an interrupted drill passed", tr.Tenant)
			}
		}
	})

	t.Run("refusals create nothing", func(t *testing.T) {
		cases := []struct {
			name string
			o    drill.Options
			want string
		}{
			{"unknown tenant", drill.Options{Tenants: []string{"acme", "nobody"}}, `1 unknown tenant(s) in snapshot set ` + w.set.ID + `: "nobody"`},
			{"unknown set", drill.Options{SetID: "20200101T000000.000Z-00000000"}, "no snapshot set 20200101T000000.000Z-00000000"},
			{"bad scratch URL", drill.Options{Scratch: "postgres://h:notaport/x"}, "bad database URL"},
			{"negative count", drill.Options{Count: -1}, "cannot drill -1 tenants"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				o := w.options(c.o)
				if c.o.Scratch != "" {
					o.Scratch = c.o.Scratch
				}
				rep, err := drill.Run(ctx, o)
				var ie *tenantvault.InputError
				if !errors.As(err, &ie) || !strings.Contains(err.Error(), c.want) || rep != nil {
					t.Fatalf("rep = %v, err = %v; want input error with %q and no report", rep, err, c.want)
				}
			})
		}
	})
}

// TestDrillDatabaseModel drills tenants that are databases of their own: the
// drill refuses a scratch server that has databases of their names (here:
// the source server itself), and once they are gone it restores them there
// and drops them again.
func TestDrillDatabaseModel(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	prefix := testenv.RandomName("tvdrill_")
	var tenants []string
	for i, name := range []string{"a", "b"} {
		db := prefix + "_" + name
		tenants = append(tenants, db)
		testenv.Exec(t, testenv.PostgresURL(t), "CREATE DATABASE "+db)
		dropLater(t, db)
		testenv.Exec(t, testenv.DatabaseURL(t, db), fmt.Sprintf(`
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, CHECK (id > 0));
CREATE TABLE notes (id int PRIMARY KEY, item int NOT NULL REFERENCES items(id), body text);
CREATE INDEX ON notes (item);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, %d) g;
INSERT INTO notes SELECT g, 1 + g %% %d, 'note' FROM generate_series(1, 30) g;`, 10*(i+1), 10*(i+1)))
	}
	b, err := repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: testenv.PostgresURL(t), Vault: v,
		Tenancy: tenancy.Config{Model: tenancy.ModelDatabase, DatabasePattern: prefix + "\\_%"}})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if set, err = v.ReadManifest(ctx, set.ID); err != nil {
		t.Fatal(err)
	}
	if len(set.Tenants) != 2 {
		t.Fatalf("set has tenants %+v", set.Tenants)
	}
	o := drill.Options{Repo: v, Scratch: testenv.PostgresURL(t), Count: 2}

	rep, err := drill.Run(ctx, o)
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "already has database(s) named like the tenants") || !strings.Contains(err.Error(), tenants[0]) {
		t.Fatalf("drill over the live tenant databases: err = %v", err)
	}
	if rep == nil || rep.Database != "" || rep.Passed {
		t.Fatalf("refused drill: report %+v", rep)
	}
	for _, db := range tenants {
		if !databaseExists(t, db) {
			t.Fatalf("the refused drill touched %s", db)
		}
	}

	// The tenants' databases are lost; the drill restores them on this
	// server, checks each, and removes them again.
	for _, db := range tenants {
		testenv.Exec(t, testenv.PostgresURL(t), "DROP DATABASE "+db+" WITH (FORCE)")
	}
	rep, err = drill.Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	requireGone(t, rep)
	if !rep.Passed || len(rep.Checks) != 2 || len(rep.TenantDatabases) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	for _, dc := range rep.Checks {
		if dc.Tenant == "" || dc.ForeignKeys != 1 || dc.Constraints != 1 || dc.Indexes != 3 || len(dc.Problems) > 0 {
			t.Errorf("checks of %s: %+v", dc.Database, dc)
		}
	}
	for _, db := range tenants {
		if databaseExists(t, db) {
			t.Errorf("tenant database %s left on the scratch server", db)
		}
	}
}

// TestDrillSchemaModel drills tenants that are schemas of one database: the
// restore creates each tenant's schema in the drill's database.
func TestDrillSchemaModel(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	src := testenv.NewDatabase(t)
	for i, name := range []string{"tenant_a", "tenant_b", "tenant_c"} {
		testenv.Exec(t, src, fmt.Sprintf(`
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.items (id int PRIMARY KEY, name text NOT NULL, CHECK (id > 0));
CREATE TABLE %[1]s.notes (id int PRIMARY KEY, item int NOT NULL REFERENCES %[1]s.items(id), body text);
INSERT INTO %[1]s.items SELECT g, 'item ' || g FROM generate_series(1, %[2]d) g;
INSERT INTO %[1]s.notes SELECT g, 1 + g %% %[2]d, 'note' FROM generate_series(1, 20) g;`, name, 5*(i+1)))
	}
	b, err := repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: src, Vault: v,
		Tenancy: tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: "tenant\\_%"}}); err != nil {
		t.Fatal(err)
	}
	rep, err := drill.Run(ctx, drill.Options{Repo: v, Scratch: testenv.PostgresURL(t), Count: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	requireGone(t, rep)
	if !rep.Passed || rep.Model != tenancy.ModelSchema || len(rep.Tenants) != 2 || len(rep.Checks) != 1 {
		t.Fatalf("report: %+v", rep)
	}
	if dc := rep.Checks[0]; dc.ForeignKeys != 2 || dc.Constraints != 2 || dc.Indexes != 4 || len(dc.Problems) > 0 || len(dc.Skipped) > 0 {
		t.Errorf("checks: %+v", dc)
	}
}
