package capture_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// BenchmarkArchiveLag runs a steady writer (about 500 transactions a
// second over three tenants) for five seconds against a capture with the
// default 5 s flush interval into MinIO, and reports how old a committed
// change is when its segment is stored: the recovery point objective.
//
//	scripts/services.sh go test ./capture -run '^$' -bench ArchiveLag -benchtime 1x
func BenchmarkArchiveLag(b *testing.B) {
	ctx := testenv.Context(b, 5*time.Minute)
	db := testenv.NewDatabase(b)
	testenv.Exec(b, db, schema+`ALTER TABLE lines REPLICA IDENTITY FULL;`)
	bk, err := repo.Open(ctx, testenv.NewS3Repo(b), repo.Options{})
	if err != nil {
		b.Fatal(err)
	}
	v, err := vault.Open(ctx, bk, vault.Options{Init: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	for range b.N {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true}) }()
		time.Sleep(time.Second)
		stop := make(chan struct{})
		committed := writer(b, db, stop)
		time.Sleep(5 * time.Second)
		close(stop)
		n := len(committed())
		time.Sleep(6 * time.Second) // one more flush
		cancel()
		<-done

		var sys string
		testenv.Connect(b, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
		cfg, _ := tenancy.ParseURL(db)
		stream := vault.StreamName(sys, cfg.Database)
		refs, _ := v.ListSegments(ctx, stream)
		var lags []float64
		for _, ref := range refs {
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil || idx.Records == 0 {
				continue
			}
			info, err := bk.Stat(ctx, idx.Key())
			if err != nil {
				b.Fatal(err)
			}
			// The oldest change in a segment waited longest.
			lags = append(lags, info.ModTime.Sub(idx.First).Seconds())
		}
		sort.Float64s(lags)
		if len(lags) > 0 {
			b.ReportMetric(lags[len(lags)/2], "p50_lag_s")
			b.ReportMetric(lags[len(lags)-1], "max_lag_s")
		}
		b.ReportMetric(float64(n)/5, "tx/s")
	}
}
