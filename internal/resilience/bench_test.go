package resilience_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/vault"
)

// BenchmarkEncryptionEndToEnd measures what client-side encryption costs a
// whole snapshot (every chunk stored: --full) and a whole restore (every
// tenant, schema included, into an empty database), against the real
// PostgreSQL, into a file repository. MB/s are of uncompressed table data.
//
//	scripts/services.sh go test -run '^$' -bench EndToEnd -benchtime 5x ./internal/resilience/
func BenchmarkEncryptionEndToEnd(b *testing.B) {
	src := testenv.NewDatabase(b)
	testenv.Exec(b, src, fixture.Schema)
	testenv.Exec(b, src, `INSERT INTO plans VALUES ('free', 0), ('pro', 49.90), ('enterprise', 1999.00);
INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('US', 'United States');
ALTER TABLE tasks DISABLE TRIGGER tasks_touch;`)
	var tenants []string
	for i := range 12 {
		id := fmt.Sprintf("tenant-%02d", i)
		fixture.Populate(b, src, id, i, 300)
		tenants = append(tenants, id)
	}
	testenv.Exec(b, src, `ALTER TABLE tasks ENABLE TRIGGER tasks_touch; ANALYZE`)
	ctx := context.Background()
	// Warm up PostgreSQL's caches, so that the first mode measured does
	// not pay for it.
	{
		be, _ := repo.Open(ctx, "file://"+filepath.Join(b.TempDir(), "warm"), repo.Options{Create: true})
		v, _ := vault.Open(ctx, be, vault.Options{Init: true})
		if _, err := snapshot.Run(ctx, snapshot.Options{Source: src, Vault: v, Full: true, TempDir: b.TempDir(), Logger: quiet}); err != nil {
			b.Fatal(err)
		}
		if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: testenv.NewDatabase(b), Tenants: tenants, CreateSchema: true, Logger: quiet}); err != nil {
			b.Fatal(err)
		}
		be.Close()
	}
	// Both modes run in every iteration, in alternating order, so that
	// drift in the machine's load (other processes, caches) hits both
	// alike; the metrics are each mode's throughput and the overhead.
	type mode struct {
		name string
		w, r *vault.Vault
		be   repo.Backend
		took [2]time.Duration // snapshot, restore
	}
	var modes []*mode
	for _, enc := range []bool{false, true} {
		m := &mode{name: "plaintext"}
		var ks keys
		if enc {
			m.name, ks = "encrypted", newKeys(b)
		}
		var err error
		if m.be, err = repo.Open(ctx, "file://"+filepath.Join(b.TempDir(), m.name), repo.Options{Create: true}); err != nil {
			b.Fatal(err)
		}
		defer m.be.Close()
		if m.w, err = vault.Open(ctx, m.be, vault.Options{Init: true, Keys: ks.writer}); err != nil {
			b.Fatal(err)
		}
		if m.r, err = vault.Open(ctx, m.be, vault.Options{Keys: ks.reader}); err != nil {
			b.Fatal(err)
		}
		modes = append(modes, m)
	}
	var size int64
	report := func(b *testing.B, phase int) {
		var tp [2]float64
		for i, m := range modes {
			tp[i] = float64(size) * float64(b.N) / m.took[phase].Seconds() / 1e6
			b.ReportMetric(tp[i], m.name+"-MB/s")
		}
		b.ReportMetric((tp[0]/tp[1]-1)*100, "overhead-%")
	}
	b.Run("snapshot", func(b *testing.B) {
		i := 0
		for b.Loop() {
			for k := range modes {
				m := modes[(i+k)%2]
				start := time.Now()
				set, err := snapshot.Run(ctx, snapshot.Options{Source: src, Vault: m.w, Full: true, TempDir: b.TempDir(), Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				m.took[0] += time.Since(start)
				size = set.Stats.Size
			}
			i++
		}
		report(b, 0)
	})
	b.Run("restore", func(b *testing.B) {
		i := 0
		for b.Loop() {
			for k := range modes {
				m := modes[(i+k)%2]
				dst := testenv.NewDatabase(b)
				start := time.Now()
				if _, err := restore.Run(ctx, restore.Options{Vault: m.r, Target: dst, Tenants: tenants, CreateSchema: true, Parallel: 2, Logger: quiet}); err != nil {
					b.Fatal(err)
				}
				m.took[1] += time.Since(start)
			}
			i++
		}
		report(b, 1)
	})
}
