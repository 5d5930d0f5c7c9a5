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
        try await hold(vm, MaintenanceHold.ofThisProcess(changing: false))
        let deadline = ContinuousClock.now + drainTimeout
        while ContinuousClock.now < deadline {
            let replies = try await withRedisRetry(logger: logger, what: "read \(vm)'s worker") {
                // Checked: an error reply read as "no heartbeat" would touch a VM under a running job.
                try await redis.checkedPipeline([["HGET", keys.worker(vm: vm), "state"], ["LLEN", keys.processing(vm: vm)]])
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

    /// Says the VM is being changed from now on: if this process dies before `end`, the worker
    /// must not take it back (see `MaintenanceHold`).
    public func changing(_ vm: String) async throws {
        try await hold(vm, MaintenanceHold.ofThisProcess(changing: true))
    }

    private func hold(_ vm: String, _ hold: MaintenanceHold) async throws {
        _ = try await withRedisRetry(logger: logger, what: "mark \(vm) in maintenance") {
            try await redis.send(["SET", keys.maintenance(vm: vm), hold.encoded])
        }
    }

    /// Returns the VM to service, clearing any quarantine with it (it was just rebuilt), and
    /// waits (up to 10 s) until its worker says it takes jobs again: with `vms.max_unavailable`
    /// VMs out at a time, the next one must not go out while this one's worker still holds off.
    public func end(_ vm: String) async throws {
        _ = try await withRedisRetry(logger: logger, what: "return \(vm) to service") {
            try await redis.checkedPipeline([["DEL", keys.maintenance(vm: vm)], ["DEL", keys.broken(vm: vm)]])
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

/// What `tworker:maintenance:<host>:<vm>` holds: the process holding the VM and whether it has
/// begun to change it. A rebuild stopped by Ctrl-C or killed leaves the key behind; its worker
/// then finds the holder gone and, if the VM was not touched yet, takes it back into service,
/// or else keeps it out and says that it needs `tworker vagrant rebuild`.
public struct MaintenanceHold: Sendable, Equatable {
    public var pid: pid_t
    /// The holder's start time (clock ticks since boot): a reused pid is not the holder.
    public var startTime: UInt64
    public var since: String
    public var changing: Bool

    public init(pid: pid_t, startTime: UInt64, since: String, changing: Bool) {
        self.pid = pid
        self.startTime = startTime
        self.since = since
        self.changing = changing
    }

    public static func ofThisProcess(changing: Bool) -> MaintenanceHold {
        MaintenanceHold(pid: getpid(), startTime: ProcessProbe.startTime(of: getpid()) ?? 0, since: Timestamp.now(), changing: changing)
    }

    public var encoded: String { "pid=\(pid) start=\(startTime) since=\(since) phase=\(changing ? "changing" : "waiting")" }

    /// nil for a value in another format (an older tworker's `pid time`): such a hold is kept.
    public init?(parsing text: String) {
        var fields: [Substring: Substring] = [:]
        for part in text.split(separator: " ") {
            guard let equals = part.firstIndex(of: "=") else { return nil }
            fields[part[..<equals]] = part[part.index(after: equals)...]
        }
        guard let pid = fields["pid"].flatMap({ pid_t($0) }), pid > 0, let start = fields["start"].flatMap({ UInt64($0) }),
              let phase = fields["phase"], phase == "waiting" || phase == "changing" else { return nil }
        self.init(pid: pid, startTime: start, since: String(fields["since"] ?? ""), changing: phase == "changing")
    }

    /// The holding process has ended (its pid is free, a zombie, or now another process's).
    public func holderIsGone(startTimeOf: (pid_t) -> UInt64? = ProcessProbe.startTime(of:),
                             isAlive: (pid_t) -> Bool = ProcessProbe.isAlive) -> Bool {
        guard isAlive(pid), let started = startTimeOf(pid) else { return true }
        return startTime != 0 && started != startTime
    }
}
