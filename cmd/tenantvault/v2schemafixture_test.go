package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/internal/testenv"
)

// testdata/v2schema/plain was written by the tenantvault of commit
// 2970b06, before set format 3 and split schema SQL existed: one set of the
// schema model (schemas tenant_acme, tenant_globex and tenant_o'brien, each
// with customers and orders, three rows each; a shared schema with an
// enum and a settings table), in set format 2, whose header lists every
// table and whose schema is one pg_dump archive. This build must still
// list, verify and restore it (from the archive, with pg_restore).
func TestReadV2SchemaFixture(t *testing.T) {
	r := "file://" + copyTree(t, filepath.Join("testdata", "v2schema", "plain"))
	out := expect(t, 0, "", "list", "--repo", r)
	if !strings.Contains(out, "20261202T033837.209Z-51cb7db3") {
		t.Fatalf("list:\n%s", out)
	}
	out = expect(t, 0, "", "verify", "--repo", r, "--read-data")
	if !strings.Contains(out, "0 problem(s)") {
		t.Fatalf("verify:\n%s", out)
	}
	restoreFixtureSchemas(t, r)
}

// testdata/v2schema/encrypted was written by the tenantvault of commit
// 7326581, before encrypted repositories split their schema SQL: the same
// schema-model database as testdata/v2schema/plain (three rows per table),
// snapshotted into an encrypted repository (format version 2) in set
// format 3 with per-tenant keys and one sealed pg_dump archive, no split.
// encrypted-restore.key is its test-only identity file. This build must
// still list, verify (with and without the identity) and restore it, from
// the archive.
func TestReadV2EncryptedSchemaFixture(t *testing.T) {
	r := "file://" + copyTree(t, filepath.Join("testdata", "v2schema", "encrypted"))
	identity := filepath.Join("testdata", "v2schema", "encrypted-restore.key")
	out := expect(t, 0, "", "list", "--repo", r, "--identity", identity)
	if !strings.Contains(out, "20261202T121901.517Z-aee898ee") {
		t.Fatalf("list:\n%s", out)
	}
	for _, args := range [][]string{{"--read-data"}, {"--read-data", "--identity", identity}} {
		out = expect(t, 0, "", append([]string{"verify", "--repo", r}, args...)...)
		if !strings.Contains(out, "0 problem(s)") {
			t.Fatalf("verify %v:\n%s", args, out)
		}
	}
	restoreFixtureSchemas(t, r, "--identity", identity)
}

// TestEncryptedSchemaSplitCLI: a schema-model snapshot into an encrypted
// repository splits and seals its schema SQL; verify passes with and
// without the identity (and --read-data), and a damaged split object makes
// verify --read-data and a one-schema restore fail with exit code 3.
func TestEncryptedSchemaSplitCLI(t *testing.T) {
	dir := t.TempDir()
	identity, signing, recipient := keygen(t, dir)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TABLE shared.plans (id int PRIMARY KEY);
CREATE SCHEMA "tenant_o'brien"; CREATE TABLE "tenant_o'brien".items (id int PRIMARY KEY, plan int REFERENCES shared.plans);
CREATE SCHEMA tenant_b; CREATE TABLE tenant_b.items (id int PRIMARY KEY);
INSERT INTO shared.plans VALUES (1); INSERT INTO "tenant_o'brien".items VALUES (1, 1), (2, 1); INSERT INTO tenant_b.items VALUES (7);`)
	repoDir := filepath.Join(dir, "repo")
	r := "file://" + repoDir
	expect(t, 0, "", "snapshot", "--source", db, "--repo", r, "--init", "--tenancy", "schema", "--schema-pattern", "tenant_%", "--recipient", recipient, "--signing-key", signing)
	parts, _ := filepath.Glob(filepath.Join(repoDir, "schemas", "*.parts"))
	if len(parts) != 1 {
		t.Fatalf("split objects: %v", parts)
	}
	for _, args := range [][]string{nil, {"--read-data"}, {"--read-data", "--identity", identity}} {
		if out := expect(t, 0, "", append([]string{"verify", "--repo", r}, args...)...); !strings.Contains(out, "0 problem(s)") {
			t.Fatalf("verify %v:\n%s", args, out)
		}
	}
	dst := testenv.NewDatabase(t)
	expect(t, 0, "", "restore", "--repo", r, "--target", dst, "--tenant", "tenant_o'brien", "--create-schema", "--yes", "--identity", identity)
	var got string
	if err := testenv.Connect(t, dst).QueryRow(testenv.Context(t, time.Minute), `SELECT string_agg(id::text || ':' || plan, ',' ORDER BY id) FROM "tenant_o'brien".items`).Scan(&got); err != nil || got != "1:1,2:1" {
		t.Fatalf("restored rows %q, %v", got, err)
	}
	data, err := os.ReadFile(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := 27; i < len(data); i++ {
		data[i] ^= 0x01
	}
	if err := os.WriteFile(parts[0], data, 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, 3, "", "verify", "--repo", r, "--read-data")
	expect(t, 3, "damaged", "restore", "--repo", r, "--target", testenv.NewDatabase(t), "--tenant", "tenant_o'brien", "--create-schema", "--yes", "--identity", identity)
}

// restoreFixtureSchemas restores tenant_globex into an empty database, then
// tenant_o'brien into it (live), from a v2schema fixture, and checks their
// rows and that no other tenant schema was created.
func restoreFixtureSchemas(t *testing.T, r string, extra ...string) {
	t.Helper()
	want := func(s string) string {
		var c []string
		for i := 1; i <= 3; i++ {
			c = append(c, fmt.Sprintf("(%d,\"customer of %s %d\",gold)", i, s, i))
		}
		return strings.Join(c, "|") + "\n" + `(1,1,10.50,"a	b")|(2,2,21.00,"a	b")|(3,3,31.50,"a	b")`
	}
	dst := testenv.NewDatabase(t)
	ctx := testenv.Context(t, 2*time.Minute)
	rows := func(s string) string {
		conn := testenv.Connect(t, dst)
		var a, b string
		for i, table := range []string{"customers", "orders"} {
			q := fmt.Sprintf("SELECT string_agg(t::text, '|' ORDER BY t::text) FROM %s t", pgx.Identifier{s, table}.Sanitize())
			if err := conn.QueryRow(ctx, q).Scan(map[int]*string{0: &a, 1: &b}[i]); err != nil {
				return err.Error()
			}
		}
		return a + "\n" + b
	}
	// Into an empty database, then one more schema into it (live).
	for _, s := range []string{"tenant_globex", "tenant_o'brien"} {
		out := expect(t, 0, "", append([]string{"restore", "--repo", r, "--target", dst, "--tenant", s, "--create-schema", "--yes"}, extra...)...)
		if !strings.Contains(out, "restored 1 of 1 tenant(s)") {
			t.Fatalf("restore %s:\n%s", s, out)
		}
		if got := rows(s); got != want(s) {
			t.Errorf("%s:\n got %s\nwant %s", s, got, want(s))
		}
	}
	var schemas string
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&schemas); err != nil || schemas != "shared,tenant_globex,tenant_o'brien" {
		t.Fatalf("schemas: %s, %v", schemas, err)
	}
}
