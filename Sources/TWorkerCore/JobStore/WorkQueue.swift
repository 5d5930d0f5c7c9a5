import Foundation
import Logging
import RedisClient

/// One worker's view of the job queue and of its own processing list.
///
/// A job moves atomically from `<namespace>:queue:<queue>` to
/// `tworker:processing:<host>:<vm>` (BLMOVE) and leaves the processing list only in the same
/// transaction that writes its final state, requeues it or files it as failed. A worker
/// killed at any point therefore leaves its job where the next start (or another host)
/// finds it.
public struct WorkQueue: Sendable {
    public let redis: RedisConnection
    /// A second connection for BLMOVE, so a blocking fetch never delays heartbeats or logs.
    public let blockingRedis: RedisConnection
    public let keys: RedisKeys
    public let queue: String
    public let vm: String
    public let logger: Logger

    public init(redis: RedisConnection, blockingRedis: RedisConnection, keys: RedisKeys, queue: String, vm: String, logger: Logger) {
        self.redis = redis
        self.blockingRedis = blockingRedis
        self.keys = keys
        self.queue = queue
        self.vm = vm
        self.logger = logger
    }

    public var queueKey: String { keys.queue(queue) }
    public var processingKey: String { keys.processing(vm: vm) }

    /// Takes the next job into the processing list; nil when the queue stayed empty.
    /// `block` nil means do not wait at all (burst mode).
    public func fetch(block: Duration?) async throws -> [UInt8]? {
        let reply: RedisReply
        if let block {
            let seconds = String(format: "%.3f", Double(block.components.seconds) + Double(block.components.attoseconds) / 1e18)
            reply = try await blockingRedis.sendBlocking(["BLMOVE", queueKey, processingKey, "LEFT", "RIGHT", seconds], blockTimeout: block)
        } else {
            reply = try await blockingRedis.send(["LMOVE", queueKey, processingKey, "LEFT", "RIGHT"])
        }
        if case .bulk(let bytes) = reply { return bytes }
        return nil
    }

    /// What the processing list holds: jobs this worker took but never finished.
    public func unfinished() async throws -> [[UInt8]] {
        let reply = try await withRedisRetry(logger: logger, what: "read \(processingKey)") {
            try await redis.send(["LRANGE", processingKey, "0", "-1"])
        }
        return (reply.array ?? []).compactMap { if case .bulk(let bytes) = $0 { bytes } else { nil } }
    }

    /// Whether `raw` is still in the processing list (a write that removes it has not landed).
    public func holds(_ raw: [UInt8]) async throws -> Bool {
        try await withRedisRetry(logger: logger, what: "read \(processingKey)") { try await holdsOnce(raw) }
    }

    private func holdsOnce(_ raw: [UInt8]) async throws -> Bool {
        !(try await redis.send(bytes: [Array("LPOS".utf8), Array(processingKey.utf8), raw])).isNull
    }

    /// Puts `raw` back at the head of the queue as `requeued`, together with `commands`.
    public func requeue(_ raw: [UInt8], as replacement: [UInt8], with commands: [[String]]) async throws {
        try await requeue(raw, as: replacement, binary: commands.map(JobStore.bytes))
    }

    /// The same with binary-safe commands (log entries).
    public func requeue(_ raw: [UInt8], as replacement: [UInt8], binary commands: [[[UInt8]]]) async throws {
        try await commitRemoving(raw, commands: [[Array("LPUSH".utf8), Array(queueKey.utf8), replacement]] + commands)
    }

    /// Files a job that cannot run in Resque's failed queue.
    public func fail(_ raw: [UInt8], failure: [UInt8], with commands: [[String]]) async throws {
        try await commitRemoving(raw, commands: [
            [Array("RPUSH".utf8), Array(keys.failed.utf8), failure],
            JobStore.bytes(["INCR", keys.failedCount]),
        ] + commands.map(JobStore.bytes))
    }

    /// Writes the job's final state and only then forgets it.
    public func complete(_ raw: [UInt8], with commands: [[String]]) async throws {
        try await commitRemoving(raw, commands: commands.map(JobStore.bytes))
    }

    /// The same with binary-safe commands (log entries).
    public func complete(_ raw: [UInt8], with commands: [[[UInt8]]]) async throws {
        try await commitRemoving(raw, commands: commands)
    }

    /// Runs `commands` and removes `raw` from the processing list in one transaction, every
    /// reply checked (an error inside EXEC's results too).
    ///
    /// If the connection drops before the reply arrives the transaction may or may not have run;
    /// the entry's presence in the processing list tells which, so it never runs twice.
    private func commitRemoving(_ raw: [UInt8], commands: [[[UInt8]]]) async throws {
        let transaction = JobStore.transaction(commands + [[Array("LREM".utf8), Array(processingKey.utf8), Array("1".utf8), raw]])
        var tries = 0
        _ = try await withRedisRetry(logger: logger, what: "commit job state") { () async throws -> [RedisReply]? in
            tries += 1
            if tries > 1, try await !holdsOnce(raw) { return nil }
            return try await redis.pipeline(bytes: transaction).checkedForWrite(accepting: JobStore.isLogEntryAlreadyWritten)
        }
    }
}
