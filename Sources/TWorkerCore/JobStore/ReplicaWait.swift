import Logging
import RedisClient

/// `WAIT <replicas> <timeout>` after the writes a failover must not lose: `tworker enqueue`'s
/// push, the fetch's move into the processing list, and the transaction that writes a job's
/// final state (or requeues it). Redis replicates asynchronously, so a master that dies right
/// after acknowledging a write may take it along; once a replica has confirmed it, the replica
/// Sentinel promotes has it too (Sentinel promotes the most up-to-date replica).
///
/// A shortfall (the timeout passed, or the replica is down) is logged, not fatal: the write is
/// done on the master, and a lone master must keep working. Only while a replica confirms do
/// the guarantees in the README's "Redis Sentinel" section hold.
public struct ReplicaWait: Sendable, Equatable {
    public var replicas: Int
    /// Milliseconds.
    public var timeout: Int

    public init(replicas: Int, timeout: Int) {
        self.replicas = replicas
        self.timeout = timeout
    }

    /// nil when `redis.wait_replicas` is 0.
    public init?(config: WorkerConfig) {
        guard config.redis.waitReplicas > 0 else { return nil }
        self.init(replicas: config.redis.waitReplicas, timeout: config.redis.waitTimeout)
    }

    /// The command; send it on the connection that made the write (WAIT counts that client's writes).
    public var command: [String] { ["WAIT", String(replicas), String(timeout)] }

    /// Logs a reply short of `replicas` (or an error reply); true when enough replicas confirmed.
    @discardableResult
    public func check(_ reply: RedisReply?, what: String, logger: Logger) -> Bool {
        guard let reply, let confirmed = reply.int else {
            logger.warning("\(what): WAIT failed; the write is on the master only", metadata: ["reply": "\(reply.map { "\($0)" } ?? "none")"])
            return false
        }
        if confirmed >= replicas { return true }
        logger.warning("\(what): \(confirmed) of \(replicas) replica(s) confirmed within \(timeout) ms; a failover now could lose it")
        return false
    }
}
