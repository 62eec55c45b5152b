package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tenantvault/tenantvault/vault"
)

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	// Alive means the process serves requests; nothing outside it (the
	// database, the storage) may fail liveness, or an outage would turn
	// into a restart loop.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	return mux
}

// SourceStatus is one source's part of /readyz.
type SourceStatus struct {
	Name        string     `json:"name"`
	Running     bool       `json:"running"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastSet     string     `json:"last_set,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Deadline    time.Time  `json:"deadline"`
	Late        bool       `json:"late"`
	// CaptureLag is the WAL the source keeps for the change capture; past
	// capture_lag_alert the agent is not ready.
	CaptureLag   int64  `json:"capture_lag_bytes,omitempty"`
	CaptureError string `json:"capture_error,omitempty"`
	CaptureAlert bool   `json:"capture_lag_alert,omitempty"`
}

// Readiness is the /readyz document.
type Readiness struct {
	Ready      bool           `json:"ready"`
	Repository string         `json:"repository"`
	Late       []string       `json:"late,omitempty"`
	Sources    []SourceStatus `json:"sources"`
}

// Ready reports whether the repository answers and every source has a
// successful set younger than twice its schedule interval plus its jitter
// (counted from the agent's start when it has none).
func (a *Agent) Ready(ctx context.Context) Readiness {
	r := Readiness{Ready: true, Repository: "ok"}
	if err := a.checkRepo(ctx); err != nil {
		r.Ready = false
		r.Repository = "unreachable: " + a.red.String(err.Error())
	}
	now := a.clock.Now()
	statuses := a.sourceStatuses(now)
	var late bool
	for _, st := range statuses {
		late = late || st.Late
	}
	if late && r.Repository == "ok" {
		// Another replica may have taken the sets this agent skipped.
		a.refreshLastSuccess(ctx)
		statuses = a.sourceStatuses(now)
	}
	for _, st := range statuses {
		if st.Late || st.CaptureAlert {
			r.Ready = false
			r.Late = append(r.Late, st.Name)
		}
	}
	r.Sources = statuses
	return r
}

func (a *Agent) sourceStatuses(now time.Time) []SourceStatus {
	var out []SourceStatus
	for _, s := range a.sources {
		s.mu.Lock()
		st := SourceStatus{Name: s.Name, Running: s.running.Load(), LastSet: s.lastSet, LastError: s.lastErr,
			CaptureLag: s.captureLagBytes, CaptureError: s.captureErr}
		st.CaptureAlert = s.Capture && s.captureLagBytes > s.CaptureLagAlert
		from := a.started
		if !s.lastSuccess.IsZero() {
			t := s.lastSuccess.UTC()
			st.LastSuccess = &t
			if t.After(from) {
				from = t
			}
		}
		s.mu.Unlock()
		st.Deadline = from.Add(2*interval(s.schedule, now) + s.Jitter.D).UTC()
		st.Late = now.After(st.Deadline)
		out = append(out, st)
	}
	return out
}

func (a *Agent) readyz(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	r := a.Ready(ctx)
	w.Header().Set("Content-Type", "application/json")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(r)
}

// checkRepo reads the repository config, at most every 10 seconds however
// often probes come.
func (a *Agent) checkRepo(ctx context.Context) error {
	a.repoMu.Lock()
	defer a.repoMu.Unlock()
	if time.Since(a.repoChecked) < 10*time.Second {
		return a.repoErr
	}
	_, err := a.backend.Stat(ctx, vault.ConfigKey)
	a.repoChecked, a.repoErr = time.Now(), err
	return err
}

// refreshLastSuccess re-reads the newest sets, at most every 30 seconds.
func (a *Agent) refreshLastSuccess(ctx context.Context) {
	a.repoMu.Lock()
	if time.Since(a.seeded) < 30*time.Second {
		a.repoMu.Unlock()
		return
	}
	a.seeded = time.Now()
	a.repoMu.Unlock()
	a.seedLastSuccess(ctx)
}
