package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
)

// The fixture repositories in testdata/v1repo were written by the
// tenantvault of commit ce4f3f5, before set format 2 existed, and those in
// testdata/v6repo by the first build of set format 6 (the columnar chunk
// layout): two sets of the fixture database each (the second after a change
// to "acme", so it reuses the other tenants' chunks), once plaintext and
// once encrypted (the test keys sit next to them). expect.json holds every
// tenant's rows as of the second set, read with plain SQL. They prove that
// this build still reads what older builds wrote; they are never rewritten
// by later code.
var fixtureDirs = []string{"testdata/v1repo", "testdata/v6repo"}

// TestWriteFixture regenerates testdata/$TENANTVAULT_WRITE_FIXTURE (v1repo
// or v6repo). It only runs when asked and only makes sense with the build
// that wrote the committed one; the fixture's point is that it is old.
func TestWriteFixture(t *testing.T) {
	name := os.Getenv("TENANTVAULT_WRITE_FIXTURE")
	if name == "" {
		t.Skip("writes testdata only when TENANTVAULT_WRITE_FIXTURE names a fixture")
	}
	dir := filepath.Join("testdata", name)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "keys"), 0o755)
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	identity, signing, recipient := keygen(t, filepath.Join(dir, "keys"))
	plain, _ := filepath.Abs(filepath.Join(dir, "plain"))
	enc, _ := filepath.Abs(filepath.Join(dir, "encrypted"))
	expect(t, 0, "", "snapshot", "--source", src, "--repo", "file://"+plain, "--init")
	expect(t, 0, "", "snapshot", "--source", src, "--repo", "file://"+enc, "--init", "--recipient", recipient, "--signing-key", signing)
	testenv.Exec(t, src, `UPDATE projects SET name = name || ' v2' WHERE tenant_id = 'acme'`)
	expect(t, 0, "", "snapshot", "--source", src, "--repo", "file://"+plain)
	expect(t, 0, "", "snapshot", "--source", src, "--repo", "file://"+enc, "--signing-key", signing)
	_ = identity

	ctx := testenv.Context(t, time.Minute)
	conn := testenv.Connect(t, src)
	want := map[string]fixture.State{}
	for _, tenant := range fixture.Tenants {
		st, err := fixture.Read(ctx, conn, tenant)
		if err != nil {
			t.Fatal(err)
		}
		want[tenant] = st
	}
	data, _ := json.MarshalIndent(want, "", " ")
	if err := os.WriteFile(filepath.Join(dir, "expect.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies the fixture into a temporary directory, so that tests
// (verify records, restores' pre-restore sets) never write into testdata.
func copyTree(t *testing.T, from string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), filepath.Base(from))
	err := filepath.Walk(from, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return to
}

// TestReadFixtures lists, verifies and restores the repositories older
// builds wrote, with this build.
func TestReadFixtures(t *testing.T) {
	for _, dir := range fixtureDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) { readFixture(t, dir) })
	}
}

func readFixture(t *testing.T, dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "expect.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]fixture.State
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	identity, _ := filepath.Abs(filepath.Join(dir, "keys", "restore.key"))
	for _, kind := range []string{"plain", "encrypted"} {
		t.Run(kind, func(t *testing.T) {
			r := "file://" + copyTree(t, filepath.Join(dir, kind))
			var keys []string
			if kind == "encrypted" {
				keys = []string{"--identity", identity}
			}
			out := expect(t, 0, "", append([]string{"list", "--repo", r, "--json"}, keys...)...)
			var sets []struct {
				ID    string
				Stats struct{ Tenants int } `json:"stats"`
			}
			if err := json.Unmarshal([]byte(out), &sets); err != nil || len(sets) != 2 || sets[1].Stats.Tenants != len(fixture.Tenants) {
				t.Fatalf("list: %v\n%s", err, out)
			}
			out = expect(t, 0, "", append([]string{"list", "--repo", r, "--tenant", "o'brien & co"}, keys...)...)
			if strings.Count(out, sets[0].ID)+strings.Count(out, sets[1].ID) != 2 {
				t.Fatalf("list --tenant:\n%s", out)
			}
			out = expect(t, 0, "", append([]string{"verify", "--repo", r, "--read-data"}, keys...)...)
			if !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify:\n%s", out)
			}
			dst := testenv.NewDatabase(t)
			tenants := append([]string(nil), fixture.Tenants...)
			sort.Strings(tenants)
			args := append([]string{"restore", "--repo", r, "--target", dst, "--create-schema", "--yes"}, keys...)
			for _, tenant := range tenants {
				args = append(args, "--tenant", tenant)
			}
			out = expect(t, 0, "", args...)
			if !strings.Contains(out, "restored 8 of 8 tenant(s)") {
				t.Fatalf("restore:\n%s", out)
			}
			ctx := testenv.Context(t, time.Minute)
			conn := testenv.Connect(t, dst)
			for _, tenant := range tenants {
				got, err := fixture.Read(ctx, conn, tenant)
				if err != nil {
					t.Fatal(err)
				}
				if d := fixture.Diff(want[tenant], got); d != "" {
					t.Errorf("tenant %q restored from fixture %s differs:\n%s", tenant, dir, d)
				}
			}
		})
	}
}
