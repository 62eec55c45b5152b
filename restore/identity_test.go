package restore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
)

// identitySchema holds the shapes whose replica identity is more than
// "the key holds the tenant": a partitioned table whose key lacks the
// tenant column (the root describes its partitions' old rows), and tables
// whose key already holds what attributes them but whose rows can change
// tenant with an unchanged out-of-line value (directly, through a foreign
// key in the key, and in a partition).
const identitySchema = `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE events (id bigserial, tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE, day date NOT NULL, body text,
  PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE events_jan PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE events_other PARTITION OF events DEFAULT;
ALTER TABLE events ALTER body SET STORAGE EXTERNAL;
ALTER TABLE events_jan ALTER body SET STORAGE EXTERNAL;
ALTER TABLE events_other ALTER body SET STORAGE EXTERNAL;
CREATE TABLE docs (tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE, id bigserial, title text NOT NULL, doc text,
  PRIMARY KEY (tenant_id, id));
ALTER TABLE docs ALTER doc SET STORAGE EXTERNAL;
CREATE TABLE projects (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE);
CREATE TABLE notes (project_id bigint NOT NULL REFERENCES projects ON DELETE CASCADE, id bigserial, doc text,
  PRIMARY KEY (project_id, id));
ALTER TABLE notes ALTER doc SET STORAGE EXTERNAL;
`

// identityTables reads a tenant of identitySchema as text, in key order;
// md5 keeps the out-of-line values short in a failure message.
var identityTables = []struct{ name, sql string }{
	{"tenants", `SELECT t::text FROM tenants t WHERE id = $1`},
	{"events", `SELECT concat_ws(' ', id, tenant_id, day, md5(body)) FROM events WHERE tenant_id = $1 ORDER BY id, day`},
	{"docs", `SELECT concat_ws(' ', tenant_id, id, title, md5(doc)) FROM docs WHERE tenant_id = $1 ORDER BY id`},
	{"projects", `SELECT p::text FROM projects p WHERE tenant_id = $1 ORDER BY id`},
	{"notes", `SELECT concat_ws(' ', n.project_id, n.id, md5(n.doc)) FROM notes n JOIN projects p ON p.id = n.project_id WHERE p.tenant_id = $1 ORDER BY n.project_id, n.id`},
}

func readIdentityTenant(t *testing.T, ctx context.Context, conn *pgx.Conn, tenant string) string {
	t.Helper()
	var b strings.Builder
	for _, tb := range identityTables {
		rows, err := conn.Query(ctx, tb.sql, tenant)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s (%d): %s\n", tb.name, len(vals), strings.Join(vals, "; "))
	}
	return b.String()
}

// TestReplicaIdentityShapes: the capture once stopped on the first delete
// of a partitioned table whose root kept its default identity (only the
// partitions were widened), and on the first row that changed tenant with
// an unchanged out-of-line value in a table whose key already held the
// tenant column or foreign key (its identity was not widened, so the whole
// row could not be archived for the tenant it joined), naming "its tenant"
// as what was missing. It now refuses to start and names each table and
// why, widens them with --set-replica-identity, and restore --at equals
// what SQL read at each instant.
func TestReplicaIdentityShapes(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, identitySchema)
	testenv.Exec(t, db, `
INSERT INTO tenants VALUES ('a'), ('b');
INSERT INTO events (tenant_id, day, body) SELECT t, DATE '2026-01-05' + g * 20, repeat(t || g, 3000) FROM unnest(ARRAY['a', 'b']) t, generate_series(0, 3) g;
INSERT INTO docs (tenant_id, title, doc) SELECT t, 'doc ' || g, repeat(t || g || 'x', 3000) FROM unnest(ARRAY['a', 'b']) t, generate_series(1, 3) g;
INSERT INTO projects (tenant_id) SELECT t FROM unnest(ARRAY['a', 'b']) t, generate_series(1, 2);
INSERT INTO notes (project_id, doc) SELECT p.id, repeat(p.id || 'n' || g, 2500) FROM projects p, generate_series(1, 2) g`)
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{TenantTable: "public.tenants"}

	err := capture.Run(ctx, capture.Options{Source: db, Vault: v, Tenancy: cfg})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) {
		t.Fatalf("capture without wide enough replica identities: %v", err)
	}
	for _, want := range []string{
		`public.events its replica identity, which describes the old rows of all its partitions, (id, day) lacks tenant_id`,
		`public.events_jan its replica identity (id, day) lacks tenant_id`,
		`public.events_other its replica identity (id, day) lacks tenant_id`,
		`public.docs its replica identity (tenant_id, id) lacks title, doc, whose unchanged out-of-line values`,
		`public.notes its replica identity (project_id, id) lacks doc, whose unchanged out-of-line values`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("capture refusal lacks %q:\n%v", want, err)
		}
	}
	if !strings.Contains(ie.Hint, "ALTER TABLE public.events REPLICA IDENTITY FULL") || !strings.Contains(ie.Hint, "ALTER TABLE public.docs REPLICA IDENTITY FULL") {
		t.Errorf("capture refusal does not say how to fix it: %s", ie.Hint)
	}
	if strings.Contains(err.Error(), "public.tenants") {
		t.Errorf("capture refusal names the tenant table, whose rows cannot change tenant:\n%v", err)
	}

	defer startCaptureWith(t, ctx, capture.Options{Source: db, Vault: v, Tenancy: cfg, SetReplicaIdentity: true})()
	var idents string
	if err := testenv.Connect(t, db).QueryRow(ctx, `SELECT string_agg(relname::text || '=' || relreplident::text, ' ' ORDER BY relname) FROM pg_class
WHERE relname IN ('events', 'events_jan', 'events_other', 'docs', 'notes')`).Scan(&idents); err != nil {
		t.Fatal(err)
	}
	if idents != "docs=f events=f events_jan=f events_other=f notes=f" {
		t.Fatalf("replica identities after --set-replica-identity: %s", idents)
	}
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, ExactLSN: true}); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Connect(t, db)
	tenants := []string{"a", "b"}
	type instant struct {
		at    time.Time
		state map[string]string
		what  string
	}
	var instants []instant
	mark := func(what string) {
		time.Sleep(20 * time.Millisecond)
		st := map[string]string{}
		for _, id := range tenants {
			st[id] = readIdentityTenant(t, ctx, conn, id)
		}
		if n := len(instants); n > 0 && st["a"] == instants[n-1].state["a"] && st["b"] == instants[n-1].state["b"] {
			t.Fatalf("%s: nothing changed", what)
		}
		instants = append(instants, instant{serverNow(t, ctx, db), st, what})
		time.Sleep(20 * time.Millisecond)
	}
	mark("as in the set")
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'a' AND day IN (DATE '2026-01-05', DATE '2026-02-14')`)
	mark("after a delete in a partition")
	testenv.Exec(t, db, `UPDATE events SET tenant_id = 'b' WHERE tenant_id = 'a' AND day = DATE '2026-01-25';
UPDATE events SET day = DATE '2026-03-01' WHERE tenant_id = 'b' AND day = DATE '2026-01-05'`)
	mark("after an event moved between tenants (its body unchanged) and one moved between partitions")
	testenv.Exec(t, db, `UPDATE docs SET tenant_id = 'b' WHERE tenant_id = 'a' AND title = 'doc 1';
UPDATE docs SET title = 'renamed' WHERE tenant_id = 'b' AND title = 'doc 2'`)
	mark("after a doc moved between tenants, its out-of-line value unchanged")
	testenv.Exec(t, db, `UPDATE events SET tenant_id = 'a' WHERE tenant_id = 'b' AND day = DATE '2026-02-14'`)
	mark("after an event moved the other way, keeping its key")
	testenv.Exec(t, db, `UPDATE notes SET project_id = (SELECT min(id) FROM projects WHERE tenant_id = 'b')
WHERE (project_id, id) = (SELECT n.project_id, min(n.id) FROM notes n JOIN projects p ON p.id = n.project_id WHERE p.tenant_id = 'a' GROUP BY n.project_id ORDER BY n.project_id LIMIT 1)`)
	mark("after a note was re-parented to another tenant's project")
	testenv.Exec(t, db, `DELETE FROM docs WHERE tenant_id = 'b' AND title = 'doc 1'; DELETE FROM events WHERE tenant_id = 'b'`)
	mark("after deleting what moved")
	waitArchived(t, ctx, v, db)

	scratch := testenv.NewDatabase(t)
	testenv.Exec(t, scratch, identitySchema)
	sconn := testenv.Connect(t, scratch)
	for _, in := range instants {
		for _, id := range tenants {
			testenv.Exec(t, scratch, `DELETE FROM tenants`)
			if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: scratch, Tenants: []string{id}, Select: restore.Selector{At: in.at}}); err != nil {
				t.Fatalf("%s, tenant %s: %v", in.what, id, err)
			}
			if got := readIdentityTenant(t, ctx, sconn, id); got != in.state[id] {
				t.Fatalf("%s: tenant %s differs from what SQL read at %s:\nwant %s\ngot  %s", in.what, id, in.at.Format(time.RFC3339Nano), in.state[id], got)
			}
		}
	}

	// The interval replays exactly to a later set. Rows moved both ways
	// between the two tenants: in one scratch database, whichever tenant
	// is restored second would collide with a row the other put there.
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, ExactLSN: true}); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, ctx, v, db)
	checks, err := restore.VerifyReplay(ctx, restore.VerifyReplayOptions{Vault: v, Scratch: testenv.PostgresURL(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 1 || len(checks[0].Problems) > 0 || checks[0].Tenants != 2 || len(checks[0].Unprovable) != 0 {
		t.Fatalf("verify replay: %+v", checks)
	}
}
