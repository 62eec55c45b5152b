package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/vault"
)

// syncBuffer collects logs from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// withPassword puts a password into a database URL. The test cluster trusts
// local connections, so the password is sent nowhere that checks it, but it
// is exactly the kind of secret that must never reach a log.
func withPassword(t *testing.T, dbURL, pw string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String()
}

func startAgent(t *testing.T, yaml string, env map[string]string, logs io.Writer, hook func(string, string)) *Agent {
	t.Helper()
	cfg, err := Load([]byte(yaml), func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	a := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Version: "test", hook: hook})
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

func openVault(t *testing.T, repoURL string) (*vault.Vault, repo.Backend) {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return v, b
}

// waitSets waits until the repository holds at least n sets.
func waitSets(t *testing.T, repoURL string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if v, b, err := tryVault(repoURL); err == nil {
			ids, err := v.ListSets(context.Background())
			b.Close()
			if err == nil && len(ids) >= n {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("fewer than %d sets after %s", n, within)
}

func tryVault(repoURL string) (*vault.Vault, repo.Backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		return nil, nil, err
	}
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return v, b, nil
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// noIncompleteSets checks that every packs/<set>/ has a manifest.
func noIncompleteSets(t *testing.T, v *vault.Vault, b repo.Backend) {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	ids, err := v.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, id := range ids {
		live[id] = true
	}
	b.List(ctx, vault.PacksPrefix, func(o repo.ObjectInfo) error {
		set, _, _ := strings.Cut(strings.TrimPrefix(o.Key, vault.PacksPrefix), "/")
		if !live[set] {
			t.Errorf("pack %s belongs to no complete set", o.Key)
		}
		return nil
	})
}

const password = "Pw-n0t-In-L0gs-7731"

// TestAgentSnapshotsMetricsRetentionAndStop runs the agent every second
// against a real PostgreSQL and MinIO: several sets appear, each verified;
// /metrics tells about them; retention marks all but the newest two; Stop
// drains and leaves no incomplete set; the password appears nowhere.
func TestAgentSnapshotsMetricsRetentionAndStop(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	var logs syncBuffer
	a := startAgent(t, fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
shutdown_timeout: 1m
purge_schedule: "@every 1s"
retention:
  keep_last: 2
  grace: 1h
sources:
  - name: main
    url_env: SOURCE_URL
    schedule: "@every 1s"
    timeout: 50s
`, repoURL), map[string]string{"SOURCE_URL": withPassword(t, db, password)}, &logs, nil)
	base := "http://" + a.Addr()

	waitSets(t, repoURL, 4, 90*time.Second)
	_, metrics := get(t, base+"/metrics")
	code, ready := get(t, base+"/readyz")
	_, health := get(t, base+"/healthz")
	a.Stop()

	v, b := openVault(t, repoURL)
	ctx := testenv.Context(t, time.Minute)
	ids, _ := v.ListSets(ctx)
	sets, err := v.ReadManifests(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range sets {
		if m.Kind != manifest.KindScheduled || m.Source.Name != "main" || m.Stats.Tenants != len(fixture.Tenants) {
			t.Fatalf("set %s: kind %s source %q tenants %d", m.ID, m.Kind, m.Source.Name, m.Stats.Tenants)
		}
	}
	// Metrics, read over HTTP and from the registry.
	n := float64(len(ids))
	if got := testutil.ToFloat64(a.m.snapshots.WithLabelValues("main")); got != n {
		t.Errorf("snapshots_total %v, %v sets", got, n)
	}
	for _, want := range []string{
		`tenantvault_snapshot_tenants{source="main"} 8`,
		`tenantvault_build_info{goversion=`,
		`tenantvault_snapshot_running{source="main"}`,
		`tenantvault_snapshot_failures_total{source="main"} 0`,
		`tenantvault_verify_failures_total{source="main"} 0`,
		`tenantvault_snapshot_skipped_total{reason="locked",source="main"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	last := sets[len(sets)-1]
	if got := testutil.ToFloat64(a.m.lastSuccess.WithLabelValues("main")); got < float64(sets[0].FinishedAt.Unix()) || got > float64(last.FinishedAt.Unix()+1) {
		t.Errorf("last success %v, sets finished %s..%s", got, sets[0].FinishedAt, last.FinishedAt)
	}
	if got := testutil.ToFloat64(a.m.written.WithLabelValues("main")); got <= 0 {
		t.Errorf("bytes written %v", got)
	}
	if got := testutil.ToFloat64(a.m.reused.WithLabelValues("main")); got <= 0 {
		t.Errorf("bytes reused %v: unchanged tenants should be deduplicated", got)
	}
	if got := testutil.ToFloat64(a.m.rows.WithLabelValues("main")); got != float64(last.Stats.Rows) {
		t.Errorf("rows %v, last set %d", got, last.Stats.Rows)
	}
	// Retention marked all but the two newest (and only marked).
	marks, _ := v.Marks(ctx)
	verified, _ := v.Verifications(ctx)
	marked := testutil.ToFloat64(a.m.marked.WithLabelValues("main"))
	if int(marked) != len(marks) || len(marks) < len(ids)-3 || len(marks) > len(ids)-2 {
		t.Errorf("%d sets, %d marked (metric %v)", len(ids), len(marks), marked)
	}
	for _, id := range ids[len(ids)-2:] {
		if _, ok := marks[id]; ok {
			t.Errorf("newest set %s marked", id)
		}
	}
	for _, id := range ids {
		if _, ok := verified[id]; !ok {
			t.Errorf("set %s has no verification record", id)
		}
	}
	if got := testutil.ToFloat64(a.m.purged); got != 0 {
		t.Errorf("purged %v sets within the grace period", got)
	}
	if code != http.StatusOK || !strings.Contains(ready, `"ready": true`) || health != "ok\n" {
		t.Errorf("readyz %d %s; healthz %q", code, ready, health)
	}
	noIncompleteSets(t, v, b)
	for what, text := range map[string]string{"logs": logs.String(), "metrics": metrics, "readyz": ready} {
		if strings.Contains(text, password) {
			t.Errorf("the password appears in the %s", what)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"snapshot verified"`) || !strings.Contains(logs.String(), `"msg":"marked set for deletion"`) {
		t.Errorf("logs lack verification or marking:\n%.3000s", logs.String())
	}
}

// TestTwoAgentsOneSource runs two agents on one source at the same
// schedule: the advisory lock lets one snapshot at a time, the other skips.
func TestTwoAgentsOneSource(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	var inside, most atomic.Int32
	hook := func(_, phase string) {
		switch phase {
		case "locked":
			n := inside.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
		case "unlocking":
			inside.Add(-1)
		}
	}
	cfg := fmt.Sprintf(`
repository: %q
init: true
listen: 127.0.0.1:0
retention:
  grace: 1h
sources:
  - name: shared
    url: %q
    schedule: "@every 1s"
    timeout: 50s
`, repoURL, db)
	var logs syncBuffer
	a1 := startAgent(t, cfg, nil, &logs, hook)
	a2 := startAgent(t, cfg, nil, &logs, hook)
	waitSets(t, repoURL, 3, 90*time.Second)
	// Keep going until a slot found the other agent holding the lock.
	deadline := time.Now().Add(30 * time.Second)
	skipped := func() float64 {
		return testutil.ToFloat64(a1.m.skipped.WithLabelValues("shared", "locked")) + testutil.ToFloat64(a2.m.skipped.WithLabelValues("shared", "locked"))
	}
	for skipped() == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	a1.Stop()
	a2.Stop()
	if skipped() == 0 {
		t.Error("no run was skipped for the lock")
	}
	if most.Load() != 1 {
		t.Errorf("%d snapshots of the source ran at once", most.Load())
	}
	v, b := openVault(t, repoURL)
	ctx := testenv.Context(t, time.Minute)
	ids, _ := v.ListSets(ctx)
	sets, err := v.ReadManifests(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(sets); i++ {
		if sets[i].StartedAt.Before(sets[i-1].FinishedAt) {
			t.Errorf("set %s started at %s, before set %s finished at %s", sets[i].ID, sets[i].StartedAt, sets[i-1].ID, sets[i-1].FinishedAt)
		}
	}
	both := testutil.ToFloat64(a1.m.snapshots.WithLabelValues("shared")) + testutil.ToFloat64(a2.m.snapshots.WithLabelValues("shared"))
	if int(both) != len(sets) {
		t.Errorf("agents wrote %v sets, repository has %d", both, len(sets))
	}
	noIncompleteSets(t, v, b)
}

// TestFailuresRetryNotifyAndStaySecret points a source at a server that is
// not there: attempts fail and retry, the webhook hears of it, readiness
// names the late source, and the password appears in no log, webhook body,
// metrics or health page.
func TestFailuresRetryNotifyAndStaySecret(t *testing.T) {
	repoURL := testenv.NewS3Repo(t)
	var mu sync.Mutex
	var bodies []string
	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
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
  - name: gone
    url_env: GONE_URL
    schedule: "@every 2s"
    timeout: 10s
    retries: 2
    retry_backoff: 100ms
`, repoURL, hooks.URL+"/hook/secret-token"), map[string]string{"GONE_URL": "postgres://backup:" + password + "@127.0.0.1:1/app?connect_timeout=2"}, &logs, nil)
	base := "http://" + a.Addr()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(bodies)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, metrics := get(t, base+"/metrics")
	_, ready := get(t, base+"/readyz")
	a.Stop()
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) == 0 {
		t.Fatalf("no webhook call; logs:\n%.3000s", logs.String())
	}
	var ev webhookEvent
	if err := json.Unmarshal([]byte(bodies[0]), &ev); err != nil || ev.Event != "snapshot_failed" || ev.Source != "gone" || ev.Attempts != 3 || !strings.Contains(ev.Error, "127.0.0.1:1") {
		t.Errorf("webhook body %s (%v)", bodies[0], err)
	}
	if got := testutil.ToFloat64(a.m.failures.WithLabelValues("gone")); got < 3 {
		t.Errorf("failures_total %v, want at least 3 (one slot and its two retries)", got)
	}
	all := logs.String() + metrics + ready + strings.Join(bodies, "\n")
	for _, secret := range []string{password, "secret-token"} {
		if strings.Contains(all, secret) {
			t.Errorf("%q leaked:\n%s", secret, all)
		}
	}
	if !strings.Contains(ready, `"last_error"`) {
		t.Errorf("readyz does not show the last error: %s", ready)
	}
}
