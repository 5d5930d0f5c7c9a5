import Foundation
import Logging
import RedisClient

/// Takes worker VMs out of service for an operator's rebuild or reprovision, and gives them back.
///
/// The worker sees `tworker:maintenance:<host>:<vm>`, finishes its current job, takes no new one
/// and says `maintenance` in its heartbeat; only then is its VM touched.
public struct Maintenance: Sendable {
    public let redis: RedisConnection
    public let keys: RedisKeys
    public let logger: Logger
    /// How long a worker may take to finish its running job.
    public let drainTimeout: Duration

    public init(redis: RedisConnection, keys: RedisKeys, drainTimeout: Duration, logger: Logger) {
        self.redis = redis
        self.keys = keys
        self.drainTimeout = drainTimeout
        self.logger = logger
    }

    public struct StillBusy: Error, CustomStringConvertible {
        public var vm: String
        public var description: String { "the worker of \(vm) did not finish its job in time; its VM was left alone" }
    }

    /// Marks the VM and waits until its worker is idle in maintenance (or no worker serves it).
    public func begin(_ vm: String) async throws {
        _ = try await withRedisRetry(logger: logger, what: "mark \(vm) in maintenance") {
            try await redis.send(["SET", keys.maintenance(vm: vm), "\(getpid()) \(Timestamp.now())"])
        }
        let deadline = ContinuousClock.now + drainTimeout
        while ContinuousClock.now < deadline {
            let replies = try await withRedisRetry(logger: logger, what: "read \(vm)'s worker") {
                try await redis.pipeline([["HGET", keys.worker(vm: vm), "state"], ["LLEN", keys.processing(vm: vm)]])
            }
            let state = replies.first?.string
            let holding = replies.last?.int ?? 0
            // No heartbeat: no worker runs there. A job left in its processing list is recovered
            // by the worker's next start, not lost.
            if state == nil || (state == WorkerState.maintenance.rawValue && holding == 0) || state == WorkerState.broken.rawValue {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw StillBusy(vm: vm)
    }

    /// Returns the VM to service, clearing any quarantine with it (it was just rebuilt), and
    /// waits (up to 10 s) until its worker says it takes jobs again: with `vms.max_unavailable`
    /// VMs out at a time, the next one must not go out while this one's worker still holds off.
    public func end(_ vm: String) async throws {
        _ = try await withRedisRetry(logger: logger, what: "return \(vm) to service") {
            try await redis.pipeline([["DEL", keys.maintenance(vm: vm)], ["DEL", keys.broken(vm: vm)]])
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let state = try await withRedisRetry(logger: logger, what: "read \(vm)'s worker") {
                try await redis.send(["HGET", keys.worker(vm: vm), "state"])
            }.string
            if state != WorkerState.maintenance.rawValue { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        logger.warning("the worker of \(vm) still says maintenance 10 s after its VM was returned to service")
    }
}
