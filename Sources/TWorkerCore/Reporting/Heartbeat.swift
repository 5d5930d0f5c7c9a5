import Foundation
import Logging
import RedisClient
import Synchronization

/// What a worker is doing, as written to its heartbeat record.
public enum WorkerState: String, Sendable {
    case idle, busy, paused, stopping
    /// Too many infrastructure errors in a row: the worker takes no jobs until cleared.
    case broken
    /// An operator is rebuilding or reprovisioning the VM.
    case maintenance
    /// Its host is drained (`tworker drain`): it finished its job and takes no new one.
    case draining
}

/// Keeps `tworker:worker:<host>:<vm>` fresh: refreshed every `heartbeat.interval` and on every
/// state change, expiring after three intervals so a dead worker disappears by itself.
public final class Heartbeat: Sendable {
    private let redis: RedisConnection
    private let keys: RedisKeys
    private let vm: String
    private let interval: Int
    /// The queue the worker serves, so a worker can tell who else could take a job.
    private let queue: String
    private let logger: Logger
    private let current = Mutex<(state: WorkerState, job: String, since: String, lastError: String)>((.idle, "", Timestamp.now(), ""))
    private let loop = Mutex<Task<Void, Never>?>(nil)
    /// Jobs this worker process ran to a final state (`jobs_done`: the dashboard's column).
    private let jobsDone = Mutex(0)

    public init(redis: RedisConnection, keys: RedisKeys, vm: String, interval: Int, queue: String = "", logger: Logger) {
        self.redis = redis
        self.queue = queue
        self.keys = keys
        self.vm = vm
        self.interval = interval
        self.logger = logger
    }

    /// Registers the worker and refreshes its record until `stop()`.
    public func start() {
        let task = Task { [self] in
            while !Task.isCancelled {
                await beat()
                try? await Task.sleep(for: .seconds(interval))
            }
        }
        loop.withLock { $0 = task }
    }

    /// Changes the state and writes it right away.
    public func update(_ state: WorkerState, job: String = "", lastError: String? = nil) async {
        _ = transition(to: state, job: job, lastError: lastError)
        await beat()
    }

    /// Back to `idle` if the worker is in `state` (resumed after a pause).
    public func leave(_ state: WorkerState) async {
        let inIt = current.withLock { $0.state == state }
        if inIt { await update(.idle) }
    }

    /// Writes the state only when it differs from the current one.
    public func updateIfChanged(_ state: WorkerState) async {
        let same = current.withLock { $0.state == state }
        if !same { await update(state) }
    }

    /// Changes the state and returns the commands that write it, for a caller to send with
    /// its own (a job's state change and the worker's go in one round trip).
    public func transition(to state: WorkerState, job: String = "", lastError: String? = nil) -> [[String]] {
        current.withLock { current in
            let since = current.state == state && current.job == job ? current.since : Timestamp.now()
            current = (state, job, since, lastError ?? current.lastError)
        }
        return commands()
    }

    /// One more job ended; written with the next state change.
    public func countJobDone() { jobsDone.withLock { $0 += 1 } }

    /// How long a stopping worker keeps trying to remove its record (its master removes it too,
    /// and it expires by itself): a worker on its way out does not wait for Redis for long.
    public static let removalGrace: Duration = .seconds(1)

    /// Stops refreshing and removes the record and registration (checked, retried briefly).
    public func stop() async {
        loop.withLock { $0?.cancel(); $0 = nil }
        await redis.writeOnTheWayOut([["DEL", keys.worker(vm: vm)], ["SREM", RedisKeys.workers, keys.workerMember(vm: vm)]],
                                     what: "remove the heartbeat", within: Self.removalGrace, logger: logger)
    }

    private func beat() async {
        do {
            // Checked: an error reply (READONLY after a failover, OOM) is a missed beat too.
            _ = try await redis.checkedPipeline(commands())
        } catch {
            // A missed beat is harmless: every beat writes the whole current state, so the next
            // one (at most an interval later) repairs it. Debug level keeps an outage's log short.
            logger.debug("heartbeat not written", metadata: ["error": "\(error)"])
        }
    }

    private func commands() -> [[String]] {
        let snapshot = current.withLock { $0 }
        let key = keys.worker(vm: vm)
        return [
            ["HSET", key, "state", snapshot.state.rawValue, "pid", String(getpid()), "job", snapshot.job,
             "since", snapshot.since, "heartbeat_at", Timestamp.now(), "vm", vm, "host", keys.host,
             "last_error", snapshot.lastError, "queue", queue, "jobs_done", String(jobsDone.withLock { $0 })],
            ["PEXPIRE", key, String(interval * 3 * 1000)],
            ["SADD", RedisKeys.workers, keys.workerMember(vm: vm)],
            Self.pruneExpired,
        ]
    }

    /// Removes the record and registration of the worker on `vm` if process `pid` wrote them:
    /// its master saw it exit (a killed worker cannot remove them itself).
    public static func forget(vm: String, pid: pid_t, keys: RedisKeys) -> [String] {
        ["EVAL", """
        if redis.call('HGET', KEYS[1], 'pid') == ARGV[1] then redis.call('DEL', KEYS[1]) end
        if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
        return 0
        """, "2", keys.worker(vm: vm), RedisKeys.workers, String(pid), keys.workerMember(vm: vm)]
    }

    /// Drops from `tworker:workers` every member whose heartbeat record has expired (a worker
    /// that was killed): every beat of every worker sweeps, so a dead entry lasts at most
    /// three intervals plus one.
    public static let pruneExpired = [
        "EVAL", """
        local gone = 0
        for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
          if redis.call('EXISTS', ARGV[1] .. member) == 0 then redis.call('SREM', KEYS[1], member); gone = gone + 1 end
        end
        return gone
        """, "1", RedisKeys.workers, RedisKeys.workerRecordPrefix,
    ]
}
