package agent

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus metrics, in a registry of its own (so
// that two agents in one process, as in tests, do not collide).
type metrics struct {
	reg *prometheus.Registry

	lastSuccess  *prometheus.GaugeVec
	lastDuration *prometheus.GaugeVec
	lateAfter    *prometheus.GaugeVec
	written      *prometheus.CounterVec
	reused       *prometheus.CounterVec
	tenants      *prometheus.GaugeVec
	rows         *prometheus.GaugeVec
	erased       *prometheus.GaugeVec
	snapshots    *prometheus.CounterVec
	failures     *prometheus.CounterVec
	skipped      *prometheus.CounterVec
	running      *prometheus.GaugeVec
	verifyFail   *prometheus.CounterVec
	marked       *prometheus.CounterVec

	purged        prometheus.Counter
	gcObjects     prometheus.Counter
	gcBytes       prometheus.Counter
	deleteFail    prometheus.Counter
	purgeFail     prometheus.Counter
	purgeLastDone prometheus.Gauge
	webhookFail   prometheus.Counter

	captureRunning  *prometheus.GaugeVec
	captureRecords  *prometheus.GaugeVec
	captureSegments *prometheus.GaugeVec
	captureLag      *prometheus.GaugeVec
	captureArchived *prometheus.GaugeVec
	captureFailures *prometheus.CounterVec
	// The source's capture_lag_alert and capture_max_lag, so that alert
	// rules compare the lag with the thresholds the agent itself uses.
	captureLagAlert *prometheus.GaugeVec
	captureMaxLag   *prometheus.GaugeVec

	// Replay proofs (issue 14): the definitions alert rules and the
	// dashboard use; the proof itself sets them.
	replayProofLastRun     *prometheus.GaugeVec
	replayProofLastSuccess *prometheus.GaugeVec
	replayProofDivergences *prometheus.GaugeVec
	replayProofFailures    *prometheus.CounterVec
}

const ns = "tenantvault"

func newMetrics(version string) *metrics {
	src := []string{"source"}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_last_success_timestamp_seconds",
			Help: "When the source's last successful snapshot set finished (Unix time)."}, src),
		lastDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_last_duration_seconds",
			Help: "How long the source's last successful snapshot took."}, src),
		lateAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_late_after_seconds",
			Help: "How long after the source's last successful set /readyz calls it late: twice its schedule interval (at the agent's start) plus its jitter."}, src),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_bytes_written_total",
			Help: "Compressed bytes the source's snapshots uploaded."}, src),
		reused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_bytes_reused_total",
			Help: "Compressed bytes the source's snapshots referenced from earlier sets instead of uploading (deduplicated)."}, src),
		tenants: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_tenants",
			Help: "Tenants in the source's last successful snapshot set."}, src),
		rows: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_rows",
			Help: "Rows in the source's last successful snapshot set."}, src),
		erased: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "erased_tenants_present",
			Help: "Tenants erased from the repository (tenantvault forget) whose rows the source still held at its last successful snapshot: delete them from the database and run forget again."}, src),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshots_total",
			Help: "Snapshot sets the agent wrote for the source."}, src),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_failures_total",
			Help: "Failed snapshot attempts of the source (each retry counts)."}, src),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_skipped_total",
			Help: "Scheduled runs not started: reason=locked (another replica holds the source's lock) or overrun (the previous run is still going)."}, []string{"source", "reason"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_running",
			Help: "1 while a snapshot of the source runs in this agent."}, src),
		verifyFail: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "verify_failures_total",
			Help: "Snapshot sets of the source that failed their verification after the snapshot."}, src),
		marked: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "retention_marked_total",
			Help: "Sets of the source that retention marked for deletion."}, src),
		purged: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "retention_purged_total",
			Help: "Marked sets purged after their grace period."}),
		gcObjects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "gc_collected_objects_total",
			Help: "Unreferenced objects deleted by garbage collection."}),
		gcBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "gc_collected_bytes_total",
			Help: "Bytes of the unreferenced objects deleted by garbage collection."}),
		deleteFail: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "delete_failures_total",
			Help: "Object deletes that failed during purge or GC (e.g. S3 Object Lock); retried on the next purge."}),
		purgeFail: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "purge_failures_total",
			Help: "Purge runs that could not run at all."}),
		purgeLastDone: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "purge_last_success_timestamp_seconds",
			Help: "When the last purge and garbage collection run finished (Unix time)."}),
		webhookFail: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "webhook_failures_total",
			Help: "Failure notifications that could not be delivered (or were dropped)."}),
		captureRunning: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_running",
			Help: "1 while the source's change capture runs."}, src),
		captureRecords: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_records",
			Help: "Changes archived by the source's capture since the agent started."}, src),
		captureSegments: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_segments",
			Help: "Change segments written by the source's capture since the agent started."}, src),
		captureLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_slot_lag_bytes",
			Help: "WAL the source keeps for the capture's replication slot; alert well before capture_max_lag, where the slot is dropped."}, src),
		captureArchived: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_archived_until_timestamp_seconds",
			Help: "Every change committed before this time (Unix) is archived: restore --at reaches it. now() minus this is the recovery point."}, src),
		captureFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "capture_failures_total",
			Help: "Times the source's change capture stopped with an error and was restarted."}, src),
		captureLagAlert: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_lag_alert_bytes",
			Help: "The source's capture_lag_alert: past this slot lag /readyz fails."}, src),
		captureMaxLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "capture_max_lag_bytes",
			Help: "The source's capture_max_lag: past this slot lag the capture drops its slot to protect the source."}, src),
		replayProofLastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_last_run_timestamp_seconds",
			Help: "When the source's last replay proof finished, whatever its result (Unix time)."}, src),
		replayProofLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_last_success_timestamp_seconds",
			Help: "When the source's last replay proof that found no divergence finished (Unix time)."}, src),
		replayProofDivergences: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_divergences",
			Help: "Tables the source's last replay proof found divergent (0: the replayed change log matched)."}, src),
		replayProofFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_proof_failures_total",
			Help: "Replay proofs of the source that could not run to a result."}, src),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help: "Always 1; the labels tell the build."}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build,
		m.lastSuccess, m.lastDuration, m.lateAfter, m.written, m.reused, m.tenants, m.rows, m.erased, m.snapshots, m.failures,
		m.skipped, m.running, m.verifyFail, m.marked,
		m.purged, m.gcObjects, m.gcBytes, m.deleteFail, m.purgeFail, m.purgeLastDone, m.webhookFail,
		m.captureRunning, m.captureRecords, m.captureSegments, m.captureLag, m.captureArchived, m.captureFailures,
		m.captureLagAlert, m.captureMaxLag,
		m.replayProofLastRun, m.replayProofLastSuccess, m.replayProofDivergences, m.replayProofFailures,
	)
	return m
}

// initSource makes every per-source series exist from the start, so that
// alerts on rate() and absent() see zeros rather than nothing.
func (m *metrics) initSource(s *Source, now time.Time) {
	name := s.Name
	// The alert on stale sets compares with this, so that it fires when
	// readiness fails, whatever the schedule.
	m.lateAfter.WithLabelValues(name).Set((2*interval(s.schedule, now) + s.Jitter.D).Seconds())
	for _, v := range []*prometheus.CounterVec{m.written, m.reused, m.snapshots, m.failures, m.verifyFail, m.marked} {
		v.WithLabelValues(name)
	}
	m.skipped.WithLabelValues(name, "locked")
	m.skipped.WithLabelValues(name, "overrun")
	m.running.WithLabelValues(name).Set(0)
	if s.Capture {
		// capture_running exists only for sources that capture, from the
		// start: a capture that never gets going then alerts as stopped.
		// Its timestamps and replay proofs stay absent until they happen,
		// so that a zero never reads as "1970".
		m.captureRunning.WithLabelValues(name).Set(0)
		m.captureFailures.WithLabelValues(name)
		m.captureLagAlert.WithLabelValues(name).Set(float64(s.CaptureLagAlert))
		m.captureMaxLag.WithLabelValues(name).Set(float64(s.CaptureMaxLag))
		m.replayProofFailures.WithLabelValues(name)
	}
}
