package snapshot_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/snapshot"
)

// TestSpilledSnapshot: a snapshot whose tables spill their chunk references
// to temporary files (as they do with thousands of tenants) writes the same
// tenants, chunks and digests as one that keeps them in memory, in the same
// order, also when the database's collation orders tenant IDs differently
// from byte order (the fixture's odd IDs: "Ünïcödé GmbH", "a/../b").
func TestSpilledSnapshot(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	v := openVault(t, ctx, "file://"+t.TempDir())
	describe := func(m *manifest.Manifest) []string {
		var out []string
		for _, tn := range m.Tenants {
			for _, c := range tn.Chunks {
				out = append(out, fmt.Sprintf("%s %s %d %s", tn.ID, m.Tables[c.Table].QualifiedName(), c.Rows, c.Digest))
			}
		}
		return out
	}
	take := func() []string {
		t.Helper()
		m, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Full: true, TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if m, err = v.ReadManifest(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		return describe(m)
	}
	inMemory := take()
	defer snapshot.SetSpillAt(1)()
	spilled := take()
	if len(inMemory) == 0 || fmt.Sprint(inMemory) != fmt.Sprint(spilled) {
		t.Fatalf("spilled set differs:\n%v\n%v", inMemory, spilled)
	}
}
