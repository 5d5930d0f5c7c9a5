import Logging
import RedisClient
import Synchronization

/// `WAIT <replicas> <timeout>` after the writes a failover must not lose: `tworker enqueue`'s
/// push, the fetch's move into the processing list, and the transaction that writes a job's
/// final state (or requeues it). Redis replicates asynchronously, so a master that dies right
/// after acknowledging a write may take it along; once a replica has confirmed it, the replica
/// Sentinel promotes has it too (Sentinel promotes the most up-to-date replica).
///
/// A shortfall (the timeout passed: the replica is down or far behind) is logged, not fatal:
/// the write is done on the master, and a lone master (say, right after a failover, before the
/// old master returns as a replica) must keep working; `WorkQueue` then checks the master it
/// finds anew (see `isOnCurrentMaster`). Until a replica confirms again, WAIT waits only
/// `degradedTimeout` ms, so a pool without replicas is not slowed down by the full timeout
/// twice per job; the first confirmation restores the full timeout.
public struct ReplicaWait: Sendable, Equatable {
    public var replicas: Int
    /// Milliseconds.
    public var timeout: Int
    /// Milliseconds one WAIT takes while no replica confirms.
    public static let degradedTimeout = 10

    /// Shared by the copies of one value (the worker's queues and their per-job copies).
    private final class Health: Sendable {
        let degraded = Mutex(false)
    }

    private let health = Health()

    public init(replicas: Int, timeout: Int) {
        self.replicas = replicas
        self.timeout = timeout
    }

    /// nil when `redis.wait_replicas` is 0.
    public init?(config: WorkerConfig) {
        guard config.redis.waitReplicas > 0 else { return nil }
        self.init(replicas: config.redis.waitReplicas, timeout: config.redis.waitTimeout)
    }

    public static func == (a: ReplicaWait, b: ReplicaWait) -> Bool {
        a.replicas == b.replicas && a.timeout == b.timeout
    }

    /// True after a shortfall, until a replica confirms again.
    public var isDegraded: Bool { health.degraded.withLock { $0 } }

    /// The command; send it on the connection that made the write (WAIT counts that client's writes).
    public var command: [String] {
        ["WAIT", String(replicas), String(isDegraded ? min(Self.degradedTimeout, timeout) : timeout)]
    }

    /// Notes the reply (an error reply counts as a shortfall); true when enough replicas confirmed.
    @discardableResult
    public func check(_ reply: RedisReply?, what: String, logger: Logger) -> Bool {
        let confirmed = reply?.int ?? -1
        let enough = confirmed >= Int64(replicas)
        let wasDegraded = health.degraded.withLock { degraded in
            defer { degraded = !enough }
            return degraded
        }
        if enough {
            if wasDegraded { logger.info("\(what): \(replicas) replica(s) confirm writes again; WAIT is back to \(timeout) ms") }
        } else if !wasDegraded {
            let shortfall = confirmed < 0 ? "WAIT failed (\(reply.map { "\($0)" } ?? "no reply"))" : "\(confirmed) of \(replicas) replica(s) confirmed within \(timeout) ms"
            logger.warning("\(what): \(shortfall); a failover now could lose writes. WAIT takes at most \(Self.degradedTimeout) ms until a replica confirms again")
        } else {
            logger.debug("\(what): \(max(confirmed, 0)) of \(replicas) replica(s) confirmed (degraded)")
        }
        return enough
    }
}
