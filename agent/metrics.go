package agent

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus metrics, in a registry of its own (so
// that two agents in one process, as in tests, do not collide).
type metrics struct {
	reg *prometheus.Registry

	lastSuccess  *prometheus.GaugeVec
	lastDuration *prometheus.GaugeVec
	written      *prometheus.CounterVec
	reused       *prometheus.CounterVec
	tenants      *prometheus.GaugeVec
	rows         *prometheus.GaugeVec
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
		written: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_bytes_written_total",
			Help: "Compressed bytes the source's snapshots uploaded."}, src),
		reused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_bytes_reused_total",
			Help: "Compressed bytes the source's snapshots referenced from earlier sets instead of uploading (deduplicated)."}, src),
		tenants: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_tenants",
			Help: "Tenants in the source's last successful snapshot set."}, src),
		rows: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "snapshot_rows",
			Help: "Rows in the source's last successful snapshot set."}, src),
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
		replayProofLastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_last_run_timestamp_seconds",
			Help: "When the agent last tried to prove the source's change log by replaying it between its two newest sets (Unix time)."}, src),
		replayProofLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_last_success_timestamp_seconds",
			Help: "When a replay proof of the source last found the change log equal to the next set (Unix time)."}, src),
		replayProofDivergences: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_proof_divergences",
			Help: "Tenant tables whose replay did not reach the next set in the source's last replay proof; 0 means proven."}, src),
		replayProofFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_proof_failures_total",
			Help: "Replay proofs of the source that could not run (no scratch database, a gap in the log, ...)."}, src),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help: "Always 1; the labels tell the build."}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build,
		m.lastSuccess, m.lastDuration, m.written, m.reused, m.tenants, m.rows, m.snapshots, m.failures,
		m.skipped, m.running, m.verifyFail, m.marked,
		m.purged, m.gcObjects, m.gcBytes, m.deleteFail, m.purgeFail, m.purgeLastDone, m.webhookFail,
		m.captureRunning, m.captureRecords, m.captureSegments, m.captureLag, m.captureArchived, m.captureFailures,
		m.replayProofLastRun, m.replayProofLastSuccess, m.replayProofDivergences, m.replayProofFailures,
	)
	return m
}

// initSource makes every per-source series exist from the start, so that
// alerts on rate() and absent() see zeros rather than nothing.
func (m *metrics) initSource(name string) {
	for _, v := range []*prometheus.CounterVec{m.written, m.reused, m.snapshots, m.failures, m.verifyFail, m.marked, m.replayProofFailures} {
		v.WithLabelValues(name)
	}
	m.skipped.WithLabelValues(name, "locked")
	m.skipped.WithLabelValues(name, "overrun")
	m.running.WithLabelValues(name).Set(0)
}
