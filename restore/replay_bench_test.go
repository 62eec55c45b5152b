package restore_test

import (
	"context"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
)

// BenchmarkReplay measures how fast restore applies a tenant's archived
// changes on top of its set: 30,000 changes (inserts, updates, deletes)
// after the set, replayed into the live database.
//
//	scripts/services.sh go test ./restore -run '^$' -bench Replay -benchtime 1x
func BenchmarkReplay(b *testing.B) {
	ctx := testenv.Context(b, 10*time.Minute)
	db := testenv.NewDatabase(b)
	testenv.Exec(b, db, `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE, n int, body text);
CREATE TABLE notes (id bigserial PRIMARY KEY, item_id bigint NOT NULL REFERENCES items ON DELETE CASCADE, body text);
ALTER TABLE items REPLICA IDENTITY FULL; ALTER TABLE notes REPLICA IDENTITY FULL;
INSERT INTO tenants VALUES ('a'), ('b');
INSERT INTO items (tenant_id, n, body) SELECT 'a', g, repeat('x', 200) FROM generate_series(1, 1000) g;`)
	v, _ := openVault(b, ctx, testenv.NewS3Repo(b))
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- capture.Run(cctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, FlushInterval: 500 * time.Millisecond, Heartbeat: 500 * time.Millisecond})
	}()
	defer func() {
		stop()
		<-done
		capture.DropSlot(context.Background(), db, "")
	}()
	time.Sleep(1500 * time.Millisecond)
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, ExactLSN: true}); err != nil {
		b.Fatal(err)
	}
	// 10,000 inserts, 10,000 notes through the foreign key, 5,000 updates,
	// 5,000 deletes, in 100-row transactions.
	for i := range 100 {
		testenv.Exec(b, db, `INSERT INTO items (tenant_id, n, body) SELECT 'a', g, repeat('y', 200) FROM generate_series(1, 100) g;
INSERT INTO notes (item_id, body) SELECT id, 'note' FROM items WHERE tenant_id = 'a' ORDER BY id DESC LIMIT 100;`)
		if i%2 == 0 {
			testenv.Exec(b, db, `UPDATE items SET n = n + 1 WHERE id IN (SELECT id FROM items WHERE tenant_id = 'a' ORDER BY id DESC LIMIT 100);
DELETE FROM notes WHERE id IN (SELECT id FROM notes ORDER BY id LIMIT 100);`)
		}
	}
	at := time.Now()
	time.Sleep(3 * time.Second)
	waitArchived(b, ctx, v, db)
	b.ResetTimer()
	for range b.N {
		testenv.Exec(b, db, `DELETE FROM tenants WHERE id = 'a'`)
		start := time.Now()
		rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"a"}, Select: restore.Selector{At: at}})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(30000/time.Since(start).Seconds(), "changes/s")
		b.ReportMetric(float64(rep.Tenants[0].Rows), "rows")
	}
}
