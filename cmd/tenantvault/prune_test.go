package main

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
)

func repoKeys(t *testing.T, repoURL string) []string {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var keys []string
	b.List(context.Background(), "", func(o repo.ObjectInfo) error { keys = append(keys, o.Key); return nil })
	return keys
}

// TestPruneMarkRestoreUnmarkPurge walks a set through the deletion phases
// by hand: the dry run changes nothing, --mark marks, restore's default and
// --at selection skip marked sets (--snapshot still reaches them), list
// shows the purge time, a purge before the grace period refuses, unmark
// undoes a mark, and a purge after it deletes.
func TestPruneMarkRestoreUnmarkPurge(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	var ids []string
	for range 3 {
		out := expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--json")
		i := strings.Index(out, `"id": "`)
		ids = append(ids, out[i+7:i+7+29])
	}

	before := repoKeys(t, repoURL)
	out := expect(t, 0, "", "prune", "--repo", repoURL, "--keep-last", "1")
	if strings.Count(out, "would mark") != 2 || !strings.Contains(out, "dry run: nothing was deleted") {
		t.Fatalf("dry run output:\n%s", out)
	}
	if after := repoKeys(t, repoURL); !reflect.DeepEqual(before, after) {
		t.Fatalf("dry run changed the repository:\n%v\n%v", before, after)
	}
	expect(t, 2, "--mark needs at least one", "prune", "--repo", repoURL, "--mark")
	expect(t, 2, "--dry-run excludes", "prune", "--repo", repoURL, "--keep-last", "1", "--mark", "--dry-run")

	// Marked with no grace period, and still not purged by the command
	// that marked them: marking and purging are never one step.
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--keep-last", "1", "--mark", "--purge", "--grace", "0s")
	if strings.Count(out, "MARKED now") != 2 || !strings.Contains(out, "purged 0 set(s); 2 waiting") {
		t.Fatalf("--mark --purge output:\n%s", out)
	}
	out = expect(t, 0, "", "list", "--repo", repoURL)
	if strings.Count(out, "marked, purge after") != 2 {
		t.Fatalf("list:\n%s", out)
	}

	// Restore as of an instant between the first and second sets: the
	// first is marked, so nothing qualifies; by ID it still restores.
	scratch := testenv.NewDatabase(t)
	at := ids[1][:4] + "-" + ids[1][4:6] + "-" + ids[1][6:8] + "T" + ids[1][9:11] + ":" + ids[1][11:13] + ":" + ids[1][13:15] + "Z"
	expect(t, 2, "before the oldest snapshot set", "restore", "--repo", repoURL, "--target", scratch, "--tenant", "acme", "--at", at, "--dry-run", "--create-schema")
	out = expect(t, 0, "", "restore", "--repo", repoURL, "--target", scratch, "--tenant", "acme", "--dry-run", "--create-schema")
	if !strings.Contains(out, ids[2]) {
		t.Fatalf("default restore does not use the newest unmarked set %s:\n%s", ids[2], out)
	}
	out = expect(t, 0, "", "restore", "--repo", repoURL, "--target", scratch, "--tenant", "acme", "--snapshot", ids[0], "--dry-run", "--create-schema")
	if !strings.Contains(out, ids[0]) {
		t.Fatalf("restore --snapshot of a marked set:\n%s", out)
	}

	// A purge with a longer grace period than has passed refuses; unmark
	// undoes a mark.
	before = repoKeys(t, repoURL)
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge")
	if !strings.Contains(out, "purged 0 set(s); 2 waiting") || !reflect.DeepEqual(before, repoKeys(t, repoURL)) {
		t.Fatalf("purge before grace:\n%s", out)
	}
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--unmark", ids[1])
	if !strings.Contains(out, "unmarked set "+ids[1]) {
		t.Fatalf("unmark: %s", out)
	}
	expect(t, 2, "is not marked for deletion", "prune", "--repo", repoURL, "--unmark", ids[1])

	// With a grace period of 0 the remaining marked set goes.
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge", "--grace", "0s", "--gc-min-age", "0")
	if !strings.Contains(out, "purged set "+ids[0]) || !strings.Contains(out, "purged 1 set(s); 0 waiting") {
		t.Fatalf("purge: %s", out)
	}
	out = expect(t, 0, "", "list", "--repo", repoURL)
	if strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || strings.Contains(out, "marked") {
		t.Fatalf("list after purge:\n%s", out)
	}
	expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
}
