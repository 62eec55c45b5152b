package drill

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/tenancy"
)

// TestDrillChecksFindDamage damages a database in the ways the checks exist for,
// behind the server's back as a faulty restore or storage would, and
// expects each damage found, named and left in place.
func TestDrillChecksFindDamage(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `
CREATE SCHEMA t1;
CREATE TABLE t1.parent (id int PRIMARY KEY);
CREATE TABLE t1.child (id int PRIMARY KEY, parent int REFERENCES t1.parent(id), n int);
CREATE TABLE t1.clean (id int PRIMARY KEY, parent int REFERENCES t1.parent(id), CHECK (id > 0));
INSERT INTO t1.parent VALUES (1);
INSERT INTO t1.clean VALUES (1, 1);
-- Loaded with triggers off, as restore loads: the reference is not checked.
SET session_replication_role = replica;
INSERT INTO t1.child VALUES (1, 1, 5), (2, 99, -5);
SET session_replication_role = origin;
-- A CHECK the catalog calls valid though a row breaks it.
ALTER TABLE t1.child ADD CONSTRAINT child_n_positive CHECK (n > 0) NOT VALID;
UPDATE pg_constraint SET convalidated = true WHERE conname = 'child_n_positive';
-- NOT VALID in the source too: not checked, and said so.
ALTER TABLE t1.child ADD CONSTRAINT child_n_small CHECK (n < 0) NOT VALID;
-- An index over a function that changed after it was built.
CREATE FUNCTION public.f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
CREATE TABLE t1.keyed (id int);
INSERT INTO t1.keyed SELECT generate_series(1, 500);
CREATE INDEX keyed_f ON t1.keyed (public.f(id));
CREATE OR REPLACE FUNCTION public.f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT -$1';`)
	cfg, err := tenancy.ParseURL(db)
	if err != nil {
		t.Fatal(err)
	}
	owner := func(schema string) string {
		if schema == "t1" {
			return "tenant one"
		}
		return ""
	}
	dc, err := checkDatabase(ctx, cfg, owner)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		CheckForeignKey: `t1.child_parent_fkey: insert or update on table "child" violates foreign key constraint "child_parent_fkey" (Key (parent)=(99) is not present in table "parent".) [SQLSTATE 23503]`,
		CheckConstraint: `t1.child_n_positive: check constraint "child_n_positive" of relation "child" is violated by some row [SQLSTATE 23514]`,
		CheckIndex:      `t1.keyed_f: `,
	}
	found := map[string]bool{}
	for _, p := range dc.Problems {
		w, ok := want[p.Check]
		if !ok || !strings.HasPrefix(p.Object+": "+p.Message, w) || p.Tenant != "tenant one" || found[p.Check] {
			t.Errorf("unexpected problem: %+v", p)
		}
		found[p.Check] = true
	}
	for kind := range want {
		if !found[kind] {
			t.Errorf("no %s problem found; problems: %+v", kind, dc.Problems)
		}
	}
	if dc.ForeignKeys != 2 || dc.Constraints != 2 || dc.Indexes != 4 {
		t.Errorf("counted %d foreign keys, %d check constraints, %d indexes; want 2, 2, 4", dc.ForeignKeys, dc.Constraints, dc.Indexes)
	}
	if !slices.Equal(dc.Skipped, []string{"check constraint t1.child_n_small: NOT VALID in the snapshot's schema"}) {
		t.Errorf("skipped: %q", dc.Skipped)
	}
	// Everything the checks did was rolled back.
	var n int
	conn := testenv.Connect(t, db)
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE conrelid = 't1.child'::regclass`).Scan(&n); err != nil || n != 4 {
		t.Errorf("t1.child has %d constraints after the checks (%v), want 4", n, err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("amcheck left installed: %d, %v", n, err)
	}
}
