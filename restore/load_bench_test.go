package restore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/bench/datagen"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/vault"
)

// BenchmarkRestoreTenant measures restoring one tenant into a live
// database on the test server (scripts/services.sh): plan, load with COPY,
// foreign-key checks, digests, commit. The database is a generated issue
// tracker of 50 tenants and 40 MB; the tenant is the largest (about a
// fifth of the data) or the median one. Deleting the tenant between
// iterations is not timed.
//
//	TENANTVAULT_SERVICES=postgres scripts/services.sh go test -run '^$' -bench RestoreTenant -benchmem ./restore/
func BenchmarkRestoreTenant(b *testing.B) {
	ctx := context.Background()
	db := testenv.NewDatabase(b)
	if _, err := datagen.Generate(ctx, db, datagen.Options{Tenants: 50, TargetBytes: 40 << 20, Seed: 1}); err != nil {
		b.Fatal(err)
	}
	sizes, err := datagen.TenantSizes(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	v := openBenchVault(b, ctx)
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, TempDir: b.TempDir()}); err != nil {
		b.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, c := range []struct {
		name string
		t    datagen.TenantSize
	}{{"largest", sizes[0]}, {"median", sizes[len(sizes)/2]}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var bytes int64
			for b.Loop() {
				b.StopTimer()
				if _, err := conn.Exec(ctx, "DELETE FROM public.tenants WHERE id = $1", c.t.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{c.t.ID}, Parallel: 1})
				if err != nil {
					b.Fatal(err)
				}
				bytes = rep.Tenants[0].Bytes
			}
			b.SetBytes(bytes)
			b.ReportMetric(float64(c.t.Rows), "rows")
		})
	}
}

func openBenchVault(b *testing.B, ctx context.Context) *vault.Vault {
	b.Helper()
	be, err := repo.Open(ctx, "file://"+b.TempDir(), repo.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	v, err := vault.Open(ctx, be, vault.Options{Init: true})
	if err != nil {
		b.Fatal(err)
	}
	return v
}
