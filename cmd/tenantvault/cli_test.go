package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// tv runs one command line and returns its exit code and output.
func tv(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func expect(t *testing.T, wantCode int, wantErr string, args ...string) string {
	t.Helper()
	code, out, errOut := tv(t, args...)
	if code != wantCode || !strings.Contains(errOut, wantErr) {
		t.Fatalf("tenantvault %s\nexit %d (want %d)\nstderr: %s\nwant stderr to contain %q", strings.Join(args, " "), code, wantCode, errOut, wantErr)
	}
	if wantCode != 0 && strings.Contains(errOut, "goroutine ") {
		t.Fatalf("stack trace on stderr: %s", errOut)
	}
	return out
}

func TestUsageErrors(t *testing.T) {
	expect(t, 2, "--source is required", "snapshot", "--repo", "file:///tmp/x")
	expect(t, 2, "unknown flag: --nope", "snapshot", "--nope")
	expect(t, 2, "--schema-batch -1: use a positive number of schemas, or 0 for one pg_dump run", "snapshot", "--source", "postgres://127.0.0.1:1/x", "--repo", "file:///tmp/x", "--schema-batch", "-1")
	expect(t, 2, `unknown command "snapsot"`, "snapsot")
	expect(t, 2, "--repo is required", "list")
	expect(t, 2, "--target is required", "restore", "--repo", "file:///x", "--tenant", "a")
	expect(t, 2, "no tenants given", "restore", "--repo", "file:///x", "--target", "postgres://x/y")
	expect(t, 2, "--at and --snapshot exclude each other", "restore", "--repo", "file:///x", "--target", "postgres://x/y", "--tenant", "a", "--at", "2026-01-01T00:00:00Z", "--snapshot", "x")
	expect(t, 2, `--shard "3/3": want i/N with 0 <= i < N`, "restore", "--repo", "file:///x", "--target", "postgres://x/y", "--tenant", "a", "--shard", "3/3")
	expect(t, 2, `--log-level "loud"`, "list", "--repo", "file:///x", "--log-level", "loud")
}

func TestRepositoryURLErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain-file")
	os.WriteFile(file, []byte("x"), 0o644)
	cases := []struct {
		name, url, want string
		code            int
	}{
		{"malformed", "s3://bucket/%zz", "cannot be parsed", 2},
		{"no scheme", "/backups/x", "has no scheme", 2},
		{"unknown scheme", "ftp://host/x", `unknown scheme "ftp" (supported: file, s3)`, 2},
		{"credentials in URL", "s3://key:secret@bucket/x", "must not contain credentials", 2},
		{"relative file path", "file://relative/dir", "absolute", 2},
		{"missing directory", "file://" + filepath.Join(dir, "missing"), "does not exist (create it, or pass --init", 2},
		{"not a directory", "file://" + file, "not a directory", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			expect(t, c.code, c.want, "list", "--repo", c.url)
		})
	}
	t.Run("not writable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			// Root writes anywhere; /proc is writable by no one.
			expect(t, 2, "not writable", "list", "--repo", "file:///proc/self")
			return
		}
		ro := filepath.Join(dir, "ro")
		os.Mkdir(ro, 0o555)
		expect(t, 2, "not writable", "list", "--repo", "file://"+ro)
	})
	t.Run("empty repository", func(t *testing.T) {
		expect(t, 2, "holds no snapshots yet", "list", "--repo", "file://"+t.TempDir())
	})
	t.Run("not a repository", func(t *testing.T) {
		expect(t, 2, "is not empty and is not a tenantvault repository", "snapshot", "--source", "postgres://x@127.0.0.1:1/x", "--repo", "file://"+dir)
	})
	t.Run("newer format", func(t *testing.T) {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, "tenantvault.json"), []byte(`{"format":"tenantvault","version":99,"id":"x"}`), 0o644)
		expect(t, 2, "uses format version 99", "list", "--repo", "file://"+d)
	})
}

func TestS3Errors(t *testing.T) {
	ep := testenv.S3Endpoint(t)
	t.Run("unreachable", func(t *testing.T) {
		start := time.Now()
		expect(t, 1, "cannot reach S3 endpoint http://127.0.0.1:1", "list", "--repo", "s3://bkt/x?endpoint=http://127.0.0.1:1&region=us-east-1")
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("missing credentials", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		expect(t, 2, "AWS_ACCESS_KEY_ID", "list", "--repo", "s3://bkt/x?endpoint="+ep+"&region=us-east-1")
	})
	t.Run("wrong credentials", func(t *testing.T) {
		url := testenv.NewS3Repo(t)
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
		code, _, errOut := tv(t, "list", "--repo", url)
		if code != 2 || strings.Contains(errOut, "wrong-secret-value") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		expect(t, 2, "mc mb", "list", "--repo", "s3://no-such-bucket-tv/x?endpoint="+ep+"&region=us-east-1")
	})
	t.Run("init creates the bucket", func(t *testing.T) {
		bucket := testenv.RandomName("tvtest-init-")
		url := testenv.S3RepoURL(t, bucket, "r")
		t.Cleanup(func() { testenv.S3Client(t).RemoveBucket(testenv.Context(t, 10*time.Second), bucket) })
		db := testenv.NewDatabase(t)
		fixture.Create(t, db)
		expect(t, 0, "", "snapshot", "--source", db, "--repo", url, "--init")
		out := expect(t, 0, "", "list", "--repo", url, "--json")
		var sets []map[string]any
		if err := json.Unmarshal([]byte(out), &sets); err != nil || len(sets) != 1 {
			t.Fatalf("list --json: %v %s", err, out)
		}
	})
}

// corruptChunk flips one byte in the middle of a tenant's chunk of a table,
// on disk, and returns the set ID.
func corruptChunk(t *testing.T, dir, tenant, table string) string {
	t.Helper()
	code, out, errOut := tv(t, "list", "--repo", "file://"+dir, "--json")
	if code != 0 {
		t.Fatal(errOut)
	}
	var sets []struct{ ID string }
	json.Unmarshal([]byte(out), &sets)
	id := sets[len(sets)-1].ID
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, "file://"+dir, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := v.ReadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Tenant(tenant).Chunks {
		if m.Tables[c.Table].Name != table {
			continue
		}
		path := filepath.Join(dir, filepath.FromSlash(m.Packs[c.Pack]))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		data[c.Offset+c.Length/2] ^= 0x40
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return id
	}
	t.Fatalf("no chunk of %s for %q", table, tenant)
	return ""
}

func TestSnapshotRestoreVerify(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	dir := t.TempDir()
	r := "file://" + dir
	expect(t, 0, "", "snapshot", "--source", db, "--repo", r)
	// --full: the second set must not share chunks with the first, which
	// this test damages.
	out := expect(t, 0, "", "snapshot", "--source", db, "--repo", r, "--json", "--full")
	var set struct {
		ID    string
		Stats struct{ Tenants, ReusedChunks int } `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &set); err != nil || set.Stats.Tenants != len(fixture.Tenants) {
		t.Fatalf("snapshot --json: %v %s", err, out)
	}
	expect(t, 2, `1 unknown tenant(s) in source database`, "snapshot", "--source", db, "--repo", r, "--tenant", "nobody")

	// Bad input: nothing written, exit 2.
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	base := []string{"restore", "--repo", r, "--target", db}
	expect(t, 2, `2 unknown tenant(s) in any snapshot set`, append(base, "--tenant", "acme", "--tenant", "nobody", "--tenant", "x'y")...)
	expect(t, 2, `--at "yesterday" is not an RFC 3339 time`, append(base, "--tenant", "acme", "--at", "yesterday")...)
	expect(t, 2, `is before the oldest snapshot set`, append(base, "--tenant", "acme", "--at", "2020-01-01T00:00:00Z")...)
	expect(t, 2, `"globex": public.events (9)`, append(base, "--tenant", "globex")...)
	tenantsFile := filepath.Join(t.TempDir(), "tenants")
	os.WriteFile(tenantsFile, []byte("acme\r\no'brien & co\n\n"), 0o644)
	// A dry run prints the plan with its conflicts and exits as the real
	// run would: refused.
	out = expect(t, 2, "already have rows", append(base, "--tenants-file", tenantsFile, "--dry-run")...)
	if !strings.Contains(out, `"o'brien & co"`) || !strings.Contains(out, "public.events") {
		t.Fatalf("dry run plan: %s", out)
	}
	expect(t, 0, "", append(base, "--tenants-file", tenantsFile, "--dry-run", "--if-exists", "replace")...)
	var n int
	testenv.Connect(t, db).QueryRow(testenv.Context(t, time.Minute), "SELECT count(*) FROM tenants WHERE id = 'acme'").Scan(&n)
	if n != 0 {
		t.Fatal("a dry run wrote rows")
	}

	// A damaged object: verify names it, restore refuses it with exit 3.
	id := corruptChunk(t, dir, "acme", "tasks")
	out = expect(t, 0, "", "verify", "--repo", r)
	if !strings.Contains(out, "0 problem(s)") {
		t.Fatalf("verify without --read-data should pass: %s", out)
	}
	code, out, _ := tv(t, "verify", "--repo", r, "--read-data")
	if code != 3 || !strings.Contains(out, `set `+id+` tenant "acme" table public.tasks`) {
		t.Fatalf("verify --read-data: exit %d\n%s", code, out)
	}
	code, out, errOut := tv(t, append(base, "--tenant", "acme")...)
	if code != 3 || !strings.Contains(errOut, "public.tasks") || !strings.Contains(out, "rolled back") {
		t.Fatalf("restore of a damaged chunk: exit %d\n%s\n%s", code, out, errOut)
	}
	testenv.Connect(t, db).QueryRow(testenv.Context(t, time.Minute), "SELECT count(*) FROM users WHERE tenant_id = 'acme'").Scan(&n)
	if n != 0 {
		t.Fatal("a failed restore left rows behind")
	}
	// The older, undamaged set still restores.
	code, out, _ = tv(t, "list", "--repo", r, "--json")
	var sets []struct{ ID string }
	json.Unmarshal([]byte(out), &sets)
	out = expect(t, 0, "", append(base, "--tenant", "acme", "--snapshot", sets[0].ID)...)
	if !strings.Contains(out, "restored 1 of 1 tenant(s)") {
		t.Fatal(out)
	}
}

func TestEnvironmentAndConfigFile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TENANTVAULT_REPO", "file://"+filepath.Join(dir, "from-env"))
	expect(t, 2, "from-env does not exist", "list")
	cfg := filepath.Join(dir, "tv.yaml")
	os.WriteFile(cfg, []byte("repo: file:///from-file\nlist:\n  tenant: x\n"), 0o644)
	t.Setenv("TENANTVAULT_REPO", "")
	os.Unsetenv("TENANTVAULT_REPO")
	expect(t, 2, "/from-file does not exist", "list", "--config", cfg)
	// Flags win over the file.
	expect(t, 2, "from-flag does not exist", "list", "--config", cfg, "--repo", "file:///from-flag")
	os.WriteFile(cfg, []byte("parallel: [1, 2]\n"), 0o644)
	expect(t, 2, "parallel: takes one value, not a list", "restore", "--config", cfg)
}
