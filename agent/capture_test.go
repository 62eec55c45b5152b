package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// TestAgentCapture runs a source with capture on: the agent keeps its
// change log going, takes its sets at exact LSNs, and exports the
// capture's metrics.
func TestAgentCapture(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	var logs syncBuffer
	a := startAgent(t, fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
sources:
  - name: main
    url_env: SOURCE_URL
    schedule: "@every 2s"
    timeout: 50s
    capture: true
    capture_flush_interval: 200ms
    set_replica_identity: true
`, repoURL), map[string]string{"SOURCE_URL": db}, &logs, nil)
	w := fixture.StartWriter(t, db, []string{"acme", "globex"}, 1)
	waitSets(t, repoURL, 2, 90*time.Second)
	w.Stop()
	time.Sleep(3 * time.Second) // a metrics tick
	_, metrics := get(t, "http://"+a.Addr()+"/metrics")
	a.Stop()

	v, _ := openVault(t, repoURL)
	ctx := testenv.Context(t, time.Minute)
	ids, _ := v.ListSets(ctx)
	sets, err := v.ReadManifests(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range sets {
		if !m.LSNExact {
			t.Fatalf("set %s was not taken at an exact LSN", m.ID)
		}
	}
	cfg, _ := tenancy.ParseURL(db)
	refs, err := v.ListSegments(ctx, vault.StreamName(sets[0].Source.SystemID, cfg.Database))
	if err != nil || len(refs) < 2 {
		t.Fatalf("segments: %d, %v\n%s", len(refs), err, logs.String())
	}
	for _, want := range []string{`tenantvault_capture_running{source="main"}`, `tenantvault_capture_records{source="main"}`, `tenantvault_capture_slot_lag_bytes{source="main"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(metrics, `tenantvault_capture_records{source="main"} 0`) {
		t.Errorf("capture archived nothing:\n%s", logs.String())
	}
}

// TestTwoAgentsCaptureOneSource: replicas with capture on take turns
// through an advisory lock, so exactly one captures and the other stands
// by, instead of both fighting over the one replication slot.
func TestTwoAgentsCaptureOneSource(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	cfg := fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
sources:
  - name: shared
    url_env: SOURCE_URL
    schedule: "@every 3s"
    timeout: 50s
    capture: true
    capture_flush_interval: 200ms
    set_replica_identity: true
    replay_proof: false
`, repoURL)
	var logs1, logs2 syncBuffer
	a1 := startAgent(t, cfg, map[string]string{"SOURCE_URL": db}, &logs1, nil)
	a2 := startAgent(t, cfg, map[string]string{"SOURCE_URL": db}, &logs2, nil)
	w := fixture.StartWriter(t, db, []string{"acme"}, 1)
	waitSets(t, repoURL, 2, 90*time.Second)
	w.Stop()
	time.Sleep(3 * time.Second)
	running := testutil.ToFloat64(a1.m.captureRunning.WithLabelValues("shared")) + testutil.ToFloat64(a2.m.captureRunning.WithLabelValues("shared"))
	failures := testutil.ToFloat64(a1.m.captureFailures.WithLabelValues("shared")) + testutil.ToFloat64(a2.m.captureFailures.WithLabelValues("shared"))
	a1.Stop()
	a2.Stop()
	standby := strings.Count(logs1.String()+logs2.String(), "another agent replica captures this source; standing by")
	if running != 1 || failures != 0 || standby != 1 {
		t.Fatalf("%v captures running, %v capture failures, %d standing by\nagent 1:\n%.3000s\nagent 2:\n%.3000s", running, failures, standby, logs1.String(), logs2.String())
	}
}
