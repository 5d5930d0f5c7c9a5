/// Every Redis key tworker reads or writes, in one place.
///
/// Resque's keys carry the configured namespace so resque-web and Resque clients see them;
/// tworker's own keys always start with `tworker:`.
public struct RedisKeys: Sendable {
    public var namespace: String
    public var host: String

    public init(namespace: String, host: String) {
        self.namespace = namespace
        self.host = host
    }

    public func queue(_ name: String) -> String { "\(namespace):queue:\(name)" }
    public var queues: String { "\(namespace):queues" }
    public var failed: String { "\(namespace):failed" }
    public var processedCount: String { "\(namespace):stat:processed" }
    public var failedCount: String { "\(namespace):stat:failed" }

    // MARK: Resque's worker registry (resque-web, pyres), by Resque worker id `host:pid:queues`

    /// Resque's set of registered worker ids.
    public var resqueWorkers: String { "\(namespace):workers" }
    /// Resque's JSON of the job worker `id` runs (`{"queue","run_at","payload"}`), only while it runs one.
    public func resqueWorker(_ id: String) -> String { "\(namespace):worker:\(id)" }
    public func resqueWorkerStarted(_ id: String) -> String { "\(namespace):worker:\(id):started" }
    public func processedCount(worker id: String) -> String { "\(namespace):stat:processed:\(id)" }
    public func failedCount(worker id: String) -> String { "\(namespace):stat:failed:\(id)" }
    /// Which Resque ids in `<namespace>:workers` are tworker's: id -> `host:vm` (its heartbeat),
    /// so a dead one is pruned and other programs' workers are left alone.
    public var resqueRegistry: String { "tworker:resque_workers:\(namespace)" }

    public func processing(vm: String) -> String { "tworker:processing:\(host):\(vm)" }
    /// Matches every host's processing lists (`SCAN` by the reaper).
    public static let processingPattern = "tworker:processing:*"
    /// The host and VM whose processing list `key` is; nil for another key.
    public static func processingOwner(of key: String) -> (host: String, vm: String)? {
        let parts = key.split(separator: ":", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "tworker", parts[1] == "processing" else { return nil }
        return (parts[2], parts[3])
    }
    /// Held while a processing list is being recovered (see `ProcessingLock`).
    public func processingLock(vm: String) -> String { "tworker:lock:processing:\(host):\(vm)" }
    public func job(_ id: String) -> String { "tworker:job:\(id)" }
    public func log(_ id: String) -> String { "tworker:job:\(id):log" }
    public static let events = "tworker:events"
    /// Measurements this host's workers make for the master's `/metrics` (VM commands, stages, log bytes).
    public var observations: String { "tworker:observations:\(host)" }
    public func worker(vm: String) -> String { Self.workerRecord(member: workerMember(vm: vm)) }
    /// The heartbeat record of a `tworker:workers` member (`host:vm`).
    public static func workerRecord(member: String) -> String { workerRecordPrefix + member }
    public static let workerRecordPrefix = "tworker:worker:"
    public static let workers = "tworker:workers"
    /// Present while a worker's VM is quarantined; holds the last error. Deleting it (a
    /// restart, `tworker vagrant rebuild`) returns the worker to service.
    public func broken(vm: String) -> String { "tworker:broken:\(host):\(vm)" }
    /// Present while an operator's rebuild or reprovision holds the VM: its worker finishes
    /// the running job and takes no new one until the key is gone.
    public func maintenance(vm: String) -> String { "tworker:maintenance:\(host):\(vm)" }
    /// Present while the host is drained (`tworker drain`): every one of its workers finishes its
    /// running job and takes no new one until the key is gone (`tworker undrain`). Holds who and when.
    public static func drain(host: String) -> String { drainPrefix + host }
    public static let drainPrefix = "tworker:drain:"
    public var drain: String { Self.drain(host: host) }
    /// The host record its master keeps fresh (version, pid, started_at, heartbeat_at, ...); it
    /// expires when the master stops beating, so a dead host shows `gone`.
    public static func hostRecord(_ host: String) -> String { "tworker:host:\(host)" }
    /// Every host that ran a master on this Redis: host -> Unix time of its last beat. Entries
    /// silent for `FleetView.forgetAfter` are pruned.
    public static let hosts = "tworker:hosts"
    /// Set by `tworker cancel` (holds the reason) so a worker that missed the message still cancels.
    public func cancel(_ id: String) -> String { "tworker:cancel:\(id)" }
    /// Pub/sub channel carrying the ids of cancelled jobs.
    public static let cancelChannel = "tworker:cancel"
    public func workerMember(vm: String) -> String { "\(host):\(vm)" }
}

/// The states a job record goes through.
public enum JobState: String, Sendable, CaseIterable {
    case queued, received, started, passed, failed, errored, cancelled, requeued

    /// States after which nothing more happens to the job.
    public var isFinal: Bool { [.passed, .failed, .errored, .cancelled].contains(self) }
}
