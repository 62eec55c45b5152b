package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// sharedSchema makes the capture archive a tenant's rows as shared
// records: pages are scoped through docs by docs' (project_id, code), and
// docs' replica identity (project_id, id) lacks code, so when a cascade
// deletes a doc the capture cannot tell whose its pages were (whole old
// rows: pages have no key, so their identity is FULL).
const sharedSchema = `
CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE, name text NOT NULL);
CREATE TABLE docs (id bigserial PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE, code text NOT NULL,
  UNIQUE (project_id, code));
CREATE UNIQUE INDEX docs_ident ON docs (project_id, id);
ALTER TABLE docs REPLICA IDENTITY USING INDEX docs_ident;
ALTER TABLE docs ALTER COLUMN code SET STORAGE PLAIN;
CREATE TABLE pages (doc_project bigint NOT NULL, doc_code text NOT NULL, body text NOT NULL,
  FOREIGN KEY (doc_project, doc_code) REFERENCES docs (project_id, code) ON DELETE CASCADE);
INSERT INTO tenants VALUES ('t1', 'one'), ('t2', 'two'), ('t3', 'three');
INSERT INTO projects (tenant_id, name) SELECT id, 'project ' || g FROM tenants, generate_series(1, 2) g;
INSERT INTO docs (project_id, code) SELECT id, c FROM projects, unnest(ARRAY['a', 'b']) c;
INSERT INTO pages SELECT d.project_id, d.code, CASE WHEN p.tenant_id = 't2' THEN '` + eraseMarker + ` page ' ELSE 'page ' END || g
  FROM docs d JOIN projects p ON p.id = d.project_id, generate_series(1, 3) g;
`

var sharedTables = []struct{ name, sql string }{
	{"tenants", `SELECT t::text FROM tenants t WHERE id = $1`},
	{"projects", `SELECT x::text FROM projects x WHERE tenant_id = $1 ORDER BY id`},
	{"docs", `SELECT x::text FROM docs x JOIN projects p ON p.id = x.project_id WHERE p.tenant_id = $1 ORDER BY x.id`},
	{"pages", `SELECT x::text FROM pages x JOIN docs d ON (d.project_id, d.code) = (x.doc_project, x.doc_code) JOIN projects p ON p.id = d.project_id WHERE p.tenant_id = $1 ORDER BY x::text`},
}

func readShared(t *testing.T, ctx context.Context, conn *pgx.Conn, tenant string) string {
	t.Helper()
	var b strings.Builder
	for _, tb := range sharedTables {
		rows, err := conn.Query(ctx, tb.sql, tenant)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s: %s\n", tb.name, strings.Join(vals, " "))
	}
	return b.String()
}

// sharedHistory writes a repository whose change log holds tenant t2's
// rows as shared records, in each of the situations forget decides by
// who held a key at the record's LSN:
//   - before any set the log continues: captured, t2 deletes a doc (its
//     pages go by cascade, archived shared, the marker in their bodies),
//     then a set is taken at an exact LSN;
//   - moves: a page of t2's moves to a doc of t1's (and is rewritten:
//     what moves to t1 is t1's data) while its old doc goes in the same
//     transaction (the capture cannot tell whose the old row was: shared,
//     its old row t2's with the marker, its new one t1's),
//     and a page of t1's moves to a doc of t2's the same way (its new row
//     holding the marker);
//   - keys held by two tenants at different times: t2's projects go (more
//     cascades, shared), then t3 takes one of their IDs again, with a doc
//     of the same code, and deletes it (t3's pages, shared, by the key t2
//     held before);
//   - a project of t1's moves to t2 (after the last instant): t1's move
//     record holds the row as t2's;
//
// and t2 adds a page, t1 deletes a doc, t3 adds pages. It returns three
// instants (after the moves, after t2's projects go, after all of it)
// and what SQL read for t1 and t3 at each.
func sharedHistory(t *testing.T, ctx context.Context, db, repoURL string, keys *vault.Keys, snapArgs ...string) ([]time.Time, []map[string]string) {
	t.Helper()
	testenv.Exec(t, db, sharedSchema)
	expect(t, 0, "", append([]string{"snapshot", "--source", db, "--repo", repoURL, "--init", "--tenant-table", "public.tenants"}, snapArgs...)...)
	v, stop := runCapture(t, ctx, db, repoURL, keys, tenancy.Config{TenantTable: "public.tenants"})
	testenv.Exec(t, db, `DELETE FROM docs WHERE code = 'b' AND project_id = (SELECT max(id) FROM projects WHERE tenant_id = 't2');`)
	time.Sleep(50 * time.Millisecond)
	expect(t, 0, "", append([]string{"snapshot", "--source", db, "--repo", repoURL, "--tenant-table", "public.tenants", "--exact-lsn"}, snapArgs...)...)
	conn := testenv.Connect(t, db)
	var ats []time.Time
	var wants []map[string]string
	mark := func() {
		time.Sleep(50 * time.Millisecond)
		ats = append(ats, clock(t, db))
		wants = append(wants, map[string]string{"t1": readShared(t, ctx, conn, "t1"), "t3": readShared(t, ctx, conn, "t3")})
		time.Sleep(1100 * time.Millisecond)
	}
	testenv.Exec(t, db, `
INSERT INTO pages SELECT project_id, code, '`+eraseMarker+` added' FROM docs WHERE project_id = (SELECT min(id) FROM projects WHERE tenant_id = 't2') AND code = 'a';
BEGIN;
UPDATE pages SET doc_project = (SELECT min(id) FROM projects WHERE tenant_id = 't1'), doc_code = 'a', body = 'now a page of t1'
  WHERE doc_project = (SELECT max(id) FROM projects WHERE tenant_id = 't2') AND doc_code = 'a' AND body LIKE '% 1';
DELETE FROM docs WHERE code = 'a' AND project_id = (SELECT max(id) FROM projects WHERE tenant_id = 't2');
COMMIT;
BEGIN;
UPDATE pages SET doc_project = (SELECT min(id) FROM projects WHERE tenant_id = 't2'), doc_code = 'a', body = '`+eraseMarker+` moved in'
  WHERE doc_project = (SELECT min(id) FROM projects WHERE tenant_id = 't1') AND doc_code = 'b' AND body LIKE '% 1';
DELETE FROM docs WHERE code = 'b' AND project_id = (SELECT min(id) FROM projects WHERE tenant_id = 't1');
COMMIT;
INSERT INTO pages SELECT project_id, code, 'later page' FROM docs JOIN projects p ON p.id = project_id WHERE p.tenant_id = 't3';`)
	mark()
	var reused int64
	if err := conn.QueryRow(ctx, `SELECT max(id) FROM projects WHERE tenant_id = 't2'`).Scan(&reused); err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `DELETE FROM projects WHERE tenant_id = 't2';`)
	mark()
	testenv.Exec(t, db, fmt.Sprintf(`
INSERT INTO projects (id, tenant_id, name) VALUES (%d, 't3', 'a reused id');
INSERT INTO docs (project_id, code) VALUES (%[1]d, 'a');
INSERT INTO pages VALUES (%[1]d, 'a', 't3 page under a key t2 held'), (%[1]d, 'a', 't3 page two');
DELETE FROM docs WHERE project_id = %[1]d;`, reused))
	mark()
	// Last, a project of t1's moves to t2 with its docs and pages (a move
	// record in both streams; t1's replay stops there), renamed with the
	// marker: t1's move record holds the row as it became t2's.
	testenv.Exec(t, db, `UPDATE projects SET tenant_id = 't2', name = '`+eraseMarker+` moved project' WHERE id = (SELECT max(id) FROM projects WHERE tenant_id = 't1');`)
	waitLog(t, ctx, v, db)
	stop()
	for i := range ats {
		ats[i] = ats[i].Add(time.Second).Truncate(time.Second)
	}
	return ats, wants
}

// restoreAt restores tenant as of at into a fresh database and reads it.
func restoreAt(t *testing.T, ctx context.Context, repoURL, tenant string, at time.Time, extra ...string) string {
	t.Helper()
	dst := testenv.NewDatabase(t)
	out := expect(t, 0, "", append([]string{"restore", "--repo", repoURL, "--target", dst, "--tenant", tenant, "--at", at.Format(time.RFC3339), "--create-schema", "--yes"}, extra...)...)
	if !strings.Contains(out, "replayed") {
		t.Fatalf("restore --at replayed nothing:\n%s", out)
	}
	conn, err := pgx.Connect(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	return readShared(t, ctx, conn, tenant)
}

// restoreAll restores t1 and t3 as of each instant, checked against what
// SQL read then when wants is given.
func restoreAll(t *testing.T, ctx context.Context, repoURL string, ats []time.Time, wants []map[string]string, extra ...string) []string {
	t.Helper()
	var out []string
	for i, at := range ats {
		for _, id := range []string{"t1", "t3"} {
			got := restoreAt(t, ctx, repoURL, id, at, extra...)
			if wants != nil && got != wants[i][id] {
				t.Fatalf("%s restored --at %s:\n%s\nSQL read:\n%s", id, at.Format(time.RFC3339), got, wants[i][id])
			}
			out = append(out, id+"@"+at.Format(time.RFC3339)+"\n"+got)
		}
	}
	return out
}

// TestForgetSharedChanges: a captured history in which the erased
// tenant's rows reach the change log as shared records (a cascade through
// a key its parent's replica identity lacks). forget attributes and drops
// them: no stored byte holds the marker planted in its rows, every other
// tenant's restore --at equals the same restore before forget and what
// SQL read, and verify --read-data passes; on file:// and MinIO.
func TestForgetSharedChanges(t *testing.T) {
	for _, backend := range []string{"file", "s3"} {
		t.Run(backend, func(t *testing.T) {
			ctx := testenv.Context(t, 4*time.Minute)
			db := testenv.NewDatabase(t)
			repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
			if backend == "s3" {
				repoURL = testenv.NewS3Repo(t)
			}
			ats, wants := sharedHistory(t, ctx, db, repoURL, nil)
			before := restoreAll(t, ctx, repoURL, ats, wants)
			hits := markerHits(t, storedObjects(t, ctx, repoURL))
			inLog := false
			for _, h := range hits {
				inLog = inLog || strings.HasPrefix(h, "changes/")
			}
			if !inLog {
				t.Fatalf("the marker is not in the change log to begin with: %v", hits)
			}
			out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "t2", "--dry-run")
			if !strings.Contains(out, "attributed to it and dropped") || !strings.Contains(out, "split:                 2 shared record(s)") || !strings.Contains(out, "moves:                 1 move record(s)") || strings.Contains(out, "NOT ERASED") {
				t.Fatalf("plan:\n%s", out)
			}
			out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "t2", "--yes")
			if !strings.Contains(out, `erased tenant "t2"`) || strings.Contains(out, "not erased") || strings.Contains(out, " (0 shared record(s) of it dropped)") {
				t.Fatalf("forget:\n%s", out)
			}
			if hits := markerHits(t, storedObjects(t, ctx, repoURL)); len(hits) > 0 {
				t.Fatalf("the erased tenant's marker is still stored:\n%s\n%s", strings.Join(hits, "\n"), strings.Join(markerRecords(t, ctx, repoURL, ""), "\n"))
			}
			if out := expect(t, 0, "", "verify", "--repo", repoURL, "--read-data"); !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify --read-data after forget: %s", out)
			}
			if got := restoreAll(t, ctx, repoURL, ats, nil); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("other tenants restore --at differently after forget:\n%v\nbefore:\n%v", got, before)
			}
			expect(t, 2, `tenant "t2" (erased on `, "restore", "--repo", repoURL, "--target", testenv.NewDatabase(t), "--tenant", "t2", "--at", ats[0].Format(time.RFC3339), "--create-schema", "--yes")
		})
	}
}

// TestForgetSharedChangesEncrypted: the same history in an encrypted
// repository. forget --identity rewrites the segments whose shared records
// it attributes to the tenant: afterwards no segment decrypts, with the
// identity, to a record holding the marker, every other tenant's restore
// --at equals the one before, verify --read-data passes; on file:// and
// MinIO. Under S3 Object Lock the rewrite is refused and nothing changes.
func TestForgetSharedChangesEncrypted(t *testing.T) {
	for _, kind := range []string{"file", "s3", "s3-locked"} {
		t.Run(kind, func(t *testing.T) {
			ctx := testenv.Context(t, 4*time.Minute)
			db := testenv.NewDatabase(t)
			dir := t.TempDir()
			identity, signing, recipient := keygen(t, dir)
			writer := &vault.Keys{}
			if _, err := writer.LoadSigningKeyFile(signing); err != nil {
				t.Fatal(err)
			}
			if err := writer.AddRecipient(recipient); err != nil {
				t.Fatal(err)
			}
			repoURL := "file://" + filepath.Join(dir, "repo")
			switch kind {
			case "s3":
				repoURL = testenv.NewS3Repo(t)
			case "s3-locked":
				repoURL = testenv.LockedRepoURL(t, "governance", time.Hour)
			}
			ats, wants := sharedHistory(t, ctx, db, repoURL, writer, "--recipient", recipient, "--signing-key", signing)
			id := []string{"--identity", identity}
			if kind == "s3-locked" {
				objects := storedObjects(t, ctx, repoURL)
				expect(t, 2, "keeps every object under S3 Object Lock retention", "forget", "--repo", repoURL, "--tenant", "t2", "--yes", "--identity", identity)
				if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
					t.Fatal("a refused forget changed the repository")
				}
				return
			}
			before := restoreAll(t, ctx, repoURL, ats, wants, id...)
			if n := decryptedMarkers(t, ctx, repoURL, identity); n == 0 {
				t.Fatal("no segment decrypts to the marker to begin with")
			}
			out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "t2", "--dry-run", "--identity", identity)
			if !strings.Contains(out, "rewritten under new segment keys") || !strings.Contains(out, "split:                 2 shared record(s)") || !strings.Contains(out, "moves:                 1 move record(s)") || strings.Contains(out, "NOT ERASED") || strings.Contains(out, "segments:   0 rewritten") {
				t.Fatalf("plan:\n%s", out)
			}
			out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "t2", "--yes", "--identity", identity)
			if !strings.Contains(out, `erased tenant "t2"`) || strings.Contains(out, "not erased") || strings.Contains(out, "(0 shared record(s) of it dropped)") {
				t.Fatalf("forget:\n%s", out)
			}
			if n := decryptedMarkers(t, ctx, repoURL, identity); n != 0 {
				t.Fatalf("%d record(s) still decrypt to the erased tenant's marker", n)
			}
			if out := expect(t, 0, "", "verify", "--repo", repoURL, "--read-data", "--identity", identity); !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify --read-data after forget: %s", out)
			}
			if got := restoreAll(t, ctx, repoURL, ats, nil, id...); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("other tenants restore --at differently after forget:\n%v\nbefore:\n%v", got, before)
			}
		})
	}
}

// decryptedMarkers counts the change records that, decrypted with the
// identity, hold eraseMarker (a destroyed tenant key reads as nothing).
func decryptedMarkers(t *testing.T, ctx context.Context, repoURL, identity string) int {
	t.Helper()
	return len(markerRecords(t, ctx, repoURL, identity))
}

// markerRecords describes the change records that hold eraseMarker
// (decrypted with identity when it is given).
func markerRecords(t *testing.T, ctx context.Context, repoURL, identity string) []string {
	t.Helper()
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var keys *vault.Keys
	if identity != "" {
		keys = &vault.Keys{}
		if _, err := keys.LoadKeyFile(identity); err != nil {
			t.Fatal(err)
		}
	}
	v, err := vault.Open(ctx, b, vault.Options{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	streams, err := v.ListStreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, s := range streams {
		refs, err := v.ListSegments(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refs {
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			err = v.ScanSegment(ctx, idx, nil, func(st vault.SegmentStream, cr *vault.ChangeReader) error {
				for {
					c, err := cr.Next()
					if err != nil {
						return nil
					}
					for _, val := range append(append([]vault.Value(nil), c.New...), c.Old...) {
						if strings.Contains(string(val.Data), eraseMarker) {
							n = append(n, fmt.Sprintf("%s %q shared=%v: %d/%d %c rel %d new %q old %q", idx.Key(), st.Tenant, st.Shared, c.LSN, c.Seq, c.Op, c.Rel, c.New, c.Old))
							break
						}
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return n
}
