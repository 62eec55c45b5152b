package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tenantvault/tenantvault/internal/testenv"
)

// TestReplayProof: with capture on, every new set proves the interval of
// the change log that ends at it (on by default). Then a table is made
// UNLOGGED while the capture runs, so its changes never reach the WAL: the
// next proof finds the divergence, names the tenant, table and LSN range,
// sets the metric and calls the webhook.
func TestReplayProof(t *testing.T) {
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `
CREATE TABLE tenants (id text PRIMARY KEY);
CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id text NOT NULL, body text);
CREATE TABLE pings (id bigserial PRIMARY KEY, tenant_id text NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO tenants VALUES ('a'), ('b'), ('c');
INSERT INTO notes (tenant_id, body) SELECT id, 'note' FROM tenants, generate_series(1, 5)`)
	repoURL := testenv.NewS3Repo(t)
	var mu sync.Mutex
	var events []webhookEvent
	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var ev webhookEvent
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Errorf("webhook body %s: %v", b, err)
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	defer hooks.Close()
	var logs syncBuffer
	a := startAgent(t, fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
webhook_url: %q
retention:
  grace: 1h
sources:
  - name: main
    url_env: SOURCE_URL
    schedule: "@every 3s"
    timeout: 50s
    capture: true
    capture_flush_interval: 200ms
    set_replica_identity: true
    replay_proof_scratch_env: SCRATCH_URL
`, repoURL, hooks.URL), map[string]string{"SOURCE_URL": db, "SCRATCH_URL": testenv.PostgresURL(t)}, &logs, nil)
	defer a.Stop()
	// A steady writer (another table, another tenant) keeps the log moving,
	// as on a live source: an idle one's moves only at the heartbeat.
	stopWriter := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		conn := testenv.Connect(t, db)
		for {
			select {
			case <-stopWriter:
				return
			case <-time.After(100 * time.Millisecond):
			}
			conn.Exec(context.Background(), `INSERT INTO pings (tenant_id) VALUES ('c')`)
		}
	}()
	defer func() { close(stopWriter); <-writerDone }()
	gauge := func() (success, divergences float64) {
		return testutil.ToFloat64(a.m.replayProofLastSuccess.WithLabelValues("main")), testutil.ToFloat64(a.m.replayProofDivergences.WithLabelValues("main"))
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if ok() {
				return
			}
		}
		t.Fatalf("%s never happened; logs:\n%.6000s", what, logs.String())
	}
	// Writes between sets give the proofs something to prove.
	testenv.Exec(t, db, `INSERT INTO notes (tenant_id, body) VALUES ('a', 'between'); DELETE FROM notes WHERE tenant_id = 'b' AND id % 2 = 0`)
	waitFor("a successful replay proof", func() bool { s, _ := gauge(); return s > 0 })
	if _, d := gauge(); d != 0 {
		t.Fatalf("divergences %v on an honest log", d)
	}
	if !strings.Contains(logs.String(), `"msg":"replay proof: change log replays to the next set exactly"`) {
		t.Fatalf("logs lack the proof:\n%.3000s", logs.String())
	}

	// The plant: the log stops seeing notes.
	testenv.Exec(t, db, `ALTER TABLE notes SET UNLOGGED; INSERT INTO notes (tenant_id, body) VALUES ('a', 'unseen')`)
	var ev webhookEvent
	waitFor("a divergence webhook", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			if e.Event == "replay_divergence" {
				ev = e
				return true
			}
		}
		return false
	})
	if _, d := gauge(); d < 1 {
		t.Errorf("divergences metric %v after a divergence", d)
	}
	if ev.Source != "main" || ev.FromSet == "" || ev.ToSet == "" || !strings.Contains(ev.LSNRange, "..") || len(ev.Divergences) != 1 ||
		ev.Divergences[0].Tenant != "a" || ev.Divergences[0].Table != "public.notes" || !strings.Contains(ev.Divergences[0].Detail, "digests differ") {
		t.Fatalf("webhook event %+v", ev)
	}
	_, metrics := get(t, "http://"+a.Addr()+"/metrics")
	for _, want := range []string{
		`tenantvault_replay_proof_divergences{source="main"} 1`,
		`tenantvault_replay_proof_last_run_timestamp_seconds{source="main"}`,
		`tenantvault_replay_proof_last_success_timestamp_seconds{source="main"}`,
		`tenantvault_replay_proof_failures_total{source="main"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(logs.String(), `"tenant":"a","table":"public.notes"`) {
		t.Errorf("logs do not name the divergent tenant and table:\n%.3000s", logs.String())
	}
}
