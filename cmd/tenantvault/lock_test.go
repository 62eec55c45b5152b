package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// TestPruneWithObjectLock snapshots into a MinIO bucket with S3 Object
// Lock (governance mode, a short retention), then: a direct delete of a
// locked object fails with repo.ErrLocked; prune marks the old set but
// purges it only once the lock expires, reporting it as locked meanwhile;
// GC reports a locked leftover instead of failing; nothing is lost; and
// after the retention the same prune purges and collects.
func TestPruneWithObjectLock(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	identity, signing, recipient := keygen(t, t.TempDir())
	const retention = 25 * time.Second
	repoURL := testenv.LockedRepoURL(t, "governance", retention)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--recipient", recipient, "--signing-key", signing)
	testenv.Exec(t, db, `UPDATE projects SET name = 'v2' WHERE tenant_id = 'acme'`)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--signing-key", signing)

	ctx := testenv.Context(t, 3*time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := v.ListSets(ctx)
	if err != nil || len(ids) != 2 {
		t.Fatalf("sets %v, %v", ids, err)
	}
	old := ids[0]
	info, err := b.Stat(ctx, vault.ManifestKey(old))
	if err != nil || info.RetainUntil.IsZero() {
		t.Fatalf("manifest not locked: %+v, %v", info, err)
	}
	// The second set reuses packs of the first: their retention was
	// extended to the second set's, so no pack it needs unlocks before it.
	readerKeys := &vault.Keys{}
	if _, err := readerKeys.LoadKeyFile(identity); err != nil {
		t.Fatal(err)
	}
	rv, err := vault.Open(ctx, b, vault.Options{Keys: readerKeys})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := rv.ReadManifest(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	m2info, _ := b.Stat(ctx, vault.ManifestKey(ids[1]))
	shared := 0
	for _, p := range m2.Packs {
		if strings.HasPrefix(p, vault.PacksPrefix+old+"/") {
			shared++
			pi, err := b.Stat(ctx, p)
			if err != nil || pi.RetainUntil.Before(m2info.RetainUntil.Add(-2*time.Second)) {
				t.Fatalf("shared pack %s retained until %v, the set that reuses it until %v (%v)", p, pi.RetainUntil, m2info.RetainUntil, err)
			}
		}
	}
	if shared == 0 {
		t.Fatal("the second set reuses no pack of the first")
	}
	// A leftover of an interrupted snapshot: locked too.
	leftover := "packs/" + vault.NewSetID(time.Now().Add(-48*time.Hour)) + "/000001.pack"
	if err := b.Put(ctx, leftover, bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}
	lockEnd, _ := b.Stat(ctx, leftover)

	// A wrong script (or a stolen credential) cannot delete a locked object.
	if err := b.Delete(ctx, vault.ManifestKey(old)); !errors.Is(err, repo.ErrLocked) {
		t.Fatalf("delete of a locked manifest: %v", err)
	}

	out := expect(t, 0, "", "prune", "--repo", repoURL, "--keep-last", "1", "--mark", "--grace", "0s")
	if !strings.Contains(out, "MARKED now") {
		t.Fatalf("prune --mark:\n%s", out)
	}
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge", "--grace", "0s", "--gc-min-age", "0")
	if !strings.Contains(out, "locked: set "+old+" is due, but S3 Object Lock retains it until") ||
		!strings.Contains(out, "LOCKED, not deleted yet: "+leftover) || !strings.Contains(out, "purged 0 set(s)") {
		t.Fatalf("prune --purge under the lock:\n%s", out)
	}
	code, jsonOut, _ := tv(t, "prune", "--repo", repoURL, "--purge", "--grace", "0s", "--gc-min-age", "0", "--json")
	var res struct {
		Purge vault.PurgeResult `json:"purge"`
	}
	if code != 0 || json.Unmarshal([]byte(jsonOut), &res) != nil || len(res.Purge.Locked) != 1 || len(res.Purge.GC.Failed) != 1 || !res.Purge.GC.Failed[0].Locked {
		t.Fatalf("prune --json: exit %d\n%s", code, jsonOut)
	}
	out = expect(t, 0, "", "list", "--repo", repoURL, "--identity", identity)
	if !strings.Contains(out, old) || !strings.Contains(out, ids[1]) {
		t.Fatalf("list after the refused purge:\n%s", out)
	}
	expect(t, 0, "", "verify", "--repo", repoURL, "--read-data", "--identity", identity)

	// Once the retention has passed, the marked set is purged and the
	// leftover collected.
	until := info.RetainUntil
	if lockEnd.RetainUntil.After(until) {
		until = lockEnd.RetainUntil
	}
	time.Sleep(time.Until(until.Add(2 * time.Second)))
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge", "--grace", "0s", "--gc-min-age", "0")
	if !strings.Contains(out, "purged set "+old) || !strings.Contains(out, "collected "+leftover) || strings.Contains(out, "LOCKED") {
		t.Fatalf("prune --purge after the lock expired:\n%s", out)
	}
	out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data", "--identity", identity)
	if !strings.Contains(out, "verified 1 set(s)") {
		t.Fatalf("verify:\n%s", out)
	}
}
