package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

const eraseMarker = "ERASE-ME-41c9d2e7"

// storedObjects reads every object of a repository: key and bytes.
func storedObjects(t *testing.T, ctx context.Context, repoURL string) map[string][]byte {
	t.Helper()
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	out := map[string][]byte{}
	var keys []string
	if err := b.List(ctx, "", func(o repo.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		data, err := repo.ReadAll(ctx, b, k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = data
	}
	return out
}

// markerHits searches every stored byte, raw and inside every zstd frame
// that starts anywhere in an object (packs, tenant indexes, manifests,
// change-log segments), for eraseMarker.
func markerHits(t *testing.T, objects map[string][]byte) []string {
	t.Helper()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	magic := []byte{0x28, 0xb5, 0x2f, 0xfd}
	var hits []string
	for k, data := range objects {
		if bytes.Contains(data, []byte(eraseMarker)) {
			hits = append(hits, k+" (raw)")
		}
		for i := bytes.Index(data, magic); i >= 0; {
			if dec.Reset(bytes.NewReader(data[i:])) == nil {
				out, _ := io.ReadAll(io.LimitReader(dec, 256<<20))
				if bytes.Contains(out, []byte(eraseMarker)) {
					hits = append(hits, fmt.Sprintf("%s (zstd frame at %d)", k, i))
				}
			}
			j := bytes.Index(data[i+1:], magic)
			if j < 0 {
				break
			}
			i += 1 + j
		}
	}
	slices.Sort(hits)
	return hits
}

func objectList(objects map[string][]byte) string {
	var keys []string
	for k, v := range objects {
		keys = append(keys, fmt.Sprintf("%s %d", k, len(v)))
	}
	slices.Sort(keys)
	return strings.Join(keys, "\n")
}

// restoredStates restores tenants into a fresh database (schema from the
// set) and reads them back with plain SQL.
func restoredStates(t *testing.T, ctx context.Context, repoURL string, tenants []string) map[string]fixture.State {
	t.Helper()
	scratch := testenv.NewDatabase(t)
	f := filepath.Join(t.TempDir(), "tenants")
	os.WriteFile(f, []byte(strings.Join(tenants, "\n")+"\n"), 0o644)
	expect(t, 0, "", "restore", "--repo", repoURL, "--target", scratch, "--tenants-file", f, "--create-schema", "--yes")
	conn := testenv.Connect(t, scratch)
	out := map[string]fixture.State{}
	for _, id := range tenants {
		st, err := fixture.Read(ctx, conn, id)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = st
	}
	return out
}

// TestForget erases a tenant from a repository (file:// with a change
// log, and MinIO) that holds it in several sets (set format 1 and 2,
// sharing packs through reuse) and a pre-restore set: afterwards no stored
// byte holds the marker planted in its rows, every other tenant restores
// row for row as before, verify --read-data passes, and restore, drill,
// list and forget itself answer for the erased tenant as documented.
func TestForget(t *testing.T) {
	for _, backend := range []string{"file", "s3"} {
		t.Run(backend, func(t *testing.T) {
			ctx := testenv.Context(t, 4*time.Minute)
			db := testenv.NewDatabase(t)
			fixture.Create(t, db)
			testenv.Exec(t, db, `UPDATE projects SET name = '`+eraseMarker+` ' || id WHERE tenant_id = 'globex';
UPDATE users SET email = '`+eraseMarker+`' || id || '@example.com' WHERE tenant_id = 'globex'`)
			repoURL := "file://" + t.TempDir() + "/repo"
			if backend == "s3" {
				repoURL = testenv.NewS3Repo(t)
			}
			expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init")
			if backend == "file" {
				v, stop := runCapture(t, ctx, db, repoURL, nil)
				expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--exact-lsn")
				testenv.Exec(t, db, `INSERT INTO events (tenant_id, id, at, kind) VALUES ('globex', 9001, '2026-06-01', '`+eraseMarker+` in the log'), ('acme', 9001, '2026-06-01', 'kept')`)
				waitLog(t, ctx, v, db)
				stop()
			}
			testenv.Exec(t, db, `UPDATE tenants SET name = name || ' (changed)' WHERE id = 'acme'`)
			expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL)
			// A pre-restore set that holds the tenant's rows as they were.
			expect(t, 0, "", "restore", "--repo", repoURL, "--target", db, "--tenant", "globex", "--if-exists", "replace", "--yes")

			others := slices.DeleteFunc(slices.Clone(fixture.Tenants), func(s string) bool { return s == "globex" })
			before := restoredStates(t, ctx, repoURL, others)
			objects := storedObjects(t, ctx, repoURL)
			if len(markerHits(t, objects)) == 0 {
				t.Fatal("the marker is not stored to begin with")
			}

			// A dry run prints the plan and changes nothing.
			out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "globex", "--dry-run")
			for _, want := range []string{`plan: erase tenant "globex"`, "sets holding it:       ", "(1 pre-restore)", "change-log segments:", "packs:", "to copy", "dry run: nothing was changed"} {
				if !strings.Contains(out, want) {
					t.Fatalf("dry run does not say %q:\n%s", want, out)
				}
			}
			if backend == "file" && !strings.Contains(out, "change-log segments:   1 rewritten") {
				t.Fatalf("the plan does not rewrite the change log:\n%s", out)
			}
			if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
				t.Fatal("forget --dry-run changed the repository")
			}
			// No terminal, no --yes: refused, nothing written.
			expect(t, 2, "forget is irreversible and there is no terminal to confirm it on; nothing was changed", "forget", "--repo", repoURL, "--tenant", "globex")
			expect(t, 2, `1 unknown tenant(s), in no snapshot set or change-log segment of `, "forget", "--repo", repoURL, "--tenant", "globex", "--tenant", "nobody", "--yes")
			if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
				t.Fatal("a refused forget changed the repository")
			}

			out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "globex", "--reason", "ticket 4711", "--yes")
			if !strings.Contains(out, `erased tenant "globex": `) {
				t.Fatalf("forget: %s", out)
			}
			after := storedObjects(t, ctx, repoURL)
			if hits := markerHits(t, after); len(hits) > 0 {
				t.Fatalf("the erased tenant's marker is still stored:\n%s", strings.Join(hits, "\n"))
			}
			for k := range after {
				if strings.Contains(k, "globex") {
					t.Fatalf("a key names the erased tenant: %s", k)
				}
			}
			out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
			if !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify --read-data after forget: %s", out)
			}
			got := restoredStates(t, ctx, repoURL, others)
			for _, id := range others {
				if d := fixture.Diff(before[id], got[id]); d != "" {
					t.Fatalf("tenant %q restores differently after forget: %s", id, d)
				}
			}

			// The erased tenant is refused with its date; list says erased.
			scratch := testenv.NewDatabase(t)
			expect(t, 2, `tenant "globex" (erased on `, "restore", "--repo", repoURL, "--target", scratch, "--tenant", "globex", "--create-schema", "--yes")
			expect(t, 2, `tenant "globex" (erased on `, "drill", "--repo", repoURL, "--scratch", testenv.PostgresURL(t), "--tenant", "globex")
			exported := filepath.Join(t.TempDir(), "globex.tar")
			expect(t, 2, `tenant "globex" (erased on `, "export", "--repo", repoURL, "--tenant", "globex", "--output", exported)
			if _, err := os.Stat(exported); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused export left %s: %v", exported, err)
			}
			out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", "globex")
			if !strings.Contains(out, `tenant "globex": erased on `) || !strings.Contains(out, "no snapshot set holds it") || !strings.Contains(out, "ticket 4711") {
				t.Fatalf("list --tenant of an erased tenant: %s", out)
			}
			expect(t, 2, `1 tenant(s) already erased: "globex" (erased on `, "forget", "--repo", repoURL, "--tenant", "globex", "--yes")
			expect(t, 2, `1 unknown tenant(s), in no snapshot set or change-log segment of `, "forget", "--repo", repoURL, "--tenant", "nobody", "--yes")
			out = expect(t, 0, "", "forget", "--repo", repoURL, "--status")
			if !strings.Contains(out, "0 erasure(s) in progress; 1 tombstone(s)") {
				t.Fatalf("forget --status: %s", out)
			}

			// The source still has the tenant's rows: the next snapshot
			// warns, the tenant stays refused, and forget erases it again.
			code, _, errOut := tv(t, "snapshot", "--source", db, "--repo", repoURL)
			if code != 0 || !strings.Contains(errOut, "the source still holds rows of tenants that were erased") {
				t.Fatalf("snapshot of a source with an erased tenant: exit %d\n%s", code, errOut)
			}
			expect(t, 2, `tenant "globex" (erased on `, "restore", "--repo", repoURL, "--target", scratch, "--tenant", "globex", "--create-schema", "--yes")
			if backend == "file" {
				// A drill of every tenant of that set leaves it out and says so.
				out = expect(t, 0, "", "drill", "--repo", repoURL, "--scratch", testenv.PostgresURL(t), "--tenants", "100")
				if !strings.Contains(out, "skipped: 1 erased tenant(s) the set still holds") || strings.Contains(out, `"globex"`) || !strings.Contains(out, fmt.Sprintf("tenants: %d sampled", len(others))) {
					t.Fatalf("drill of a set that holds an erased tenant:\n%s", out)
				}
			}
			// Two tenants in one command: the second is planned again
			// after the first rewrote the packs they share.
			out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "globex", "--tenant", "acme", "--yes")
			if !strings.Contains(out, `erased tenant "globex": 1 set(s) rewritten (1 held it)`) || !strings.Contains(out, `erased tenant "acme": `) {
				t.Fatalf("forget of a tenant snapshotted again, and another: %s", out)
			}
			if hits := markerHits(t, storedObjects(t, ctx, repoURL)); len(hits) > 0 {
				t.Fatalf("marker stored after the second forget:\n%s", strings.Join(hits, "\n"))
			}
			out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
			if !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify --read-data after the second forget: %s", out)
			}
			rest := slices.DeleteFunc(slices.Clone(others), func(s string) bool { return s == "acme" })
			got = restoredStates(t, ctx, repoURL, rest)
			for _, id := range rest {
				if d := fixture.Diff(before[id], got[id]); d != "" {
					t.Fatalf("tenant %q restores differently after the second forget: %s", id, d)
				}
			}
		})
	}
}

// TestForgetRefusesObjectLock: under S3 Object Lock retention forget
// explains why it cannot erase and changes nothing.
func TestForgetRefusesObjectLock(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.LockedRepoURL(t, "governance", time.Hour)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init")
	objects := storedObjects(t, ctx, repoURL)
	expect(t, 2, "keeps every object under S3 Object Lock retention", "forget", "--repo", repoURL, "--tenant", "acme", "--yes")
	expect(t, 2, "keeps every object under S3 Object Lock retention", "forget", "--repo", repoURL, "--tenant", "acme", "--dry-run")
	if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
		t.Fatal("a refused forget changed the repository")
	}
}

// TestForgetUsage: bad command lines are refused with exit code 2.
func TestForgetUsage(t *testing.T) {
	expect(t, 2, "no tenants given", "forget", "--repo", "file:///x")
	expect(t, 2, "--dry-run excludes --yes", "forget", "--repo", "file:///x", "--tenant", "a", "--dry-run", "--yes")
	expect(t, 2, "--status takes no --tenant", "forget", "--repo", "file:///x", "--tenant", "a", "--status")
}

// TestForgetEncrypted: in an encrypted repository forget destroys the
// tenant's own keys. Without the identity, and with --dry-run, nothing
// changes; afterwards the tenant is refused by restore (the tombstone, exit
// 2) and unreadable even to the identity holder, every other tenant
// restores exactly, verify --read-data passes, and a second forget says
// it is already erased; on file:// and on MinIO under Object Lock.
func TestForgetEncrypted(t *testing.T) {
	for _, kind := range []string{"file", "s3-locked"} {
		t.Run(kind, func(t *testing.T) { testForgetEncrypted(t, kind) })
	}
}

func testForgetEncrypted(t *testing.T, kind string) {
	ctx := testenv.Context(t, 3*time.Minute)
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	identity, signing, recipient := keygen(t, t.TempDir())
	repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
	if kind == "s3-locked" {
		// The keys are never locked: Object Lock does not stand in the way.
		repoURL = testenv.LockedRepoURL(t, "governance", time.Hour)
	}
	expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--init", "--recipient", recipient, "--signing-key", signing)
	objects := storedObjects(t, ctx, repoURL)
	expect(t, 2, "forget reads every set to find the tenant's keys, which needs the identity file", "forget", "--repo", repoURL, "--tenant", "acme", "--yes")
	out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "acme", "--dry-run", "--identity", identity)
	if !strings.Contains(out, "key objects to delete: 1 ") || !strings.Contains(out, "dry run: nothing was changed") {
		t.Fatalf("dry run:\n%s", out)
	}
	expect(t, 2, `1 unknown tenant(s), in no snapshot set of`, "forget", "--repo", repoURL, "--tenant", "nobody", "--dry-run", "--identity", identity)
	if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
		t.Fatal("a refused or dry-run forget changed the repository")
	}
	if out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "acme", "--yes", "--identity", identity, "--reason", "ticket 7"); !strings.Contains(out, `erased tenant "acme": 1 key object(s) destroyed`) {
		t.Fatalf("forget:\n%s", out)
	}

	dst := testenv.NewDatabase(t)
	expect(t, 2, `tenant "acme" (erased on `, "restore", "--repo", repoURL, "--target", dst, "--tenant", "acme", "--create-schema", "--yes", "--identity", identity)
	expect(t, 2, `1 tenant(s) already erased: "acme" (erased on `, "forget", "--repo", repoURL, "--tenant", "acme", "--yes", "--identity", identity)
	// Past the tombstone, the keys are gone: the identity cannot read the
	// tenant's chunks.
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	reader := &vault.Keys{}
	if _, err := reader.LoadKeyFile(identity); err != nil {
		t.Fatal(err)
	}
	rv, err := vault.Open(ctx, b, vault.Options{Keys: reader})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := rv.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Gone from the catalogs; the set still holds its entry.
	if hist, err := rv.TenantHistory(ctx, ids, "acme"); err != nil || len(hist) != 0 {
		t.Fatalf("history through the catalogs: %+v, %v", hist, err)
	}
	hist, err := rv.TenantHistoryFromSets(ctx, ids, "acme")
	if err != nil || len(hist) != 1 {
		t.Fatalf("history: %+v, %v", hist, err)
	}
	set, err := rv.ReadManifest(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := rv.TenantReadable(ctx, set.Tenant("acme")); !errors.Is(err, vault.ErrTenantKeyDestroyed) {
		t.Fatalf("acme's chunks after forget: %v", err)
	}
	restoreOthersExactly(t, ctx, repoURL, identity, src, dst, "acme")
	expect(t, 0, "", "verify", "--repo", repoURL, "--read-data", "--identity", identity)
}

// TestTerminalForget: on a terminal forget shows its plan and asks; any
// answer but "yes" changes nothing (exit 2), "yes" erases.
func TestTerminalForget(t *testing.T) {
	tm := newTmux(t)
	bin := cliBinary(t)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL);
INSERT INTO tenants VALUES ('acme', 'Acme'), ('globex', 'Globex')`)
	repoURL := "file://" + t.TempDir() + "/repo"
	env := []string{"TENANTVAULT_REPO=" + repoURL, "TENANTVAULT_SOURCE=" + db}
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--tenant-table", "public.tenants")
	prompt := regexp.MustCompile(`^Erase 1 tenant\(s\) from every backup in this repository\? This cannot be undone\. Type 'yes' to go on:( .*)?$`)
	for _, answer := range []string{"no", "yes"} {
		p := tm.start(t, "forget-"+answer, env, bin+" forget --tenant acme --reason ticket-1")
		sc := p.waitScreen(time.Minute, nil, func(sc []string) bool { return prompt.MatchString(lastLine(sc)) })
		if contains(sc, regexp.MustCompile(`^plan: erase tenant "acme" from `)) != 1 || contains(sc, regexp.MustCompile(`^  sets holding it: +1 `)) != 1 {
			t.Fatalf("no plan above the prompt:\n%s", strings.Join(sc, "\n"))
		}
		p.send(answer, "Enter")
		code := p.wait(time.Minute)
		h := strings.Join(p.history(), "\n")
		switch {
		case answer == "no" && (code != 2 || !strings.Contains(h, "not confirmed; nothing was changed")):
			t.Fatalf("answered no: exit %d\n%s", code, h)
		case answer == "yes" && (code != 0 || !strings.Contains(h, `erased tenant "acme"`)):
			t.Fatalf("answered yes: exit %d\n%s", code, h)
		}
		if out := expect(t, 0, "", "list", "--repo", repoURL, "--tenant", "acme"); answer == "no" && strings.Contains(out, "erased") {
			t.Fatalf("answered no, and the tenant is erased:\n%s", out)
		}
	}
	expect(t, 2, `tenant "acme" (erased on `, "restore", "--repo", repoURL, "--target", db, "--tenant", "acme", "--dry-run")

	// --json: the plan and the result, per tenant, on stdout.
	var plans []forgetJSON
	out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "globex", "--dry-run", "--json")
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 || plans[0].Tenant != "globex" || plans[0].Plan == nil || len(plans[0].Plan.SetsHolding) != 1 || plans[0].Done != nil {
		t.Fatalf("forget --dry-run --json: %v\n%s", err, out)
	}
	out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", "globex", "--yes", "--json")
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 || plans[0].Done == nil || plans[0].Done.SetsHeld != 1 || plans[0].Erased == "" || !strings.HasPrefix(plans[0].Tombstone, "erased/") {
		t.Fatalf("forget --json: %v\n%s", err, out)
	}
	out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", "globex", "--json")
	var listed erasedJSON
	if err := json.Unmarshal([]byte(out), &listed); err != nil || listed.Erased == nil || listed.Erased.State != vault.TombstoneErased || len(listed.Sets) != 0 {
		t.Fatalf("list --tenant --json of an erased tenant: %v\n%s", err, out)
	}
}
