import Foundation

/// `GET /health`: healthy when Redis answers, the master is not draining (stopping, or the host
/// drained by `tworker drain`), and every worker
/// runs and is neither quarantined nor gone; otherwise each reason, for people and autohealers.
public struct HealthCheck: Sendable, Equatable {
    public struct Worker: Sendable, Equatable {
        public var vm: String
        public var alive: Bool
        /// Set when the VM is quarantined (`tworker:broken:...`).
        public var brokenReason: String?

        public init(vm: String, alive: Bool, brokenReason: String? = nil) {
            self.vm = vm
            self.alive = alive
            self.brokenReason = brokenReason
        }
    }

    public var healthy: Bool { reasons.isEmpty }
    public var reasons: [String]

    /// `draining`: the master is stopping; `drained`: an operator drained the host (`tworker drain`).
    public init(redisError: String?, draining: Bool, drained: Bool = false, workers: [Worker]) {
        var reasons: [String] = []
        if let redisError { reasons.append("Redis unreachable: \(redisError)") }
        if draining { reasons.append("master draining") }
        if drained { reasons.append("host drained (tworker undrain)") }
        for worker in workers.sorted(by: { $0.vm.localizedStandardCompare($1.vm) == .orderedAscending }) {
            if let broken = worker.brokenReason {
                reasons.append("\(worker.vm) broken: \(broken)")
            } else if !worker.alive {
                reasons.append("\(worker.vm) not running")
            }
        }
        self.reasons = reasons
    }

    /// 200 `{"status":"ok",...}` or 503 `{"status":"unhealthy","reasons":[...]}`.
    public var statusCode: Int { healthy ? 200 : 503 }

    public func json(host: String, workers: Int) -> String {
        JSONValue.object([
            "status": .string(healthy ? "ok" : "unhealthy"),
            "host": .string(host),
            "workers": .int(Int64(workers)),
            "reasons": .array(reasons.map { .string($0) }),
        ]).jsonText
    }
}
