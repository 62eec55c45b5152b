package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// TestFaultsAgentKilled kills the agent with SIGKILL (its whole process
// group, pg_dump included) at random moments of its work: snapshots,
// uploads, manifest writes, verification, retention marking and purges,
// into an encrypted repository on MinIO. After each kill: every listed set
// verifies with every byte decrypted and digested, and the next snapshot
// succeeds. The counts are logged; TENANTVAULT_SOAK=N makes N times as
// many runs.
func TestFaultsAgentKilled(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	identity, signing, _ := keygen(t, t.TempDir())
	repoURL := testenv.NewS3Repo(t)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--signing-key", signing)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
pg_dump: %s
purge_schedule: "@every 1s"
retention:
  keep_last: 2
  grace: 20s
encryption:
  signing_key_file: %s
sources:
  - name: main
    url_env: TV_KILL_SOURCE
    schedule: "@every 1s"
    timeout: 15s
    verify_read_data: true
`, repoURL, slowPgDump(t, 1), signing)), 0o600)

	n := 6
	if s, err := strconv.Atoi(os.Getenv("TENANTVAULT_SOAK")); err == nil && s > 1 {
		n *= s
	}
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	kills, interrupted, violations, before, written, early := 0, 0, 0, 0, 0, 0
	for i := range n {
		// Change a tenant, so the agent's snapshots upload packs rather
		// than referencing the previous set's chunks.
		testenv.Exec(t, db, fmt.Sprintf(`UPDATE projects SET name = 'run %d ' || id WHERE tenant_id = 'big'`, i))
		c := agentChild(t, []string{"TV_KILL_SOURCE=" + db}, "agent", "--config", cfg)
		// The schema dump takes a second more than usual (while the
		// packs upload), so that kills land in every phase: before the
		// first upload, between packs and manifest, in verification,
		// retention and purges.
		time.Sleep(500*time.Millisecond + time.Duration(rnd.IntN(6000))*time.Millisecond)
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		c.wait(t, 10*time.Second)
		logs := c.stderr.String()
		if !strings.Contains(logs, `"msg":"agent started"`) {
			early++ // killed while still starting (a busy machine)
		}
		written += strings.Count(logs, `"msg":"snapshot written"`)
		if testing.Verbose() {
			t.Logf("run %d: agent log before the kill:\n%s", i, lastLines(logs, 3))
		}
		kills++
		complete, incomplete := repoState(t, repoURL)
		if len(incomplete) > before {
			interrupted++ // killed between the first pack and the manifest
		}
		before = len(incomplete)
		// Every listed set is complete and verifiable, decrypted.
		code, out, errOut := tv(t, "verify", "--repo", repoURL, "--read-data", "--identity", identity)
		if code != 0 {
			violations++
			t.Errorf("run %d: INVARIANT VIOLATED: verify after the kill: exit %d\n%s%s", i, code, out, errOut)
		}
		// The next run succeeds.
		code, _, errOut = tv(t, "snapshot", "--source", db, "--repo", repoURL, "--signing-key", signing)
		if code != 0 {
			violations++
			t.Errorf("run %d: INVARIANT VIOLATED: the snapshot after the kill failed: exit %d\n%s", i, code, errOut)
		}
		t.Logf("run %d: %d complete set(s), %d interrupted snapshot(s) left behind", i, len(complete), len(incomplete))
	}
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	keys := &vault.Keys{}
	if _, err := keys.LoadKeyFile(identity); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, b, vault.Options{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	marks, _ := v.Marks(ctx)
	testenv.Report(t, "faults agent SIGKILL: %d runs, %d kills (%d while starting), %d sets written by the agent, %d kills left an interrupted snapshot behind, %d sets still marked at the end, %d invariant violations",
		n, kills, early, written, interrupted, len(marks), violations)
	if early == n {
		t.Fatal("the agent never started before it was killed")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
