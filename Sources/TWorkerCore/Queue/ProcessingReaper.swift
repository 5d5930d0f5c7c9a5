import Foundation
import Logging
import RedisClient

/// Recovers jobs held by workers that died, on any host sharing this Redis: a processing list
/// `tworker:processing:<host>:<vm>` whose worker heartbeat has expired goes back to the head of
/// its queue (`attempts + 1`), or ends `errored` once the job used all its attempts.
///
/// Each list is handled under a Redis lock (`SET NX PX`) shared with a restarting worker's own
/// recovery, so two masters (or a master and the worker) never requeue the same job twice.
public struct ProcessingReaper: Sendable {
    public let redis: RedisConnection
    public let namespace: String
    public let defaultQueue: String
    public let maxAttempts: Int
    public let retention: Int
    public let logger: Logger
    public init(redis: RedisConnection, namespace: String, defaultQueue: String, maxAttempts: Int, retention: Int, logger: Logger) {
        self.redis = redis
        self.namespace = namespace
        self.defaultQueue = defaultQueue
        self.maxAttempts = maxAttempts
        self.retention = retention
        self.logger = logger
    }

    /// One pass over every processing list; returns how many jobs it requeued or ended.
    @discardableResult
    public func reap() async throws -> Int {
        var cursor = "0"
        var handled = 0
        repeat {
            let reply = try await redis.send(["SCAN", cursor, "MATCH", RedisKeys.processingPattern, "COUNT", "200"])
            cursor = reply.array?.first?.string ?? "0"
            for key in (reply.array?.last?.array ?? []).compactMap(\.string) {
                guard let owner = RedisKeys.processingOwner(of: key) else { continue }
                handled += try await reap(host: owner.host, vm: owner.vm)
            }
        } while cursor != "0"
        return handled
    }

    /// Requeues what the processing list of a dead worker holds; a live worker's is left alone.
    public func reap(host: String, vm: String) async throws -> Int {
        let keys = RedisKeys(namespace: namespace, host: host)
        guard try await redis.send(["EXISTS", keys.worker(vm: vm)]).int == 0 else { return 0 }
        guard let lock = try await ProcessingLock.take(redis: redis, keys: keys, vm: vm) else { return 0 }
        defer { lock.release() }
        // Under the lock: the worker may have come back meanwhile.
        guard try await redis.send(["EXISTS", keys.worker(vm: vm)]).int == 0 else { return 0 }
        let list = WorkQueue(redis: redis, blockingRedis: redis, keys: keys, queue: defaultQueue, vm: vm, logger: logger)
        let entries = try await list.unfinished()
        let store = JobStore(redis: redis, keys: keys, retention: retention, worker: keys.workerMember(vm: vm), logger: logger)
        for raw in entries.reversed() {
            try await store.recoverFromDeadWorker(raw, from: list, policy: AttemptPolicy(maxAttempts: maxAttempts))
        }
        return entries.count
    }
}
