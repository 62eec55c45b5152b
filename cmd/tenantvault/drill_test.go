package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	junit "github.com/joshdk/go-junit"
	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/drill"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// drillCLI runs one command line and returns its exit code and output.
func drillCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// drillGone fails the test when the drill's database is still on the server.
func drillGone(t *testing.T, name string) {
	t.Helper()
	if !strings.HasPrefix(name, drill.DatabasePrefix) {
		t.Fatalf("no drill database named: %q", name)
	}
	var n int
	conn := testenv.Connect(t, testenv.PostgresURL(t))
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil || n != 0 {
		t.Fatalf("scratch database %s still there (%d, %v)", name, n, err)
	}
}

func readJUnit(t *testing.T, path string) junit.Suite {
	t.Helper()
	suites, err := junit.IngestFile(path)
	if err != nil || len(suites) != 1 {
		t.Fatalf("JUnit report %s: %v, %d suites", path, err, len(suites))
	}
	return suites[0]
}

func caseStatus(s junit.Suite) map[string]junit.Test {
	out := map[string]junit.Test{}
	for _, c := range s.Tests {
		out[c.Name] = c
	}
	return out
}

// TestDrillCommand drives `tenantvault drill` against MinIO and PostgreSQL:
// a passing drill with both reports, a budget too small for it (exit 1), and
// a pack object damaged in MinIO (exit 3, the tenant named).
func TestDrillCommand(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	bucket := testenv.NewBucket(t)
	r := testenv.S3RepoURL(t, bucket, "repo")
	scratch := testenv.PostgresURL(t)
	if code, _, errOut := drillCLI(t, "snapshot", "--source", src, "--repo", r); code != 0 {
		t.Fatalf("snapshot: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	base := []string{"drill", "--repo", r, "--scratch", scratch}

	t.Run("passes", func(t *testing.T) {
		xmlReport := filepath.Join(dir, "pass.xml")
		code, out, errOut := drillCLI(t, append(base, "--tenants", "3", "--seed", "11", "--report", xmlReport, "--max-rto", "10m")...)
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		for _, want := range []string{"with seed 11 (repeat with: --snapshot ", "digests ok", "RTO budget 10m0s: PASS", "result: PASS", ": dropped"} {
			if !strings.Contains(out, want) {
				t.Errorf("summary lacks %q:\n%s", want, out)
			}
		}
		s := readJUnit(t, xmlReport)
		if s.Totals.Tests != 5 || s.Totals.Passed != 5 {
			t.Errorf("JUnit totals: %+v", s.Totals)
		}
		// The same drill as JSON, on stdout and in a file.
		jsonReport := filepath.Join(dir, "pass.json")
		code, out, errOut = drillCLI(t, append(base, "--tenants", "3", "--seed", "11", "--report", jsonReport, "--json")...)
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		var j drill.JSONReport
		if err := json.Unmarshal([]byte(out), &j); err != nil || !j.Passed || len(j.Tenants) != 3 || j.RTO != "no budget" {
			t.Fatalf("--json: %v\n%s", err, out)
		}
		drillGone(t, j.Database)
		data, err := os.ReadFile(jsonReport)
		if err != nil || !bytes.Contains(data, []byte(`"database": "`+j.Database+`"`)) {
			t.Fatalf("JSON report file: %v\n%s", err, data)
		}
		// The seed repeats the sample.
		for i, tn := range j.Tenants {
			if got := caseStatus(s); got[tn.Tenant].Status != "passed" {
				t.Errorf("tenant %d %q of the JSON run is not in the JUnit run", i, tn.Tenant)
			}
		}
	})

	t.Run("RTO budget exceeded", func(t *testing.T) {
		report := filepath.Join(dir, "rto.xml")
		code, out, errOut := drillCLI(t, append(base, "--tenant", "acme", "--max-rto", "1ns", "--report", report)...)
		if code != 1 || !strings.Contains(errOut, "over the RTO budget of 1ns") || !strings.Contains(out, "RTO budget 1ns: FAIL") {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		cases := caseStatus(readJUnit(t, report))
		if cases["acme"].Status != "passed" || cases[drill.CaseChecks].Status != "passed" || cases[drill.CaseRTO].Status != "failed" {
			t.Fatalf("JUnit cases: %+v", cases)
		}
	})

	t.Run("damaged object in MinIO", func(t *testing.T) {
		// Flip a byte of globex's tasks chunk in the pack object itself.
		b, err := repo.Open(ctx, r, repo.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		v, err := vault.Open(ctx, b, vault.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := v.ListSets(ctx)
		if err != nil || len(ids) != 1 {
			t.Fatalf("sets: %v %v", ids, err)
		}
		m, err := v.ReadManifest(ctx, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		s3 := testenv.S3Client(t)
		for _, c := range m.Tenant("globex").Chunks {
			if m.Tables[c.Table].Name != "tasks" {
				continue
			}
			key := "repo/" + m.Packs[c.Pack]
			obj, err := s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(obj)
			obj.Close()
			if err != nil {
				t.Fatal(err)
			}
			data[c.Offset+c.Length/2] ^= 0x01
			if _, err := s3.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		report := filepath.Join(dir, "damaged.xml")
		code, out, errOut := drillCLI(t, append(base, "--tenant", "globex", "--tenant", "acme", "--report", report, "--json")...)
		if code != 3 || !strings.Contains(errOut, `"globex"`) {
			t.Fatalf("exit %d (want 3)\n%s\n%s", code, out, errOut)
		}
		var j drill.JSONReport
		if err := json.Unmarshal([]byte(out), &j); err != nil || j.Passed {
			t.Fatalf("--json: %v\n%s", err, out)
		}
		drillGone(t, j.Database)
		cases := caseStatus(readJUnit(t, report))
		g := cases["globex"]
		if g.Status != "failed" || !strings.Contains(g.Message, "public.tasks") || g.Error == nil || !strings.Contains(g.Error.Error(), "globex") {
			t.Fatalf("globex case: %+v", g)
		}
		if cases["acme"].Status != "passed" {
			t.Fatalf("acme case: %+v", cases["acme"])
		}
	})
}

func TestDrillUsage(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"drill", "--repo", "file:///x"}, "--scratch is required"},
		{[]string{"drill", "--repo", "file:///x", "--scratch", "postgres://h/p", "--tenants", "2", "--tenant", "a"}, "--tenants N and --tenant ID exclude each other"},
		{[]string{"drill", "--repo", "file:///x", "--scratch", "postgres://h/p", "--tenants", "0"}, "--tenants 0: drill at least one tenant"},
		{[]string{"drill", "--repo", "file:///x", "--scratch", "postgres://h/p", "--report", "out.txt"}, "--report out.txt: name a .xml (JUnit) or .json file"},
		{[]string{"drill", "--repo", "file:///x", "--scratch", "postgres://h/p", "--report", "/nonexistent/dir/r.xml"}, "directory /nonexistent/dir does not exist"},
		{[]string{"drill", "--repo", "file:///x", "--scratch", "postgres://h/p", "--max-rto", "soon"}, `invalid argument "soon"`},
	}
	for _, c := range cases {
		code, _, errOut := drillCLI(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
}
