package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/triage"
	"github.com/tenantvault/tenantvault/vault"
)

// clock reads the source's clock: windows and --at compare with commit
// times, which the server stamps.
func clock(t *testing.T, db string) time.Time {
	t.Helper()
	var now time.Time
	if err := testenv.Connect(t, db).QueryRow(context.Background(), "SELECT clock_timestamp()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now.UTC()
}

// runCapture archives db's changes into repoURL (fast flushes) until the
// returned stop is called; it returns once the slot exists, so a set taken
// next is continued by the log. tc, when given, is the source's tenancy.
func runCapture(t *testing.T, ctx context.Context, db, repoURL string, keys *vault.Keys, tc ...tenancy.Config) (v *vault.Vault, stop func()) {
	t.Helper()
	b, err := repo.Open(ctx, repoURL, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err = vault.Open(ctx, b, vault.Options{Init: true, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		o := capture.Options{Source: db, Vault: v, SetReplicaIdentity: true, FlushInterval: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond}
		if len(tc) > 0 {
			o.Tenancy = tc[0]
		}
		done <- capture.Run(cctx, o)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		// A stop may land in the middle of a query: that is not a failure.
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("capture: %v", err)
		}
		if err := capture.DropSlot(context.Background(), db, ""); err != nil {
			t.Errorf("drop slot: %v", err)
		}
	}
	t.Cleanup(stop)
	conn := testenv.Connect(t, db) // one connection for the whole wait
	for {
		var n int
		conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantvault_%' AND database = current_database() AND confirmed_flush_lsn IS NOT NULL").Scan(&n)
		if n > 0 {
			return v, stop
		}
		select {
		case err := <-done:
			t.Fatalf("capture stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitLog waits until the change log reaches the source's clock now.
func waitLog(t *testing.T, ctx context.Context, v *vault.Vault, db string) {
	t.Helper()
	target := clock(t, db)
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

func readStates(t *testing.T, db string, tenants []string) map[string]fixture.State {
	t.Helper()
	ctx := context.Background()
	conn := testenv.Connect(t, db)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		t.Fatal(err)
	}
	out := map[string]fixture.State{}
	for _, id := range tenants {
		st, err := fixture.Read(ctx, tx, id)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = st
	}
	return out
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines
}

func sameSet(got, want []string) bool {
	g, w := append([]string(nil), got...), append([]string(nil), want...)
	sort.Strings(g)
	sort.Strings(w)
	return strings.Join(g, "\x00") == strings.Join(w, "\x00")
}

type diffJSON struct {
	Tenants []triage.TenantDiff `json:"tenants"`
	Classes map[string]int      `json:"classes"`
	Exact   bool                `json:"exact"`
}

func statuses(t *testing.T, out string) map[string]string {
	t.Helper()
	var d diffJSON
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("diff --json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, td := range d.Tenants {
		m[td.Tenant] = td.Status
	}
	return m
}

func noFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		t.Fatalf("%s was written by a command that failed", path)
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp"))
	if len(matches) > 0 {
		t.Fatalf("temporary files left behind: %v", matches)
	}
}

// TestIncidentTriageAndRescue is the 2022 incident in small: capture runs,
// a script deletes two tenants, deletes part of a third's rows and updates
// a fourth, while two other tenants keep writing. changes --deleted-only
// lists exactly the tenants that lost rows, diff classifies every tenant
// against the last set, and restore --tenants-file from that list with --at
// one second before the script brings each hit tenant back as plain SQL
// read it then, leaving the writers' tenants untouched.
func TestIncidentTriageAndRescue(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	v, stopCapture := runCapture(t, ctx, db, repoURL, nil)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--exact-lsn")

	deleted := []string{"acme", "o'brien & co"}
	partial, updated := "big", "Ünïcödé GmbH"
	writers := []string{"globex", "tab\there"}
	quiet := []string{"a/../b", "empty-ish"}
	hit := append(append([]string(nil), deleted...), partial)
	all := append(append(append(append([]string(nil), hit...), updated), writers...), quiet...)

	w := fixture.StartWriter(t, db, writers, 2)
	time.Sleep(1500 * time.Millisecond)
	before := readStates(t, db, append(append([]string(nil), hit...), updated))
	time.Sleep(1200 * time.Millisecond)
	scriptStart := clock(t, db)
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id IN ('acme', 'o''brien & co');
DELETE FROM tenants WHERE id IN ('acme', 'o''brien & co')`)
	testenv.Exec(t, db, `DELETE FROM tasks WHERE id % 2 = 0 AND project_id IN (SELECT id FROM projects WHERE tenant_id = 'big');
DELETE FROM events WHERE tenant_id = 'big' AND id > 60`)
	testenv.Exec(t, db, `UPDATE projects SET name = name || ' (renamed by the script)' WHERE tenant_id = 'Ünïcödé GmbH'`)
	scriptEnd := clock(t, db)
	time.Sleep(500 * time.Millisecond) // the writers go on after the script
	waitLog(t, ctx, v, db)
	if err := w.Err.Load(); err != nil {
		t.Fatalf("writer: %v", err)
	}

	dir := t.TempDir()
	from := scriptStart.Add(-2 * time.Second).Format(time.RFC3339Nano)
	to := scriptEnd.Add(200 * time.Millisecond).Format(time.RFC3339Nano)

	// changes: exactly the tenants that lost rows; the updated tenant and
	// the writers changed rows but lost none.
	hitFile := filepath.Join(dir, "hit.txt")
	out := expect(t, 0, "", "changes", "--repo", repoURL, "--from", from, "--to", to, "--deleted-only", "--output", hitFile)
	if got := readLines(t, hitFile); !sameSet(got, hit) {
		t.Fatalf("changes --deleted-only listed %q, want %q\n%s", got, hit, out)
	}
	if !strings.Contains(out, "first rows lost at ") {
		t.Fatalf("changes does not say when the damage began:\n%s", out)
	}
	t.Logf("changes --deleted-only:\n%s", out)
	out = expect(t, 0, "", "changes", "--repo", repoURL, "--from", from, "--to", to, "--json")
	var ch triage.ChangesReport
	if err := json.Unmarshal([]byte(out), &ch); err != nil {
		t.Fatalf("changes --json: %v\n%s", err, out)
	}
	if ch.FirstLoss.Before(scriptStart) || ch.FirstLoss.After(scriptEnd) {
		t.Fatalf("first loss at %s, the script ran from %s to %s", ch.FirstLoss, scriptStart, scriptEnd)
	}
	byTenant := map[string]triage.TenantChanges{}
	for _, tc := range ch.Tenants {
		byTenant[tc.Tenant] = tc
	}
	if c := byTenant[updated].Tables["public.projects"]; byTenant[updated].LostRows || c == nil || c.Updated != 6 || c.Deleted != 0 {
		t.Fatalf("the updated tenant: %+v", byTenant[updated])
	}
	for _, id := range writers {
		if tc := byTenant[id]; tc.LostRows || tc.Tables["public.tasks"] == nil || tc.Tables["public.tasks"].Inserted == 0 {
			t.Fatalf("writer %q: %+v", id, tc)
		}
	}
	for _, id := range deleted {
		if c := byTenant[id].Tables["public.tenants"]; c == nil || c.Deleted != 1 {
			t.Fatalf("deleted tenant %q: %+v", id, byTenant[id])
		}
	}
	if c := byTenant[partial].Tables["public.events"]; c == nil || c.Deleted != 60 {
		t.Fatalf("partly deleted tenant: %+v", byTenant[partial])
	}
	// Every row the script took is in the log, under its tenant: the
	// cascaded deletes of tables whose key lacks the tenant column too.
	afterPartial := readStates(t, db, []string{partial})[partial]
	for _, id := range hit {
		for name, rows := range before[id] {
			want := len(rows)
			if id == partial {
				want -= len(afterPartial[name])
			}
			got := 0
			if c := byTenant[id].Tables["public."+name]; c != nil {
				got = int(c.Deleted)
			}
			if got != want {
				t.Errorf("tenant %q table %s: changes counts %d deleted, the script deleted %d", id, name, got, want)
			}
		}
	}
	if len(ch.Unattributed) > 0 {
		t.Errorf("changes the capture could not attribute: %+v", ch.Unattributed)
	}
	for _, id := range quiet {
		if _, ok := byTenant[id]; ok {
			t.Fatalf("quiet tenant %q has changes: %+v", id, byTenant[id])
		}
	}

	// diff against the last set, by counting: the update keeps the counts.
	out = expect(t, 0, "", "diff", "--repo", repoURL, "--source", db, "--json", "--output", filepath.Join(dir, "diff-hit.txt"))
	st := statuses(t, out)
	want := map[string]string{"acme": triage.Deleted, "o'brien & co": triage.Deleted, partial: triage.MissingRows, updated: triage.Unchanged,
		"globex": triage.Changed, "tab\there": triage.Changed, "a/../b": triage.Unchanged, "empty-ish": triage.Unchanged}
	for id, s := range want {
		if st[id] != s {
			t.Fatalf("diff: tenant %q is %q, want %q\n%s", id, st[id], s, out)
		}
	}
	if len(st) != len(all) {
		t.Fatalf("diff listed %d tenants, want %d", len(st), len(all))
	}
	if got := readLines(t, filepath.Join(dir, "diff-hit.txt")); !sameSet(got, hit) {
		t.Fatalf("diff --output: %q, want %q", got, hit)
	}
	// --exact sees the update that kept the counts.
	out = expect(t, 0, "", "diff", "--repo", repoURL, "--source", db, "--json", "--exact")
	want[updated] = triage.Changed
	st = statuses(t, out)
	for id, s := range want {
		if st[id] != s {
			t.Fatalf("diff --exact: tenant %q is %q, want %q\n%s", id, st[id], s, out)
		}
	}
	// For people: the summary, worst first.
	out = expect(t, 0, "", "diff", "--repo", repoURL, "--source", db, "--tenant", partial, "--tenant", "acme", "--tenant", "globex")
	if !strings.Contains(out, "deleted       1") || !strings.Contains(out, "missing-rows  1") || strings.Index(out, `"big"`) < strings.Index(out, "worst tenants first") ||
		!strings.Contains(out, "public.events") {
		t.Fatalf("diff summary:\n%s", out)
	}
	t.Logf("diff summary:\n%s", out)

	// The rescue: the writers stop, the hit tenants (and the updated one)
	// go back to one second before the script.
	w.Stop()
	time.Sleep(300 * time.Millisecond)
	others := readStates(t, db, append(append([]string(nil), writers...), quiet...))
	at := scriptStart.Add(-time.Second).Format(time.RFC3339Nano)
	expect(t, 0, "", "restore", "--repo", repoURL, "--target", db, "--tenants-file", hitFile, "--tenant", updated, "--at", at, "--if-exists", "replace", "--dry-run")
	out = expect(t, 0, "", "restore", "--repo", repoURL, "--target", db, "--tenants-file", hitFile, "--tenant", updated, "--at", at, "--if-exists", "replace", "--yes")
	if !strings.Contains(out, "restored 4 of 4 tenant(s)") {
		t.Fatalf("restore:\n%s", out)
	}
	after := readStates(t, db, append(append([]string(nil), hit...), updated))
	for id, st := range before {
		if d := fixture.Diff(st, after[id]); d != "" {
			t.Fatalf("tenant %q differs from its state before the script:\n%s", id, d)
		}
	}
	for id, st := range readStates(t, db, append(append([]string(nil), writers...), quiet...)) {
		if d := fixture.Diff(others[id], st); d != "" {
			t.Fatalf("restore touched tenant %q:\n%s", id, d)
		}
	}
	waitLog(t, ctx, v, db)
	stopCapture()

	t.Run("bad input", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out.txt")
		expect(t, 2, "--from "+scriptEnd.Format(time.RFC3339Nano)+" is after --to "+scriptStart.Format(time.RFC3339Nano),
			"changes", "--repo", repoURL, "--from", scriptEnd.Format(time.RFC3339Nano), "--to", scriptStart.Format(time.RFC3339Nano), "--output", out)
		noFile(t, out)
		expect(t, 2, "is before the change log covers it: the change log is complete from",
			"changes", "--repo", repoURL, "--from", scriptStart.Add(-time.Hour).Format(time.RFC3339), "--to", to, "--output", out)
		noFile(t, out)
		expect(t, 2, "is after the end of the change log: changes are archived up to",
			"changes", "--repo", repoURL, "--from", from, "--to", time.Now().Add(time.Hour).Format(time.RFC3339), "--output", out)
		noFile(t, out)
		expect(t, 2, `--from "yesterday" is not an RFC 3339 time`, "changes", "--repo", repoURL, "--from", "yesterday", "--to", to)
		expect(t, 2, "--to is required", "changes", "--repo", repoURL, "--from", from)

		expect(t, 2, "no snapshot set 20200101T000000.000Z-deadbeef in",
			"diff", "--repo", repoURL, "--source", db, "--snapshot", "20200101T000000.000Z-deadbeef", "--output", out)
		noFile(t, out)
		expect(t, 2, `"nope" is not a snapshot set ID`, "diff", "--repo", repoURL, "--source", db, "--snapshot", "nope", "--output", out)
		noFile(t, out)
		expect(t, 2, "is before the oldest complete snapshot set", "diff", "--repo", repoURL, "--source", db, "--at", "2020-01-01T00:00:00Z", "--output", out)
		noFile(t, out)
		expect(t, 2, `--select: unknown class "lost"`, "diff", "--repo", repoURL, "--source", db, "--select", "deleted,lost", "--output", out)
		noFile(t, out)
		expect(t, 2, `1 unknown tenant(s), neither in snapshot set`, "diff", "--repo", repoURL, "--source", db, "--tenant", "no-such-tenant", "--output", out)
		noFile(t, out)
		expect(t, 2, "--output "+filepath.Join(dir, "missing", "x.txt"), "diff", "--repo", repoURL, "--source", db, "--output", filepath.Join(dir, "missing", "x.txt"))
		// A source whose schema moved on since the set.
		testenv.Exec(t, db, `ALTER TABLE projects ADD COLUMN archived boolean; CREATE TABLE notes_v2 (id int PRIMARY KEY, tenant_id text)`)
		code, _, errOut := tv(t, "diff", "--repo", repoURL, "--source", db, "--output", out)
		if code != 2 || !strings.Contains(errOut, "the source's schema no longer matches snapshot set") ||
			!strings.Contains(errOut, "table public.projects changed (columns (") || !strings.Contains(errOut, "table public.notes_v2 is in the source, not in the set") {
			t.Fatalf("diff against a changed schema: exit %d\n%s", code, errOut)
		}
		noFile(t, out)
	})
}

// TestChangesEncryptedAndTruncate: on an encrypted repository the window
// is checked from the segments' signed plaintext headers without any key,
// counting needs --identity, and a TRUNCATE counts as taking the rows of
// every tenant the set before it holds rows of in that table.
func TestChangesEncryptedAndTruncate(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	dir := t.TempDir()
	identity, signing, recipient := keygen(t, dir)
	writer := &vault.Keys{}
	if _, err := writer.LoadSigningKeyFile(signing); err != nil {
		t.Fatal(err)
	}
	if err := writer.AddRecipient(recipient); err != nil {
		t.Fatal(err)
	}
	repoURL := "file://" + filepath.Join(dir, "repo")
	os.Mkdir(filepath.Join(dir, "repo"), 0o700)
	v, stop := runCapture(t, ctx, db, repoURL, writer)
	out := expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--exact-lsn", "--signing-key", signing, "--json")
	var set struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(out), &set)
	time.Sleep(1200 * time.Millisecond)
	from := clock(t, db)
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	testenv.Exec(t, db, `TRUNCATE task_notes`)
	testenv.Exec(t, db, `INSERT INTO users (tenant_id, email) VALUES ('globex', 'late@globex.example')`)
	to := clock(t, db)
	waitLog(t, ctx, v, db)
	stop()

	f, tt := from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano)
	hitFile := filepath.Join(dir, "hit.txt")
	// Without the identity: the window is checked, then exit 2 saying why.
	expect(t, 2, "is before the change log covers it", "changes", "--repo", repoURL, "--from", from.Add(-time.Hour).Format(time.RFC3339), "--to", tt, "--output", hitFile)
	expect(t, 2, "the change log is encrypted: the window was checked against the segments' signed plaintext headers", "changes", "--repo", repoURL, "--from", f, "--to", tt, "--output", hitFile)
	noFile(t, hitFile)

	out = expect(t, 0, "", "changes", "--repo", repoURL, "--identity", identity, "--from", f, "--to", tt, "--deleted-only", "--output", hitFile)
	var withNotes []string
	for _, id := range fixture.Tenants {
		if id != "empty-ish" {
			withNotes = append(withNotes, id)
		}
	}
	if got := readLines(t, hitFile); !sameSet(got, withNotes) {
		t.Fatalf("changes --deleted-only after a TRUNCATE: %q, want %q\n%s", got, withNotes, out)
	}
	if !strings.Contains(out, "TRUNCATE at ") || !strings.Contains(out, "of public.task_notes (tenants with rows there in set "+set.ID) {
		t.Fatalf("changes output:\n%s", out)
	}
	out = expect(t, 0, "", "changes", "--repo", repoURL, "--identity", identity, "--from", f, "--to", tt, "--json", "--tenant", "globex")
	var ch triage.ChangesReport
	if err := json.Unmarshal([]byte(out), &ch); err != nil {
		t.Fatal(err)
	}
	if len(ch.Tenants) != 1 || ch.Tenants[0].Tenant != "globex" || !ch.Tenants[0].LostRows ||
		ch.Tenants[0].Tables["public.users"].Inserted != 1 || ch.Tenants[0].Tables["public.task_notes"].Truncated != 1 || ch.TruncateBase != set.ID {
		t.Fatalf("changes --tenant globex: %s", out)
	}

	// A damaged segment is an integrity failure, exit 3, and no list.
	// Every segment, so that whichever the window reads is damaged.
	segs, _ := filepath.Glob(filepath.Join(dir, "repo", "changes", "*", "*.seg"))
	for _, p := range segs {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 0 {
			data[len(data)/2] ^= 0x40
			os.WriteFile(p, data, 0o600)
		}
	}
	os.Remove(hitFile)
	expect(t, 3, "is damaged", "changes", "--repo", repoURL, "--identity", identity, "--from", f, "--to", tt, "--deleted-only", "--output", hitFile)
	noFile(t, hitFile)
}
