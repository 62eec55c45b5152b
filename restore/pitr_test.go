package restore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// serverNow reads the source's clock: restore --at compares with commit
// times, which the server stamps.
func serverNow(t testing.TB, ctx context.Context, db string) time.Time {
	t.Helper()
	var now time.Time
	if err := testenv.Connect(t, db).QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// waitArchived waits until the change log reaches the source's clock at
// call time.
func waitArchived(t testing.TB, ctx context.Context, v *vault.Vault, db string) {
	t.Helper()
	target := serverNow(t, ctx, db)
	var sys string
	testenv.Connect(t, db).QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sys)
	cfg, _ := tenancy.ParseURL(db)
	stream := vault.StreamName(sys, cfg.Database)
	for ctx.Err() == nil {
		_, until, err := v.ArchivedUntil(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if !until.Before(target) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the change log never caught up")
}

// startCapture runs the change capture on db into v (fast flushes) until
// the returned stop is called, and returns once its slot exists, so a set
// taken next is continued by the log.
func startCapture(t *testing.T, ctx context.Context, db string, v *vault.Vault, stats *capture.Stats) (stop func()) {
	t.Helper()
	return startCaptureWith(t, ctx, capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, Stats: stats})
}

// startCaptureWith is startCapture with more options; flushes are fast
// unless o says otherwise.
func startCaptureWith(t *testing.T, ctx context.Context, o capture.Options) (stop func()) {
	t.Helper()
	if o.FlushInterval == 0 {
		o.FlushInterval = 200 * time.Millisecond
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 200 * time.Millisecond
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- capture.Run(cctx, o) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("capture: %v", err)
		}
		if err := capture.DropSlot(context.Background(), o.Source, ""); err != nil {
			t.Errorf("drop slot: %v", err)
		}
	}
	conn := testenv.Connect(t, o.Source)
	for {
		// The cluster is shared: only this database's slot counts.
		var n int
		conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantvault_%' AND database = current_database() AND confirmed_flush_lsn IS NOT NULL").Scan(&n)
		if n > 0 {
			return stop
		}
		select {
		case err := <-done:
			t.Fatalf("capture stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestPointInTime writes to several tenants at known times while the
// change log runs, then restores one tenant to moments between its changes
// (across a set boundary, and to just before it was deleted) and compares
// with what plain SQL read at each moment.
func TestPointInTime(t *testing.T) {
	ctx := testenv.Context(t, 4*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	v, _ := openVault(t, ctx, testenv.NewS3Repo(t))

	// Without permission to widen replica identities, capture refuses and
	// says which tables and how.
	err := capture.Run(ctx, capture.Options{Source: db, Vault: v})
	if err == nil || !strings.Contains(err.Error(), "public.task_notes has no replica identity") {
		t.Fatalf("capture without replica identity: %v", err)
	}

	stats := &capture.Stats{}
	defer startCapture(t, ctx, db, v, stats)()
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, ExactLSN: true}); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Connect(t, db)
	var states []fixture.State
	var times []time.Time
	mark := func() {
		time.Sleep(20 * time.Millisecond)
		st, err := fixture.Read(ctx, conn, "acme")
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, st)
		times = append(times, serverNow(t, ctx, db))
		time.Sleep(20 * time.Millisecond)
	}
	mark() // 0: as in the first set
	testenv.Exec(t, db, `UPDATE projects SET budget = 1, settings = '{"changed": true}' WHERE tenant_id = 'acme' AND id = (SELECT min(id) FROM projects WHERE tenant_id = 'acme');
UPDATE projects SET name = 'other tenant' WHERE tenant_id = 'globex'`)
	mark() // 1
	testenv.Exec(t, db, `INSERT INTO tasks (project_id, title, blob) SELECT id, 'pitr task', '\xdeadbeef' FROM projects WHERE tenant_id = 'acme';
INSERT INTO task_notes (task_id, note) SELECT id, 'pitr note' FROM tasks WHERE title LIKE 'pitr task%';
INSERT INTO users (tenant_id, email) VALUES ('acme', 'pitr@acme.example')`)
	mark() // 2
	// A set in the middle: later restores start from it.
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, ExactLSN: true}); err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `DELETE FROM task_notes WHERE note = 'note 2' AND task_id IN (SELECT t.id FROM tasks t JOIN projects p ON p.id = t.project_id WHERE p.tenant_id = 'acme');
UPDATE tasks SET done = NOT coalesce(done, false) WHERE project_id IN (SELECT id FROM projects WHERE tenant_id = 'acme');
DELETE FROM events WHERE tenant_id = 'acme' AND id = 1`)
	mark() // 3
	time.Sleep(1500 * time.Millisecond)
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	deleted := serverNow(t, ctx, db)
	waitArchived(t, ctx, v, db)

	check := func(at time.Time, want fixture.State, what string) {
		t.Helper()
		testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
		rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"acme"}, Select: restore.Selector{At: at}})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, err := fixture.Read(ctx, conn, "acme")
		if err != nil {
			t.Fatal(err)
		}
		if d := fixture.Diff(want, got); d != "" {
			t.Fatalf("%s (set %s): tenant differs from the state at %s:\n%s", what, rep.Tenants[0].Set, at.Format(time.RFC3339Nano), d)
		}
	}
	check(times[1], states[1], "between the first and second change")
	check(times[2], states[2], "after inserts through foreign-key chains")
	check(times[3], states[3], "across a set boundary")
	check(deleted.Add(-time.Second), states[3], "one second before the tenant was deleted")
	// Other tenants kept their rows and their own changes.
	var name string
	conn.QueryRow(ctx, "SELECT name FROM projects WHERE tenant_id = 'globex' ORDER BY id LIMIT 1").Scan(&name)
	if name != "other tenant" {
		t.Fatalf("globex's row: %q", name)
	}
	if stats.Records.Load() == 0 || stats.Segments.Load() == 0 {
		t.Fatalf("stats: %d records in %d segments", stats.Records.Load(), stats.Segments.Load())
	}
	t.Logf("capture: %d records (%d shared) in %d segments", stats.Records.Load(), stats.Shared.Load(), stats.Segments.Load())

	// The log proves itself: replaying from the first set to the second
	// gives the second set's digests, for every tenant.
	checks, err := restore.VerifyReplay(ctx, restore.VerifyReplayOptions{Vault: v, Scratch: testenv.PostgresURL(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 1 || checks[0].Skipped != "" || len(checks[0].Problems) > 0 || checks[0].Tenants != len(fixture.Tenants) {
		t.Fatalf("verify replay: %+v", checks)
	}

	// A time the log has not reached yet is refused.
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"acme"}, Select: restore.Selector{At: time.Now().Add(time.Hour)}, DryRun: true})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "are archived up to") {
		t.Fatalf("restore to the future: %v", err)
	}
}

// TestPointInTimeEncrypted: with an encrypted repository the change log is
// encrypted too. The capture holds only the recipient and a signing key,
// no stored object holds a value written to the source, and restore --at
// needs the identity.
func TestPointInTimeEncrypted(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	idText, signText, _, _, err := vault.NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	reader, err := vault.ParseKeyFile(strings.NewReader(idText))
	if err != nil {
		t.Fatal(err)
	}
	writer, err := vault.ParseKeyFile(strings.NewReader(signText))
	if err != nil {
		t.Fatal(err)
	}
	b, err := repo.Open(ctx, testenv.NewS3Repo(t), repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w, err := vault.Open(ctx, b, vault.Options{Init: true, Keys: writer})
	if err != nil {
		t.Fatal(err)
	}

	stopCapture := startCapture(t, ctx, db, w, nil)
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: w, ExactLSN: true}); err != nil {
		stopCapture()
		t.Fatal(err)
	}
	const marker = "PITR-PLAINTEXT-MARKER-41c9"
	testenv.Exec(t, db, `UPDATE projects SET name = '`+marker+`' WHERE tenant_id = 'acme'`)
	time.Sleep(20 * time.Millisecond)
	conn := testenv.Connect(t, db)
	want, err := fixture.Read(ctx, conn, "acme")
	if err != nil {
		t.Fatal(err)
	}
	at := serverNow(t, ctx, db)
	waitArchived(t, ctx, w, db)
	stopCapture()

	var segments int
	err = b.List(ctx, "", func(o repo.ObjectInfo) error {
		data, err := repo.ReadAll(ctx, b, o.Key)
		if err != nil {
			return err
		}
		if strings.HasPrefix(o.Key, vault.ChangesPrefix) && strings.HasSuffix(o.Key, ".seg") {
			segments++
		}
		if strings.Contains(string(data), marker) {
			t.Errorf("%s holds the plaintext marker", o.Key)
		}
		return nil
	})
	if err != nil || segments == 0 {
		t.Fatalf("listing: %d segments, %v", segments, err)
	}

	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	_, err = restore.Run(ctx, restore.Options{Vault: w, Target: db, Tenants: []string{"acme"}, Select: restore.Selector{At: at}})
	if !errors.Is(err, vault.ErrNoIdentity) {
		t.Fatalf("restore without the identity: %v", err)
	}
	r, err := vault.Open(ctx, b, vault.Options{Keys: reader})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := restore.Run(ctx, restore.Options{Vault: r, Target: db, Tenants: []string{"acme"}, Select: restore.Selector{At: at}}); err != nil {
		t.Fatal(err)
	}
	got, err := fixture.Read(ctx, conn, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if d := fixture.Diff(want, got); d != "" {
		t.Fatalf("tenant differs from its state at %s:\n%s", at.Format(time.RFC3339Nano), d)
	}
}
