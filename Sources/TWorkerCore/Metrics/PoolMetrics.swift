import Foundation
import CoreMetrics
import Metrics
import Prometheus

/// The master's metrics: it owns every counter, so they survive a worker's restart. Jobs are
/// counted from `tworker:events` (the transitions the workers write anyway), the workers'
/// own measurements arrive through `tworker:observations:<host>`, and the gauges (queue
/// depth, workers by state) are read when `/metrics` is scraped. Every series carries `host`.
public final class PoolMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    public let host: String

    public static let results = ["passed", "failed", "errored", "cancelled"]
    public static let workerStates = ["idle", "busy", "paused", "broken", "maintenance", "draining", "stopping"]
    public static let restartReasons = ["crash", "memory", "stuck"]

    public init(host: String, version: String) {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let minutes: [Duration] = [1, 5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600].map { .seconds($0) }
        factory.durationHistogramBuckets = [
            "tworker_job_duration_seconds": minutes,
            "tworker_job_queue_duration_seconds": [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600].map { .milliseconds(Int64($0 * 1000)) },
            "tworker_job_stage_duration_seconds": minutes,
            "tworker_vm_reset_duration_seconds": [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120].map { .milliseconds(Int64($0 * 1000)) },
            "tworker_vm_command_duration_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120].map { .milliseconds(Int64($0 * 1000)) },
        ]
        self.factory = factory
        self.host = host
        CoreMetrics.Gauge(label: "tworker_build_info", dimensions: [("host", host), ("version", version)], factory: factory).record(1)
        // Zeros from the start: a rate() over a series that appears later misses its first increase.
        for result in Self.results { counter("tworker_jobs_total", ("result", result)).increment(by: 0) }
        for reason in RequeueReason.allCases { counter("tworker_requeues_total", ("reason", reason.rawValue)).increment(by: 0) }
        for reason in Self.restartReasons { counter("tworker_worker_restarts_total", ("reason", reason)).increment(by: 0) }
        counter("tworker_redis_reconnects_total").increment(by: 0)
        counter("tworker_log_bytes_total").increment(by: 0)
    }

    private func counter(_ name: String, _ labels: (String, String)...) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: name, dimensions: [("host", host)] + labels, factory: factory)
    }

    private func histogram(_ name: String, _ labels: (String, String)...) -> CoreMetrics.Timer {
        CoreMetrics.Timer(label: name, dimensions: [("host", host)] + labels, preferredDisplayUnit: .seconds, factory: factory)
    }

    // MARK: - From the job events

    public func jobFinished(result: String, vm: String, duration: Double?) {
        guard Self.results.contains(result) else { return }
        counter("tworker_jobs_total", ("result", result)).increment()
        counter("tworker_jobs_total", ("result", result), ("vm", vm)).increment()
        if let duration, duration >= 0 { histogram("tworker_job_duration_seconds").recordSeconds(duration) }
    }

    public func jobStarted(queueWait: Double?) {
        if let queueWait, queueWait >= 0 { histogram("tworker_job_queue_duration_seconds").recordSeconds(queueWait) }
    }

    public func requeued(reason: RequeueReason) {
        counter("tworker_requeues_total", ("reason", reason.rawValue)).increment()
    }

    // MARK: - From the master

    public func workerRestarted(reason: String, vm: String) {
        counter("tworker_worker_restarts_total", ("reason", reason)).increment()
        counter("tworker_worker_restarts_total", ("reason", reason), ("vm", vm)).increment()
    }

    /// Gauges as they are now: read at each scrape.
    public func update(queues: [StatusReport.Queue], workers: [StatusReport.Worker]) {
        for queue in queues {
            CoreMetrics.Gauge(label: "tworker_queue_depth", dimensions: [("host", host), ("queue", queue.name)], factory: factory).record(queue.depth)
        }
        var counts = Dictionary(uniqueKeysWithValues: Self.workerStates.map { ($0, 0) })
        for worker in workers where counts[worker.state] != nil { counts[worker.state, default: 0] += 1 }
        for (state, count) in counts {
            CoreMetrics.Gauge(label: "tworker_workers", dimensions: [("host", host), ("state", state)], factory: factory).record(count)
        }
    }

    /// The master's own Redis reconnects, added since the last call.
    public func redisReconnected(_ count: Int) {
        if count > 0 { counter("tworker_redis_reconnects_total").increment(by: count) }
    }

    // MARK: - From the workers' observations

    public func observe(_ observation: Observation) {
        let vm = ("vm", observation.vm)
        switch observation.kind {
        case .vmCommand:
            let command = ("command", observation.labels["command"] ?? "unknown")
            let outcome = ("outcome", observation.labels["outcome"] ?? "ok")
            counter("tworker_vm_commands_total", command, outcome).increment()
            histogram("tworker_vm_command_duration_seconds", command).recordSeconds(observation.value)
        case .stage:
            histogram("tworker_job_stage_duration_seconds", ("stage", observation.labels["stage"] ?? "unknown")).recordSeconds(observation.value)
        case .vmReset:
            histogram("tworker_vm_reset_duration_seconds", vm).recordSeconds(observation.value)
        case .logBytes:
            counter("tworker_log_bytes_total").increment(by: Int(observation.value))
            counter("tworker_log_bytes_total", vm).increment(by: Int(observation.value))
        case .redisReconnects:
            counter("tworker_redis_reconnects_total").increment(by: Int(observation.value))
        }
    }

    /// The Prometheus text format.
    public func render() -> String { registry.emitToString() }
}
