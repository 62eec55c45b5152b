package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

const pitrSchema = `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE issues (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE, title text);
CREATE TABLE comments (id bigserial PRIMARY KEY, issue_id bigint NOT NULL REFERENCES issues(id) ON DELETE CASCADE, body text);
`

// TestRestoreAtReportsProof: a restore that replayed changes says what was
// proven (the base set's digests) and what was replayed on top (how many
// changes, the last commit), on a terminal and in JSON, never a bare yes;
// and a replay that would cross a row moving between tenants is refused
// with exit code 2 and nothing written.
func TestRestoreAtReportsProof(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, pitrSchema+`
INSERT INTO tenants VALUES ('acme'), ('globex');
INSERT INTO issues (tenant_id, title) SELECT id, 'issue ' || g FROM tenants, generate_series(1, 3) g;
INSERT INTO comments (issue_id, body) SELECT id, 'comment' FROM issues`)
	repoURL := "file://" + t.TempDir() + "/repo"
	cfg := tenancy.Config{TenantTable: "public.tenants"}
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--tenant-table", "public.tenants")

	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, Tenancy: cfg, SetReplicaIdentity: true,
			FlushInterval: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("capture: %v", err)
		}
		capture.DropSlot(context.Background(), db, "")
	}()
	conn := testenv.Connect(t, db)
	for {
		var n int
		conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantvault_%' AND database = current_database() AND confirmed_flush_lsn IS NOT NULL").Scan(&n)
		if n > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--tenant-table", "public.tenants", "--exact-lsn")
	testenv.Exec(t, db, `DELETE FROM comments WHERE issue_id = (SELECT min(id) FROM issues WHERE tenant_id = 'acme');
INSERT INTO comments (issue_id, body) SELECT id, 'new' FROM issues WHERE tenant_id = 'acme'`)
	time.Sleep(50 * time.Millisecond)
	var at time.Time
	conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&at)
	time.Sleep(50 * time.Millisecond)
	testenv.Exec(t, db, `UPDATE issues SET tenant_id = 'globex' WHERE id = (SELECT max(id) FROM issues WHERE tenant_id = 'acme')`)
	var moved time.Time
	conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&moved)
	for {
		_, until, err := v.ArchivedUntil(ctx, streamOf(t, db))
		if err != nil {
			t.Fatal(err)
		}
		if until.After(moved) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	scratch := testenv.NewDatabase(t)
	testenv.Exec(t, scratch, pitrSchema)
	base := []string{"restore", "--repo", repoURL, "--target", scratch, "--tenant", "acme", "--yes"}
	out := expect(t, 0, "", append(base, "--at", at.Format(time.RFC3339Nano))...)
	if !strings.Contains(out, "base: 3 digests; then 4 change(s) replayed, last committed ") || !strings.Contains(out, "checked by row counts and foreign keys, not digests") {
		t.Fatalf("restore --at output does not say what was proven and what was replayed:\n%s", out)
	}
	if strings.Contains(out, "yes") {
		t.Fatalf("restore --at output says a bare yes:\n%s", out)
	}
	testenv.Exec(t, scratch, `DELETE FROM tenants`)
	out = expect(t, 0, "", append(base, "--at", at.Format(time.RFC3339Nano), "--json")...)
	var rep struct {
		Tenants []restoreTenantJSON `json:"tenants"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Tenants) != 1 {
		t.Fatalf("json: %s", out)
	}
	p := rep.Tenants[0].Proof
	if !rep.Tenants[0].Verified || p.Digests != 3 || p.Replayed == nil || p.Replayed.Changes != 4 || p.Replayed.LastCommit == "" || p.Replayed.CheckedBy != "row counts and foreign keys" {
		t.Fatalf("json proof: %+v %+v\n%s", p, p.Replayed, out)
	}
	// A restore as of the set alone is proven by digests, every table.
	testenv.Exec(t, scratch, `DELETE FROM tenants`)
	out = expect(t, 0, "", base...)
	if !strings.Contains(out, "yes: 3 digests") {
		t.Fatalf("restore of a set:\n%s", out)
	}

	// Past the move, neither tenant can be replayed from the log alone.
	testenv.Exec(t, scratch, `DELETE FROM tenants`)
	for _, id := range []string{"acme", "globex"} {
		expect(t, 2, `tenant "`+id+`" cannot be replayed past `, "restore", "--repo", repoURL, "--target", scratch, "--tenant", id, "--yes", "--at", moved.Format(time.RFC3339Nano))
	}
	var n int
	testenv.Connect(t, scratch).QueryRow(ctx, "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM issues) + (SELECT count(*) FROM comments)").Scan(&n)
	if n != 0 {
		t.Fatalf("a refused restore wrote %d rows", n)
	}
}

func streamOf(t *testing.T, db string) string {
	t.Helper()
	var sys string
	testenv.Connect(t, db).QueryRow(context.Background(), "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	cfg, err := tenancy.ParseURL(db)
	if err != nil {
		t.Fatal(err)
	}
	return vault.StreamName(sys, cfg.Database)
}
