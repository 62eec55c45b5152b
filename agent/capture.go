package agent

import (
	"time"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/vault"
)

// captureStandBy is how often a replica that does not capture a source
// tries to take over.
const captureStandBy = 10 * time.Second

// captureLoop keeps a source's change capture running while the agent
// schedules: restarted with backoff when it stops, stopped (after
// archiving what is complete) when scheduling stops.
func (a *Agent) captureLoop(s *sourceJob) {
	defer a.loops.Done()
	log := a.log.With("source", s.Name, "job", "capture")
	stats := &capture.Stats{}
	done := make(chan struct{})
	defer close(done)
	go a.captureMetrics(s, stats, done)
	backoff := time.Second
	standingBy := false
	for a.schedCtx.Err() == nil {
		// One replica captures a source; the others wait for its lock.
		lock, err := tryLock(a.schedCtx, s.url, captureLockKey, "tenantvault agent capture lock")
		if err == nil && lock == nil {
			if !standingBy {
				log.Info("another agent replica captures this source; standing by")
				standingBy = true
			}
			if !sleep(a.schedCtx, a.clock, captureStandBy) {
				return
			}
			continue
		}
		standingBy = false
		var v *vault.Vault
		if err == nil {
			v, err = vault.Open(a.schedCtx, a.backend, vault.Options{Init: true, Logger: log, Now: a.clock.Now, Keys: a.cfg.keys})
		}
		if err == nil {
			a.m.captureRunning.WithLabelValues(s.Name).Set(1)
			start := a.clock.Now()
			err = capture.Run(a.schedCtx, capture.Options{
				Source: s.url, Vault: v, Tenancy: s.tenancy, Slot: s.CaptureSlot,
				FlushInterval: s.CaptureFlushInterval.D, MaxLag: s.CaptureMaxLag,
				SetReplicaIdentity: s.SetReplicaIdentity, Logger: log, Stats: stats,
			})
			a.m.captureRunning.WithLabelValues(s.Name).Set(0)
			if a.clock.Now().Sub(start) > 5*time.Minute {
				backoff = time.Second // it ran a good while: start over
			}
		}
		if lock != nil {
			lock.release()
		}
		if err == nil || a.schedCtx.Err() != nil {
			return
		}
		a.m.captureFailures.WithLabelValues(s.Name).Inc()
		s.mu.Lock()
		s.captureErr = err.Error()
		s.mu.Unlock()
		log.Error("change capture stopped; restarting", "err", err, "in", backoff.String())
		a.webhooks.send(webhookEvent{Event: "capture_failed", Source: s.Name, Error: err.Error(), Host: a.host, Time: a.clock.Now().UTC()})
		t, stop := a.clock.After(backoff)
		select {
		case <-t:
		case <-a.schedCtx.Done():
		}
		stop()
		backoff = min(backoff*2, time.Minute)
	}
}

// captureMetrics copies the capture's counters into the metrics.
func (a *Agent) captureMetrics(s *sourceJob, st *capture.Stats, done <-chan struct{}) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		a.m.captureRecords.WithLabelValues(s.Name).Set(float64(st.Records.Load()))
		a.m.captureSegments.WithLabelValues(s.Name).Set(float64(st.Segments.Load()))
		a.m.captureLag.WithLabelValues(s.Name).Set(float64(st.LagBytes.Load()))
		if at := st.ArchivedAt.Load(); at > 0 {
			a.m.captureArchived.WithLabelValues(s.Name).Set(float64(at))
		}
		s.mu.Lock()
		s.captureLagBytes = st.LagBytes.Load()
		s.mu.Unlock()
	}
}
