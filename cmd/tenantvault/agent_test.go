package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// TestAgentCLIHelper is not a test: re-executed by agentChild, it runs one
// tenantvault command line as a process of its own, which the tests can
// signal and kill.
func TestAgentCLIHelper(t *testing.T) {
	raw := os.Getenv("TENANTVAULT_TEST_CHILD_ARGS")
	if raw == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		panic(err)
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr))
}

// child is a tenantvault process started by a test.
type child struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

func agentChild(t *testing.T, env []string, args ...string) *child {
	t.Helper()
	raw, _ := json.Marshal(args)
	c := &child{done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestAgentCLIHelper$")
	c.cmd.Env = append(append(os.Environ(), "TENANTVAULT_TEST_CHILD_ARGS="+string(raw)), env...)
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	// Its own process group, so that a kill reaches pg_dump too.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
	return c
}

// wait returns the exit code, failing the test after d.
func (c *child) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		t.Fatalf("process still running after %s; stderr:\n%s", d, c.stderr.String())
	}
	return c.cmd.ProcessState.ExitCode()
}

// slowPgDump writes a pg_dump wrapper that sleeps first. A snapshot's
// workers upload their packs while the schema dump still runs, so a test
// can catch a snapshot with packs written and no manifest yet.
func slowPgDump(t *testing.T, seconds int) string {
	t.Helper()
	real, err := exec.LookPath("pg_dump")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pg_dump")
	// sleep must not hold the shell's stdout: a cancelled snapshot kills
	// the shell, and its output pipe must close with it.
	script := fmt.Sprintf("#!/bin/sh\nsleep %d </dev/null >/dev/null 2>&1\nexec %s \"$@\"\n", seconds, real)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// repoState lists the complete sets and the sets that have packs but no
// manifest.
func repoState(t *testing.T, repoURL string) (complete, incomplete []string) {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		return nil, nil
	}
	complete, err = v.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, id := range complete {
		live[id] = true
	}
	seen := map[string]bool{}
	b.List(ctx, vault.PacksPrefix, func(o repo.ObjectInfo) error {
		set, _, _ := strings.Cut(strings.TrimPrefix(o.Key, vault.PacksPrefix), "/")
		if !live[set] && !seen[set] {
			seen[set] = true
			incomplete = append(incomplete, set)
		}
		return nil
	})
	return complete, incomplete
}

// waitIncomplete waits until a snapshot has uploaded packs and not yet its
// manifest.
func waitIncomplete(t *testing.T, repoURL string, c *child) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, inc := repoState(t, repoURL); len(inc) > 0 {
			return inc[0]
		}
		select {
		case <-c.done:
			t.Fatalf("process ended early: %v\n%s", c.err, c.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no snapshot in progress; stderr:\n%s", c.stderr.String())
	return ""
}

// TestSnapshotKilledThenRestartAndGC kills `tenantvault snapshot` with
// SIGKILL after it uploaded packs and before its manifest: no incomplete set
// is listed, the next snapshot succeeds, and prune collects the leftovers
// once they are older than the minimum age (0 here), never before.
func TestSnapshotKilledThenRestartAndGC(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	c := agentChild(t, nil, "snapshot", "--source", db, "--repo", repoURL, "--pg-dump", slowPgDump(t, 60))
	killed := waitIncomplete(t, repoURL, c)
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	c.wait(t, 10*time.Second)

	out := expect(t, 0, "", "list", "--repo", repoURL)
	if strings.Contains(out, killed) {
		t.Fatalf("list shows the killed set:\n%s", out)
	}
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL)
	complete, incomplete := repoState(t, repoURL)
	if len(complete) != 1 || len(incomplete) != 1 || incomplete[0] != killed {
		t.Fatalf("complete %v, incomplete %v", complete, incomplete)
	}
	expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")

	// Too young for the default minimum age (a running snapshot's packs
	// look just like these).
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge")
	if !strings.Contains(out, "collected 0 unreferenced object(s)") || strings.Contains(out, killed) {
		t.Fatalf("prune collected young leftovers:\n%s", out)
	}
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--gc-min-age", "0")
	if !strings.Contains(out, "would collect packs/"+killed+"/") || !strings.Contains(out, "pack of a snapshot that never finished") {
		t.Fatalf("dry run does not show the leftovers:\n%s", out)
	}
	if _, inc := repoState(t, repoURL); len(inc) != 1 {
		t.Fatal("the dry run deleted")
	}
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge", "--gc-min-age", "0")
	if !strings.Contains(out, "collected packs/"+killed+"/") {
		t.Fatalf("prune --purge output:\n%s", out)
	}
	if complete2, inc := repoState(t, repoURL); len(inc) != 0 || len(complete2) != 1 {
		t.Fatalf("after GC: complete %v, incomplete %v", complete2, inc)
	}
	expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
}

// TestAgentSignalDrain sends SIGTERM to `tenantvault agent` while a
// snapshot runs: with time enough the snapshot completes; with a short
// shutdown_timeout it is cancelled and leaves nothing behind. Either way
// the agent exits 0 and no incomplete set remains.
func TestAgentSignalDrain(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	for _, tc := range []struct {
		name     string
		timeout  string
		sleep    int
		complete int
	}{
		{"finishes within the timeout", "1m", 2, 1},
		{"cancelled at the timeout", "1s", 30, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repoURL := testenv.NewS3Repo(t)
			cfg := filepath.Join(t.TempDir(), "agent.yaml")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
shutdown_timeout: %s
pg_dump: %s
retention:
  grace: 1h
sources:
  - name: main
    url_env: TV_SOURCE
    schedule: "@every 1s"
    timeout: 50s
`, repoURL, tc.timeout, slowPgDump(t, tc.sleep))), 0o600)
			c := agentChild(t, []string{"TV_SOURCE=" + withPassword(t, db, "drain-secret-pw")}, "agent", "--config", cfg)
			waitIncomplete(t, repoURL, c)
			c.cmd.Process.Signal(syscall.SIGTERM)
			if code := c.wait(t, 40*time.Second); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, c.stderr.String())
			}
			complete, incomplete := repoState(t, repoURL)
			if len(complete) != tc.complete || len(incomplete) != 0 {
				t.Fatalf("complete %v, incomplete %v; stderr:\n%s", complete, incomplete, c.stderr.String())
			}
			logs := c.stderr.String()
			if !strings.Contains(logs, `"msg":"signal received: draining`) || !strings.Contains(logs, `"msg":"agent stopped"`) {
				t.Fatalf("logs:\n%s", logs)
			}
			if strings.Contains(logs, "drain-secret-pw") {
				t.Fatal("the password is in the logs")
			}
		})
	}
}

func withPassword(t *testing.T, dbURL, pw string) string {
	t.Helper()
	return strings.Replace(dbURL, "postgres://postgres@", "postgres://postgres:"+pw+"@", 1)
}

// TestAgentCheck: --check lists every problem, one per line, with exit 2,
// and prints a one-line summary with exit 0; a normal start with a bad
// config fails the same way.
func TestAgentCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`repository: s3://bucket/x
listen: nowhere
sources:
  - name: main
    url: postgres://u:hunter2-pw@db/app
    schedule: "every hour"
    tenancy: rows
    retires: 3
`), 0o600)
	want := bad + `: line 2: listen: "nowhere" is not host:port (e.g. 127.0.0.1:9187, or :9187 for every interface)
` + bad + `: line 6: sources[0].schedule: bad schedule "every hour": expected 5 to 6 fields, found 2: [every hour]
` + bad + `: line 7: sources[0].tenancy: unknown tenancy model "rows" (use column, schema or database)
` + bad + `: line 8: unknown key "retires" in sources[0] (did you mean "retries"?)
`
	for _, args := range [][]string{{"agent", "--config", bad, "--check"}, {"agent", "--config", bad}} {
		code, out, errOut := tv(t, args...)
		if code != 2 || errOut != want || out != "" {
			t.Fatalf("%v: exit %d\nstdout %q\nstderr:\n%s\nwant:\n%s", args, code, out, errOut, want)
		}
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`repository: file:///var/lib/tenantvault
sources:
  - name: main
    url_env: TV_TEST_AGENT_CHECK_URL
    schedule: "@every 30s"
`), 0o600)
	t.Setenv("TV_TEST_AGENT_CHECK_URL", "postgres://backup:pw@db/app")
	code, out, errOut := tv(t, "agent", "--config", good, "--check")
	if code != 0 || out != "config OK: 1 source(s): main (@every 30s); repository file:///var/lib/tenantvault; listen 127.0.0.1:9187\n" || errOut != "" {
		t.Fatalf("exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	expect(t, 2, "--config FILE is required", "agent")
	expect(t, 2, "no such file or directory", "agent", "--config", filepath.Join(dir, "missing.yaml"), "--check")
}
