// Package agent runs scheduled snapshots of configured sources with retries, per-source locks across replicas, verification, retention marking, purge and garbage collection, and serves metrics and health over HTTP.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/vault"
)

// Options are what New needs besides the config.
type Options struct {
	// Logger receives the agent's logs; every record passes through the
	// agent's secret redaction first. Nil discards.
	Logger *slog.Logger
	// Clock schedules; nil means the wall clock.
	Clock Clock
	// Version is reported in build_info.
	Version string
	// Getenv reads repository credentials; nil means os.Getenv.
	Getenv func(string) string
	// hook, in tests, sees each phase of each job.
	hook func(source, phase string)
	// attempt, in tests, replaces one attempt of a job.
	attempt func(ctx context.Context, s *sourceJob, log *slog.Logger) error
}

// Agent runs the jobs of one config. Start it once; Stop drains it.
type Agent struct {
	cfg   *Config
	log   *slog.Logger
	red   *redactor
	clock Clock
	m     *metrics
	opts  Options
	host  string

	backend repo.Backend
	sources []*sourceJob
	http    *http.Server
	ln      net.Listener
	started time.Time

	schedCtx    context.Context // ends when scheduling stops
	stopSched   context.CancelFunc
	jobCtx      context.Context // ends when running jobs must stop
	cancelJobs  context.CancelFunc
	loops, jobs sync.WaitGroup
	httpDone    chan struct{}
	webhooks    webhookSender
	stopOnce    sync.Once

	repoMu      sync.Mutex
	repoChecked time.Time
	repoErr     error
	seeded      time.Time
}

// sourceJob is the state of one source's schedule.
type sourceJob struct {
	*Source
	running atomic.Bool

	mu              sync.Mutex
	lastSuccess     time.Time
	lastSet         string
	lastErr         string
	captureErr      string
	captureLagBytes int64
}

// New prepares an agent for a config Load accepted. It opens nothing yet.
func New(cfg *Config, opts Options) *Agent {
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	a := &Agent{cfg: cfg, clock: opts.Clock, opts: opts, red: newRedactor(cfg), m: newMetrics(opts.Version)}
	base := opts.Logger
	if base == nil {
		base = slog.New(slog.DiscardHandler)
	}
	a.log = slog.New(&redactHandler{h: base.Handler(), r: a.red})
	a.host, _ = os.Hostname()
	for i := range cfg.Sources {
		a.sources = append(a.sources, &sourceJob{Source: &cfg.Sources[i]})
		a.m.initSource(&cfg.Sources[i], a.clock.Now())
	}
	a.webhooks = webhookSender{url: cfg.WebhookURL, log: a.log, red: a.red, fail: a.m.webhookFail, sem: make(chan struct{}, 4)}
	return a
}

// Logger is the agent's redacting logger.
func (a *Agent) Logger() *slog.Logger { return a.log }

// Addr is the address the HTTP server listens on, once started.
func (a *Agent) Addr() string {
	if a.ln == nil {
		return ""
	}
	return a.ln.Addr().String()
}

// Start opens the repository, binds the HTTP listener and starts every
// schedule. ctx is the parent of the jobs: cancelling it cancels running
// snapshots at once, while Stop lets them finish first.
func (a *Agent) Start(ctx context.Context) error {
	getenv := a.opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	b, err := repo.Open(ctx, a.cfg.Repository, repo.Options{Create: a.cfg.Init, Getenv: getenv})
	if err != nil {
		return err
	}
	a.backend = repo.Retry(b, repo.RetryOptions{Logger: a.log})
	if a.cfg.Init {
		if _, err := vault.Open(ctx, a.backend, vault.Options{Init: true, Logger: a.log, Now: a.clock.Now, Keys: a.cfg.keys}); err != nil {
			a.backend.Close()
			return err
		}
	}
	a.ln, err = net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		a.backend.Close()
		return fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
	}
	a.started = a.clock.Now()
	a.seedLastSuccess(ctx)
	a.schedCtx, a.stopSched = context.WithCancel(ctx)
	a.jobCtx, a.cancelJobs = context.WithCancel(ctx)
	a.http = &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	a.httpDone = make(chan struct{})
	go func() {
		defer close(a.httpDone)
		if err := a.http.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("HTTP server stopped", "err", err)
		}
	}()
	for _, s := range a.sources {
		a.loops.Add(1)
		go a.scheduleLoop(s)
		a.log.Info("scheduled source", "source", s.Name, "schedule", s.Schedule, "timezone", s.loc.String(),
			"next", s.schedule.Next(a.clock.Now()).Format(time.RFC3339), "retention", fmt.Sprintf("%+v", s.policy))
	}
	for _, s := range a.sources {
		if s.Capture {
			a.loops.Add(1)
			go a.captureLoop(s)
		}
	}
	a.loops.Add(1)
	go a.purgeLoop()
	a.log.Info("agent started", "repository", a.backend.Location(), "listen", a.Addr(), "sources", len(a.sources), "version", a.opts.Version)
	return nil
}

// Stop stops scheduling, lets running jobs finish for up to the config's
// shutdown_timeout, then cancels them (a cancelled snapshot writes no
// manifest and removes its packs) and waits for them. It is safe to call
// more than once.
func (a *Agent) Stop() {
	a.stopOnce.Do(func() {
		if a.stopSched == nil {
			return // never started
		}
		a.stopSched()
		a.loops.Wait()
		done := make(chan struct{})
		go func() { a.jobs.Wait(); close(done) }()
		select {
		case <-done:
		default:
			a.log.Info("waiting for running jobs to finish", "timeout", a.cfg.ShutdownTimeout.D.String())
			t, stop := a.clock.After(a.cfg.ShutdownTimeout.D)
			select {
			case <-done:
			case <-t:
				a.log.Warn("shutdown timeout reached: cancelling running jobs")
				a.cancelJobs()
				<-done
			}
			stop()
		}
		a.cancelJobs()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.http.Shutdown(ctx)
		<-a.httpDone
		a.webhooks.wait()
		a.backend.Close()
		a.log.Info("agent stopped")
	})
}

// jitter draws a random delay in [0, max).
func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}

// scheduleLoop fires the source's job at each slot plus jitter. A slot
// that finds the previous run still going is skipped and counted: a source
// is never snapshotted twice at once by one agent (and the advisory lock
// sees to that across agents).
func (a *Agent) scheduleLoop(s *sourceJob) {
	defer a.loops.Done()
	log := a.log.With("source", s.Name)
	for {
		now := a.clock.Now()
		slot := s.schedule.Next(now)
		fire := slot.Add(jitter(s.Jitter.D))
		if !sleep(a.schedCtx, a.clock, fire.Sub(now)) {
			return
		}
		if !s.running.CompareAndSwap(false, true) {
			a.m.skipped.WithLabelValues(s.Name, "overrun").Inc()
			log.Warn("previous snapshot still running: skipping this slot", "slot", slot.Format(time.RFC3339))
			continue
		}
		// Retries of this run stop at the next slot, which starts afresh.
		next := s.schedule.Next(slot)
		a.jobs.Add(1)
		go func() {
			defer a.jobs.Done()
			defer s.running.Store(false)
			a.runJob(s, slot, next)
		}()
	}
}

// errSkipped means another replica holds the source's lock.
var errSkipped = errors.New("skipped: another agent is snapshotting this source")

// runJob runs one scheduled slot: attempts with exponential backoff until
// one succeeds, the error is one retrying cannot fix, retries run out, the
// next slot is due, or the agent stops.
func (a *Agent) runJob(s *sourceJob, slot, next time.Time) {
	log := a.log.With("source", s.Name, "slot", slot.Format(time.RFC3339))
	backoff := s.RetryBackoff.D
	for attempt := 1; ; attempt++ {
		try := a.attempt
		if a.opts.attempt != nil {
			try = a.opts.attempt
		}
		err := try(a.jobCtx, s, log.With("attempt", attempt))
		if err == nil || errors.Is(err, errSkipped) {
			return
		}
		s.mu.Lock()
		s.lastErr = a.red.String(err.Error())
		s.mu.Unlock()
		if a.jobCtx.Err() != nil {
			log.Warn("snapshot cancelled by shutdown", "err", err)
			return
		}
		a.m.failures.WithLabelValues(s.Name).Inc()
		retry := attempt <= *s.Retries && !permanent(err) && a.schedCtx.Err() == nil
		wait := backoff + jitter(backoff/4)
		if retry && !a.clock.Now().Add(wait).Before(next) {
			retry = false
			log.Warn("no retry before the next scheduled run", "next", next.Format(time.RFC3339))
		}
		if !retry {
			log.Error("snapshot failed", "err", err, "attempts", attempt)
			a.webhooks.send(webhookEvent{Event: "snapshot_failed", Source: s.Name, Error: err.Error(), Attempts: attempt, Host: a.host, Time: a.clock.Now().UTC()})
			return
		}
		log.Warn("snapshot failed; retrying", "err", err, "in", wait.String())
		if !sleep(a.schedCtx, a.clock, wait) {
			return
		}
		backoff *= 2
	}
}

// permanent reports errors that the same attempt would meet again: bad
// input (credentials, tenancy settings) and damaged data.
func permanent(err error) bool {
	var ie *tenantvault.InputError
	return errors.As(err, &ie) || errors.Is(err, tenantvault.ErrIntegrity)
}

func (a *Agent) phase(s *sourceJob, p string) {
	if a.opts.hook != nil {
		a.opts.hook(s.Name, p)
	}
}

// attempt takes the source's lock and, holding it, snapshots, verifies the
// new set and applies retention to the source's sets.
func (a *Agent) attempt(parent context.Context, s *sourceJob, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(parent, s.Timeout.D)
	defer cancel()
	lock, err := lockSource(ctx, s.url)
	if err != nil {
		return err
	}
	if lock == nil {
		a.m.skipped.WithLabelValues(s.Name, "locked").Inc()
		log.Info("another agent holds this source's lock: skipping this run")
		return errSkipped
	}
	defer lock.release()
	a.phase(s, "locked")
	defer a.phase(s, "unlocking")
	a.m.running.WithLabelValues(s.Name).Set(1)
	defer a.m.running.WithLabelValues(s.Name).Set(0)

	// A vault per run: its manifest cache then lives as long as the run.
	v, err := vault.Open(ctx, a.backend, vault.Options{Init: true, Logger: log, Now: a.clock.Now, Keys: a.cfg.keys})
	if err != nil {
		return err
	}
	log.Info("snapshot starting")
	a.phase(s, "snapshot")
	m, err := snapshot.Run(ctx, snapshot.Options{
		Source: s.url, Vault: v, Tenancy: s.tenancy, Parallel: s.Parallel, Level: s.CompressionLevel,
		WorkMem: s.WorkMem, LockTimeout: s.LockTimeout.D, TempDir: a.cfg.TempDir, PgDump: a.cfg.PgDump,
		SchemaArchive: s.SchemaArchive, Kind: manifest.KindScheduled, SourceName: s.Name, Logger: log, Now: a.clock.Now,
		ExactLSN: s.Capture,
	})
	if err != nil {
		if ctx.Err() != nil && parent.Err() == nil {
			return fmt.Errorf("snapshot timed out after %s: %w", s.Timeout.D, err)
		}
		return err
	}
	a.phase(s, "written")
	st := m.Stats
	a.m.snapshots.WithLabelValues(s.Name).Inc()
	a.m.written.WithLabelValues(s.Name).Add(float64(st.Written))
	a.m.reused.WithLabelValues(s.Name).Add(float64(st.Reused))
	a.m.tenants.WithLabelValues(s.Name).Set(float64(st.Tenants))
	a.m.rows.WithLabelValues(s.Name).Set(float64(st.Rows))
	a.m.erased.WithLabelValues(s.Name).Set(float64(m.ErasedPresent))
	a.m.lastDuration.WithLabelValues(s.Name).Set(st.Seconds)
	a.m.lastSuccess.WithLabelValues(s.Name).Set(float64(m.FinishedAt.UnixNano()) / 1e9)
	s.mu.Lock()
	s.lastSuccess, s.lastSet, s.lastErr = m.FinishedAt, m.ID, ""
	s.mu.Unlock()
	log.Info("snapshot written", "set", m.ID, "tenants", st.Tenants, "rows", st.Rows, "written_bytes", st.Written, "reused_bytes", st.Reused, "seconds", st.Seconds)

	by := "agent " + a.host
	res, err := v.VerifySet(ctx, m.ID, s.VerifyReadData, by)
	if err != nil {
		return fmt.Errorf("verify set %s: %w", m.ID, err)
	}
	if len(res.Problems) > 0 {
		a.m.verifyFail.WithLabelValues(s.Name).Inc()
		for _, p := range res.Problems {
			log.Error("verification problem", "set", m.ID, "problem", p.String())
		}
		// Not retried (an integrity error) and no retention: an older
		// verified set must not lose its place to this one.
		return tenantvault.Integrityf("set %s failed verification: %d problem(s), the first: %s", m.ID, len(res.Problems), res.Problems[0])
	}
	log.Info("snapshot verified", "set", m.ID, "read_data", s.VerifyReadData, "chunks", res.Chunks)
	a.phase(s, "verified")
	if s.proof {
		a.replayProof(ctx, v, s, m, log)
		a.phase(s, "replay-proof")
	}
	if err := a.retention(ctx, v, s, m, by, log); err != nil {
		// The set is safe; retention runs again after the next one.
		log.Error("retention failed", "err", err)
	}
	return nil
}

// replayProof proves the change log over the interval that ends at the
// new set: tenants of the previous exact set, replayed to this one's LSN,
// must have this one's digests. A divergence is logged with the tenant,
// table and LSN range, counted, and sent to the webhook; it does not fail
// the snapshot, which stands on its own digests.
func (a *Agent) replayProof(ctx context.Context, v *vault.Vault, s *sourceJob, m *manifest.Manifest, log *slog.Logger) {
	now := func() float64 { return float64(a.clock.Now().UnixNano()) / 1e9 }
	defer func() { a.m.replayProofLastRun.WithLabelValues(s.Name).Set(now()) }()
	scratch := s.scratch
	if scratch == "" {
		scratch = s.url
	}
	// The set is taken at an LSN the capture may not have archived yet.
	if err := a.awaitLog(ctx, v, s, m); err != nil {
		a.replayProofFailed(s, m, log, err.Error())
		return
	}
	checks, err := restore.VerifyReplay(ctx, restore.VerifyReplayOptions{Vault: v, Scratch: scratch, Latest: m.ID,
		MaxTenants: s.ReplayProofTenants, PgRestore: a.cfg.PgRestore, Logger: log})
	var ie *tenantvault.InputError
	switch {
	case errors.As(err, &ie) && len(checks) == 0:
		// The first exact set: nothing before it to replay from.
		log.Info("replay proof: no earlier exact set to prove from", "set", m.ID)
		return
	case err != nil:
		a.replayProofFailed(s, m, log, err.Error())
		return
	}
	for _, c := range checks {
		for _, u := range c.Unprovable {
			log.Warn("replay proof: tenant not provable by the change log alone", "from", c.From, "to", c.To, "tenant", u)
		}
		switch {
		case c.Skipped != "":
			// A log that starts after the older set (the agent's first
			// run) or has a gap: nothing to prove here. Not a failure, and
			// not a success either: a stale last success is what alerts.
			log.Warn("replay proof: interval not provable", "from", c.From, "to", c.To, "lsn_range", c.FromLSN+".."+c.ToLSN, "why", c.Skipped)
		case len(c.Divergences) > 0:
			a.m.replayProofDivergences.WithLabelValues(s.Name).Set(float64(len(c.Divergences)))
			for _, d := range c.Divergences {
				log.Error("replay proof: the change log does not replay to the next set", "from", c.From, "to", c.To,
					"lsn_range", c.FromLSN+".."+c.ToLSN, "tenant", d.Tenant, "table", d.Table, "detail", d.Detail)
			}
			a.webhooks.send(webhookEvent{Event: "replay_divergence", Source: s.Name, Host: a.host, Time: a.clock.Now().UTC(),
				Error:   fmt.Sprintf("%d tenant table(s) did not replay from set %s to set %s (LSN %s..%s)", len(c.Divergences), c.From, c.To, c.FromLSN, c.ToLSN),
				FromSet: c.From, ToSet: c.To, LSNRange: c.FromLSN + ".." + c.ToLSN, Divergences: c.Divergences})
		default:
			a.m.replayProofDivergences.WithLabelValues(s.Name).Set(0)
			a.m.replayProofLastSuccess.WithLabelValues(s.Name).Set(now())
			log.Info("replay proof: change log replays to the next set exactly", "from", c.From, "to", c.To, "tenants", c.Tenants, "lsn_range", c.FromLSN+".."+c.ToLSN)
		}
	}
}

// awaitLog waits until the source's change log reaches the set's LSN,
// for as long as a capture that keeps up needs.
func (a *Agent) awaitLog(ctx context.Context, v *vault.Vault, s *sourceJob, m *manifest.Manifest) error {
	want, err := vault.ParseLSN(m.LSN)
	if err != nil {
		return fmt.Errorf("set %s has a bad LSN %q", m.ID, m.LSN)
	}
	stream := vault.StreamName(m.Source.SystemID, m.Source.Database)
	// An idle source's log moves on only at the capture's heartbeat.
	wait := 10*s.CaptureFlushInterval.D + 2*capture.DefaultHeartbeat
	for deadline := a.clock.Now().Add(wait); ; {
		refs, err := v.ListSegments(ctx, stream)
		if err != nil {
			return err
		}
		if len(refs) > 0 && refs[len(refs)-1].End >= want {
			return nil
		}
		if !a.clock.Now().Before(deadline) {
			return fmt.Errorf("the change log did not reach set %s (LSN %s) within %s: is the capture behind?", m.ID, m.LSN, durationText(wait))
		}
		if !sleep(ctx, a.clock, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (a *Agent) replayProofFailed(s *sourceJob, m *manifest.Manifest, log *slog.Logger, msg string) {
	a.m.replayProofFailures.WithLabelValues(s.Name).Inc()
	log.Error("replay proof could not run", "set", m.ID, "err", msg)
	a.webhooks.send(webhookEvent{Event: "replay_proof_failed", Source: s.Name, Error: msg, Host: a.host, Time: a.clock.Now().UTC(), ToSet: m.ID})
}

// retention marks the sets of the new set's source that the source's
// policy no longer keeps. It only marks: purging is the purge schedule's.
func (a *Agent) retention(ctx context.Context, v *vault.Vault, s *sourceJob, m *manifest.Manifest, by string, log *slog.Logger) error {
	if !s.policy.HasRules() {
		return nil
	}
	plans, err := v.RetentionPlan(ctx, s.policy, map[string]bool{vault.GroupKey(m): true})
	if err != nil {
		return err
	}
	for _, p := range plans {
		for _, d := range p.ToMark() {
			if _, err := v.MarkSet(ctx, d.ID, "retention: "+d.Reason[0], by, a.cfg.Retention.Grace.D); err != nil {
				return fmt.Errorf("mark set %s: %w", d.ID, err)
			}
			a.m.marked.WithLabelValues(s.Name).Inc()
			log.Info("marked set for deletion", "set", d.ID, "reason", d.Reason[0], "purge_after", a.clock.Now().Add(a.cfg.Retention.Grace.D).UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// purgeLoop purges sets marked at least grace ago, and collects garbage,
// on the purge schedule.
func (a *Agent) purgeLoop() {
	defer a.loops.Done()
	for {
		now := a.clock.Now()
		if !sleep(a.schedCtx, a.clock, a.cfg.purge.Next(now).Sub(now)) {
			return
		}
		a.jobs.Add(1)
		a.purge(a.jobCtx)
		a.jobs.Done()
	}
}

func (a *Agent) purge(ctx context.Context) {
	v, err := vault.Open(ctx, a.backend, vault.Options{Logger: a.log, Now: a.clock.Now, Keys: a.cfg.keys})
	if err != nil {
		if errors.As(err, new(*tenantvault.InputError)) {
			return // no repository yet: nothing to purge
		}
		a.m.purgeFail.Inc()
		a.log.Error("purge: cannot open repository", "err", err)
		return
	}
	res, err := v.Purge(ctx, vault.PurgeOptions{Grace: a.cfg.Retention.Grace.D, GC: vault.GCOptions{MinAge: a.cfg.GCMinAge.D}})
	if res != nil {
		a.m.purged.Add(float64(len(res.Purged)))
		a.m.deleteFail.Add(float64(len(res.Failed)))
		if res.GC != nil {
			a.m.gcObjects.Add(float64(len(res.GC.Collected)))
			a.m.gcBytes.Add(float64(res.GC.Bytes))
			a.m.deleteFail.Add(float64(len(res.GC.Failed)))
		}
	}
	if err != nil {
		a.m.purgeFail.Inc()
		a.log.Error("purge failed", "err", err)
		a.webhooks.send(webhookEvent{Event: "purge_failed", Error: err.Error(), Host: a.host, Time: a.clock.Now().UTC()})
		return
	}
	a.m.purgeLastDone.Set(float64(a.clock.Now().UnixNano()) / 1e9)
	attrs := []any{"purged", len(res.Purged), "waiting", len(res.Waiting), "delete_failures", len(res.Failed)}
	if res.GC != nil {
		attrs = append(attrs, "collected", len(res.GC.Collected), "collected_bytes", res.GC.Bytes, "young", res.GC.Young)
	}
	a.log.Info("purge done", attrs...)
}

// seedLastSuccess reads, for each source, the newest set it wrote, so that
// readiness after a restart judges lateness from the repository rather than
// from the restart.
func (a *Agent) seedLastSuccess(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := vault.Open(ctx, a.backend, vault.Options{Logger: a.log, Keys: a.cfg.keys})
	if err != nil {
		return
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		a.log.Warn("cannot list sets to find the last successful snapshots", "err", err)
		return
	}
	want := map[string]*sourceJob{}
	for _, s := range a.sources {
		want[s.Name] = s
	}
	// Newest first, and not forever: a source missing from the last 200
	// sets is late anyway.
	for i := len(ids) - 1; i >= 0 && i >= len(ids)-200 && len(want) > 0; i-- {
		// The index, not the manifest: the agent cannot decrypt
		// encrypted manifests, and needs no more than this.
		m, err := v.ReadIndex(ctx, ids[i])
		if err != nil {
			continue
		}
		if s := want[m.SourceName]; s != nil && m.Kind == manifest.KindScheduled {
			s.mu.Lock()
			s.lastSuccess, s.lastSet = m.FinishedAt, m.ID
			s.mu.Unlock()
			a.m.lastSuccess.WithLabelValues(s.Name).Set(float64(m.FinishedAt.UnixNano()) / 1e9)
			delete(want, m.SourceName)
		}
	}
}
