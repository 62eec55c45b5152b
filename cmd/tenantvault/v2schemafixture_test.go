package main

import (
	"fmt"
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
		out = expect(t, 0, "", "restore", "--repo", r, "--target", dst, "--tenant", s, "--create-schema", "--yes")
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
		out = expect(t, 0, "", "restore", "--repo", r, "--target", dst, "--tenant", s, "--create-schema", "--yes", "--identity", identity)
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
