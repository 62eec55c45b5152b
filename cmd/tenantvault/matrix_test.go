package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// EnvTestPGVersion names the PostgreSQL major version the matrix test must
// find; scripts/test.sh sets it for each server it starts, so a run meant
// for PostgreSQL 17 can never pass on another server.
const EnvTestPGVersion = "TENANTVAULT_TEST_PG_VERSION"

// versionSchema adds what only some versions have to the fixture, so that
// each of them is captured and restored too.
func versionSchema(major int) string {
	var b strings.Builder
	if major >= 18 {
		// Virtual generated columns are computed when read: never
		// exported, loaded or replayed as data.
		b.WriteString(`ALTER TABLE projects ADD COLUMN name_len int GENERATED ALWAYS AS (length(name)) VIRTUAL;
ALTER TABLE tenants ADD COLUMN label text GENERATED ALWAYS AS (upper(id) || ' / ' || name) VIRTUAL;
-- With generated columns, REPLICA IDENTITY FULL would make UPDATE and
-- DELETE fail once published (PostgreSQL 18): the capture needs identity
-- indexes that hold the tenant column instead, and refuses FULL.
CREATE UNIQUE INDEX projects_tenant_ident ON projects (tenant_id, id);
ALTER TABLE projects REPLICA IDENTITY USING INDEX projects_tenant_ident;
CREATE UNIQUE INDEX users_tenant_ident ON users (tenant_id, id);
ALTER TABLE users REPLICA IDENTITY USING INDEX users_tenant_ident;
`)
	}
	return b.String()
}

// pgDumpMajor is the major version of the pg_dump on PATH, 0 without one.
func pgDumpMajor(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("pg_dump", "--version").Output()
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`\) (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pg_dump --version: %q", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestPostgresMatrix runs the core of the tool on the server the tests
// were given: snapshot, restore into the existing schema (and replacing a
// tenant, which snapshots it first), change capture and restore --at, and a
// drill. scripts/test.sh runs it on every supported major version.
//
// The pg_dump at hand (Debian's 15 on CI) reads servers up to its own
// version: there the sets carry a schema archive and --create-schema and a
// plain drill are tested; on newer servers the default snapshot must refuse
// with advice, --schema-archive=none sets are taken instead, and
// --create-schema and a drill without a template must refuse clearly. A
// drill from a template database (a schema made by migrations) runs on
// every version.
func TestPostgresMatrix(t *testing.T) {
	ctx := testenv.Context(t, 6*time.Minute)
	admin := testenv.PostgresURL(t)
	var num int
	var version string
	if err := testenv.Connect(t, admin).QueryRow(ctx, "SELECT current_setting('server_version_num')::int, version()").Scan(&num, &version); err != nil {
		t.Fatal(err)
	}
	major := num / 10000
	if want := os.Getenv(EnvTestPGVersion); want != "" && want != strconv.Itoa(major) {
		t.Fatalf("%s=%s, but the server is %s", EnvTestPGVersion, want, version)
	}
	dumpMajor := pgDumpMajor(t)
	withDump := dumpMajor >= major
	t.Logf("server %s; pg_dump %d (schema archives: %v)", version, dumpMajor, withDump)

	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	if extra := versionSchema(major); extra != "" {
		testenv.Exec(t, src, extra)
	}
	dir := t.TempDir()
	r := "file://" + dir
	archive := "pg_dump"
	if !withDump {
		archive = "none"
	}
	snap := func(t *testing.T, extra ...string) {
		t.Helper()
		args := append([]string{"snapshot", "--source", src, "--repo", r, "--schema-archive", archive}, extra...)
		expect(t, 0, "", args...)
	}
	conn := testenv.Connect(t, src)
	read := func(t *testing.T, db *string, tenant string) fixture.State {
		t.Helper()
		c := conn
		if db != nil {
			c = testenv.Connect(t, *db)
		}
		st, err := fixture.Read(ctx, c, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	deleteTenant := func(t *testing.T, tenant string) {
		t.Helper()
		lit := tenancy.Literal(tenant)
		testenv.Exec(t, src, "DELETE FROM events WHERE tenant_id = "+lit+"; DELETE FROM tenants WHERE id = "+lit)
	}

	t.Run("pg_restore 17+ scripts run on this server", func(t *testing.T) {
		// pg_restore 17+ (the image's) starts every script with SET
		// transaction_timeout, which servers before 17 do not know.
		c := testenv.Connect(t, src)
		_, err := c.Exec(ctx, "SET transaction_timeout = 0")
		if (err == nil) != (major >= 17) {
			t.Fatalf("SET transaction_timeout on PostgreSQL %d: %v", major, err)
		}
		if major >= 17 {
			if _, err := c.Exec(ctx, "SET transaction_timeout = '5s'"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Exec(ctx, restore.PortableTransactionTimeout); err != nil {
			t.Fatalf("the portable replacement fails: %v", err)
		}
		if major >= 17 {
			var v string
			c.QueryRow(ctx, "SHOW transaction_timeout").Scan(&v)
			if v != "0" {
				t.Fatalf("transaction_timeout is %q after the replacement", v)
			}
		}
	})

	t.Run("snapshot", func(t *testing.T) {
		expect(t, 2, `--schema-archive "pgdump": use pg_dump or none`, "snapshot", "--source", src, "--repo", r, "--init", "--schema-archive", "pgdump")
		if !withDump {
			// The default needs pg_dump: refused before anything is
			// written, with both ways out.
			code, _, errOut := tv(t, "snapshot", "--source", src, "--repo", r, "--init")
			for _, want := range []string{"pg_dump cannot read this server", "--schema-archive=none", "install pg_dump " + strconv.Itoa(major) + " or newer"} {
				if code != 2 || !strings.Contains(errOut, want) {
					t.Fatalf("exit %d, want 2 and %q in: %s", code, want, errOut)
				}
			}
		}
		snap(t, "--init")
		if !withDump {
			code, out, _ := tv(t, "list", "--repo", r, "--json")
			var sets []map[string]any
			if code != 0 || json.Unmarshal([]byte(out), &sets) != nil || len(sets) != 1 {
				t.Fatalf("the refused snapshot left a set behind, or list failed: exit %d: %s", code, out)
			}
		}
	})

	t.Run("restore into the existing schema", func(t *testing.T) {
		want := read(t, nil, "acme")
		deleteTenant(t, "acme")
		expect(t, 0, "", "restore", "--repo", r, "--target", src, "--tenant", "acme")
		if d := fixture.Diff(want, read(t, nil, "acme")); d != "" {
			t.Fatalf("restored tenant differs:\n%s", d)
		}
	})

	t.Run("replace takes a pre-restore set first", func(t *testing.T) {
		want := read(t, nil, "globex")
		testenv.Exec(t, src, `UPDATE projects SET name = 'damaged' WHERE tenant_id = 'globex'`)
		damaged := read(t, nil, "globex")
		out := expect(t, 0, "", "restore", "--repo", r, "--target", src, "--tenant", "globex", "--if-exists", "replace", "--yes", "--json")
		if d := fixture.Diff(want, read(t, nil, "globex")); d != "" {
			t.Fatalf("replaced tenant differs:\n%s", d)
		}
		var rep struct {
			PreRestoreSet string `json:"pre_restore_set"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.PreRestoreSet == "" {
			t.Fatalf("no pre-restore set in %s (%v)", out, err)
		}
		// The replace can be undone from it.
		expect(t, 0, "", "restore", "--repo", r, "--target", src, "--tenant", "globex", "--snapshot", rep.PreRestoreSet, "--if-exists", "replace", "--yes")
		if d := fixture.Diff(damaged, read(t, nil, "globex")); d != "" {
			t.Fatalf("undoing the replace:\n%s", d)
		}
		expect(t, 0, "", "restore", "--repo", r, "--target", src, "--tenant", "globex", "--if-exists", "replace", "--yes")
	})

	t.Run("create-schema", func(t *testing.T) {
		empty := testenv.NewDatabase(t)
		args := []string{"restore", "--repo", r, "--target", empty, "--tenant", "acme", "--tenant", "o'brien & co", "--create-schema"}
		if !withDump {
			expect(t, 2, "has no schema archive (it was taken with --schema-archive=none)", args...)
			var tables int
			testenv.Connect(t, empty).QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables)
			if tables != 0 {
				t.Fatalf("the refused restore created %d tables", tables)
			}
			return
		}
		expect(t, 0, "", args...)
		for _, id := range []string{"acme", "o'brien & co"} {
			if d := fixture.Diff(read(t, nil, id), read(t, &empty, id)); d != "" {
				t.Fatalf("tenant %q in the new database:\n%s", id, d)
			}
		}
	})

	t.Run("capture and restore --at", func(t *testing.T) {
		b, err := repo.Open(ctx, r, repo.Options{})
		if err != nil {
			t.Fatal(err)
		}
		v, err := vault.Open(ctx, b, vault.Options{})
		if err != nil {
			t.Fatal(err)
		}
		// A publication that does not publish through partition roots
		// would lose the partitions' changes: refused, with the fix.
		testenv.Exec(t, src, "CREATE PUBLICATION tv_noroot FOR ALL TABLES")
		err = capture.Run(ctx, capture.Options{Source: src, Vault: v, Publication: "tv_noroot", SetReplicaIdentity: true})
		var ie *tenantvault.InputError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), "changes to the partitions of public.events would be missed") ||
			!strings.Contains(ie.Hint, "publish_via_partition_root = true") {
			t.Fatalf("capture with a publication without publish_via_partition_root: %v", err)
		}
		testenv.Exec(t, src, "DROP PUBLICATION tv_noroot")

		stats := &capture.Stats{}
		stop := matrixCapture(t, ctx, src, v, stats)
		defer stop()
		snap(t, "--exact-lsn")
		testenv.Exec(t, src, `UPDATE projects SET budget = 7, name = 'renamed at ' || id WHERE tenant_id = 'acme';
INSERT INTO tasks (project_id, title, blob) SELECT id, 'matrix task', '\xc0ffee' FROM projects WHERE tenant_id = 'acme';
INSERT INTO task_notes (task_id, note) SELECT id, 'matrix note' FROM tasks WHERE title LIKE 'matrix task%';
DELETE FROM events WHERE tenant_id = 'acme' AND id = 2;
UPDATE tenants SET name = 'Acme renamed' WHERE id = 'acme'`)
		time.Sleep(20 * time.Millisecond)
		want := read(t, nil, "acme")
		at := clock(t, src)
		time.Sleep(1200 * time.Millisecond)
		deleteTenant(t, "acme")
		waitLog(t, ctx, v, src)
		expect(t, 0, "", "restore", "--repo", r, "--target", src, "--tenant", "acme", "--at", at.Format(time.RFC3339Nano))
		if d := fixture.Diff(want, read(t, nil, "acme")); d != "" {
			t.Fatalf("tenant at %s differs:\n%s", at.Format(time.RFC3339Nano), d)
		}
		if stats.Records.Load() == 0 {
			t.Fatal("the capture archived no records")
		}
	})

	t.Run("drill", func(t *testing.T) {
		base := []string{"drill", "--repo", r, "--scratch", admin, "--tenants", "3", "--seed", "7"}
		if withDump {
			expect(t, 0, "", base...)
		} else {
			expect(t, 2, "has no schema archive", base...)
		}
		// The schema from elsewhere: a template database, as migrations
		// would leave it.
		tpl := testenv.NewDatabase(t)
		testenv.Exec(t, tpl, fixture.Schema+versionSchema(major))
		tplName := dbName(tpl)
		expect(t, 0, "", append(base, "--template", tplName)...)
		// A template with rows in a global table is refused, not loaded
		// on top of.
		testenv.Exec(t, tpl, `INSERT INTO plans VALUES ('free', 0)`)
		expect(t, 2, "public.plans: has rows", append(base, "--template", tplName)...)
	})
}

// matrixCapture runs the change capture on db into v until stop is called,
// and returns once its change log has started.
func matrixCapture(t *testing.T, ctx context.Context, db string, v *vault.Vault, stats *capture.Stats) (stop func()) {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true,
			FlushInterval: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond, Stats: stats})
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("capture: %v", err)
		}
		if err := capture.DropSlot(context.Background(), db, ""); err != nil {
			t.Errorf("drop slot: %v", err)
		}
	}
	// The slot is consistent once the capture has written its first
	// (empty) segment: changes count from there on.
	var sys string
	if err := testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys); err != nil {
		t.Fatal(err)
	}
	for {
		if refs, err := v.ListSegments(ctx, vault.StreamName(sys, dbName(db))); err == nil && len(refs) > 0 {
			return stop
		}
		select {
		case err := <-done:
			t.Fatalf("capture stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func dbName(url string) string {
	cfg, err := tenancy.ParseURL(url)
	if err != nil {
		panic(err)
	}
	return cfg.Database
}
