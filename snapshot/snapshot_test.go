package snapshot_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

func openVault(t *testing.T, ctx context.Context, url string) *vault.Vault {
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
	return v
}

// canonical is the test's own, hand-written rendering of one tenant's rows
// of a table: what the content digest must be the SHA-256 of.
var canonical = map[string]string{
	"tenants":    `COPY (SELECT id, name, plan, country, created FROM public.tenants WHERE id = %s ORDER BY id COLLATE "C") TO STDOUT`,
	"users":      `COPY (SELECT id, tenant_id, email, mood, moods, home, age, manager_id FROM public.users WHERE tenant_id = %s ORDER BY id) TO STDOUT`,
	"projects":   `COPY (SELECT id, tenant_id, name, settings, budget, tags, starts, active, owner_id FROM public.projects WHERE tenant_id = %s ORDER BY id) TO STDOUT`,
	"tasks":      `COPY (SELECT t.* FROM public.tasks t JOIN public.projects p ON p.id = t.project_id WHERE p.tenant_id = %s ORDER BY t.id) TO STDOUT`,
	"task_notes": `COPY (SELECT n.* FROM public.task_notes n JOIN public.tasks t ON t.id = n.task_id JOIN public.projects p ON p.id = t.project_id WHERE p.tenant_id = %s ORDER BY ROW(n.task_id, n.note, n.at)::text COLLATE "C") TO STDOUT`,
	"events":     `COPY (SELECT * FROM public.events WHERE tenant_id = %s ORDER BY tenant_id COLLATE "C", id, at) TO STDOUT`,
}

type hashWriter struct{ h []byte }

func copyDigest(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) (string, int64) {
	t.Helper()
	h := sha256.New()
	tag, err := conn.PgConn().CopyTo(ctx, h, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return hex.EncodeToString(h.Sum(nil)), tag.RowsAffected()
}

func tableIndex(m *manifest.Manifest, name string) int {
	for i, t := range m.Tables {
		if t.Schema == "public" && t.Name == name {
			return i
		}
	}
	return -1
}

// TestSnapshotMatchesSQLAtSameInstant takes a set while writers change the
// source, at an instant the test also reads with plain SQL, and checks every
// tenant's row counts and digests against that reading.
func TestSnapshotMatchesSQLAtSameInstant(t *testing.T) {
	for _, backend := range []string{"file", "s3"} {
		t.Run(backend, func(t *testing.T) {
			ctx := testenv.Context(t, 3*time.Minute)
			db := testenv.NewDatabase(t)
			fixture.Create(t, db)
			repoURL := "file://" + t.TempDir()
			if backend == "s3" {
				repoURL = testenv.NewS3Repo(t)
			}
			v := openVault(t, ctx, repoURL)

			w := fixture.StartWriter(t, db, []string{"acme", "big", "o'brien & co"}, 2)
			time.Sleep(100 * time.Millisecond)

			// Hold a snapshot of our own; the set imports it.
			reader := testenv.Connect(t, db)
			if _, err := reader.Exec(ctx, tenancy.SessionSQL); err != nil {
				t.Fatal(err)
			}
			if _, err := reader.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ"); err != nil {
				t.Fatal(err)
			}
			var snapName string
			if err := reader.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&snapName); err != nil {
				t.Fatal(err)
			}
			before := w.Commits.Load()
			m, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Snapshot: snapName, Parallel: 3, PackSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			// Set format 2: the tenants are in the index, not in what Run returns.
			if m, err = v.ReadManifest(ctx, m.ID); err != nil {
				t.Fatal(err)
			}
			// Writers kept committing during the snapshot: it took no lock
			// that blocks them.
			if w.Commits.Load() == before {
				t.Fatal("writers stalled during the snapshot")
			}
			w.Stop()
			if err, _ := w.Err.Load().(error); err != nil {
				t.Fatal(err)
			}

			if len(m.Tenants) != len(fixture.Tenants) {
				t.Fatalf("set has %d tenants, want %d", len(m.Tenants), len(fixture.Tenants))
			}
			for _, id := range fixture.Tenants {
				tn := m.Tenant(id)
				if tn == nil {
					t.Fatalf("tenant %q missing from the set", id)
				}
				state, err := fixture.Read(ctx, reader, id)
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]manifest.Chunk{}
				for _, c := range tn.Chunks {
					got[m.Tables[c.Table].Name] = c
				}
				for name, sql := range canonical {
					c, ok := got[name]
					if len(state[name]) == 0 {
						if ok {
							t.Errorf("tenant %q: chunk for empty table %s", id, name)
						}
						continue
					}
					if !ok {
						t.Errorf("tenant %q: no chunk for %s (%d rows in SQL)", id, name, len(state[name]))
						continue
					}
					if c.Rows != int64(len(state[name])) {
						t.Errorf("tenant %q %s: %d rows in set, %d in SQL", id, name, c.Rows, len(state[name]))
					}
					digest, _ := copyDigest(t, ctx, reader, strings.Replace(sql, "%s", tenancy.Literal(id), 1))
					if c.Digest != digest {
						t.Errorf("tenant %q %s: digest %s, SQL gives %s", id, name, c.Digest[:12], digest[:12])
					}
					// The stored chunk decompresses to the digested content.
					rc, err := v.OpenChunk(ctx, m, c)
					if err != nil {
						t.Fatal(err)
					}
					n, err := io.Copy(io.Discard, rc)
					rc.Close()
					if err != nil || n != c.Size {
						t.Errorf("tenant %q %s: read chunk: %d bytes, %v", id, name, n, err)
					}
				}
			}
			// Global tables are captured once.
			for _, name := range []string{"plans", "countries", "audit"} {
				i := tableIndex(m, name)
				if i < 0 || m.Tables[i].Kind != manifest.TableGlobal {
					t.Fatalf("%s should be global", name)
				}
			}
			if i := tableIndex(m, "events_2025"); i >= 0 {
				t.Fatal("partitions must be read through their parent only")
			}
			if m.Tables[tableIndex(m, "task_notes")].Scope == nil || len(m.Tables[tableIndex(m, "task_notes")].Scope.Hops) != 2 {
				t.Fatalf("task_notes should be scoped through two hops: %+v", m.Tables[tableIndex(m, "task_notes")].Scope)
			}
			// The set is listed and its manifest reads back equal.
			ids, err := v.ListSets(ctx)
			if err != nil || len(ids) != 1 || ids[0] != m.ID {
				t.Fatalf("ListSets = %v, %v", ids, err)
			}
		})
	}
}

// TestSnapshotIsConsistent checks the invariant the writers keep (one note
// per writer task, committed together) holds in a set taken on its own
// snapshot while they run.
func TestSnapshotIsConsistent(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	v := openVault(t, ctx, "file://"+t.TempDir())
	w := fixture.StartWriter(t, db, []string{"acme", "globex"}, 3)
	time.Sleep(200 * time.Millisecond)
	m, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if m, err = v.ReadManifest(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	w.Stop()
	// Load the two tables' chunks back and count writer rows.
	for _, id := range []string{"acme", "globex"} {
		tn := m.Tenant(id)
		counts := map[string]int{}
		for _, c := range tn.Chunks {
			name := m.Tables[c.Table].Name
			if name != "tasks" && name != "task_notes" {
				continue
			}
			rc, err := v.OpenChunk(ctx, m, c)
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			counts[name] = strings.Count(string(data), "writer task") + strings.Count(string(data), "writer note")
		}
		if counts["tasks"] != counts["task_notes"] {
			t.Errorf("tenant %s: %d writer tasks but %d writer notes: the set is not consistent", id, counts["tasks"], counts["task_notes"])
		}
		t.Logf("tenant %s: %d writer tasks captured", id, counts["tasks"])
	}
}

// TestIncremental checks that an unchanged tenant's chunks are referenced,
// not stored again, and a changed tenant's are stored.
func TestIncremental(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	v := openVault(t, ctx, "file://"+t.TempDir())
	first, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `UPDATE projects SET budget = budget + 1 WHERE tenant_id = 'globex'`)
	second, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if second, err = v.ReadManifest(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	for _, tn := range second.Tenants {
		for _, c := range tn.Chunks {
			name := second.Tables[c.Table].Name
			changed := tn.ID == "globex" && name == "projects"
			if c.Reused == changed {
				t.Errorf("tenant %q table %s: reused=%v", tn.ID, name, c.Reused)
			}
		}
	}
	if second.Stats.Written*5 > first.Stats.Written {
		t.Errorf("second set wrote %d bytes, first %d: not incremental", second.Stats.Written, first.Stats.Written)
	}
	t.Logf("first set wrote %d bytes, second %d (%d chunks reused of %d)", first.Stats.Written, second.Stats.Written, second.Stats.ReusedChunks, second.Stats.Chunks)
}

func TestSnapshotBadInput(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	dir := t.TempDir()
	v := openVault(t, ctx, "file://"+dir)
	cases := []struct {
		name string
		o    snapshot.Options
		want string
	}{
		{"unknown tenant", snapshot.Options{Source: db, Tenants: []string{"acme", "nobody", "nor me"}}, `2 unknown tenant(s) in source database`},
		{"no tenant column", snapshot.Options{Source: db, Tenancy: tenancy.Config{TenantColumn: "org_id"}}, `no table has a column named "org_id"`},
		{"no tenant table", snapshot.Options{Source: db, Tenancy: tenancy.Config{TenantTable: "orgs"}}, `--tenant-table: no table "orgs"`},
		{"bad model", snapshot.Options{Source: db, Tenancy: tenancy.Config{Model: "row"}}, `unknown tenancy model "row"`},
		{"bad url", snapshot.Options{Source: "postgres://u:secret@[::1"}, "bad database URL"},
		{"wrong password", snapshot.Options{Source: strings.Replace(db, "postgres@", "nobody:secret@", 1)}, `cannot connect to`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.Vault = v
			_, err := snapshot.Run(ctx, c.o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			var ie *tenantvault.InputError
			if !errors.As(err, &ie) {
				t.Fatalf("err %v is not an input error", err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error leaks a password: %v", err)
			}
			ids, _ := v.ListSets(ctx)
			if len(ids) != 0 {
				t.Fatalf("a set was listed after a failed snapshot: %v", ids)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		_, err := snapshot.Run(ctx, snapshot.Options{Source: "postgres://postgres@127.0.0.1:1/x?connect_timeout=5", Vault: v})
		if err == nil || !strings.Contains(err.Error(), "cannot connect to 127.0.0.1:1/x") {
			t.Fatalf("err = %v", err)
		}
		var ie *tenantvault.InputError
		if errors.As(err, &ie) {
			t.Fatalf("unreachable should be an operational error, got input error %v", err)
		}
	})
}
