package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
