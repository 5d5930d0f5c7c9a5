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
    public static let lockTime: Duration = .seconds(30)

    public init(redis: RedisConnection, namespace: String, defaultQueue: String, maxAttempts: Int, retention: Int, logger: Logger) {
        self.redis = redis
        self.namespace = namespace
        self.defaultQueue = defaultQueue
        self.maxAttempts = maxAttempts
        self.retention = retention
        self.logger = logger
    }

    public static func lockKey(host: String, vm: String) -> String { "tworker:lock:processing:\(host):\(vm)" }

    /// One pass over every processing list; returns how many jobs it requeued or ended.
    @discardableResult
    public func reap() async throws -> Int {
        var cursor = "0"
        var handled = 0
        repeat {
            let reply = try await redis.send(["SCAN", cursor, "MATCH", "tworker:processing:*", "COUNT", "200"])
            cursor = reply.array?.first?.string ?? "0"
            for key in (reply.array?.last?.array ?? []).compactMap(\.string) {
                let parts = key.split(separator: ":", maxSplits: 3).map(String.init)
                guard parts.count == 4 else { continue }
                handled += try await reap(host: parts[2], vm: parts[3])
            }
        } while cursor != "0"
        return handled
    }

    /// Requeues what the processing list of a dead worker holds; a live worker's is left alone.
    public func reap(host: String, vm: String) async throws -> Int {
        let keys = RedisKeys(namespace: namespace, host: host)
        guard try await redis.send(["EXISTS", keys.worker(vm: vm)]).int == 0 else { return 0 }
        let token = UUID().uuidString
        let lock = Self.lockKey(host: host, vm: vm)
        guard try await redis.send(["SET", lock, token, "NX", "PX", String(Self.lockTime.components.seconds * 1000)]).string == "OK" else {
            return 0
        }
        defer { Task { [redis] in _ = try? await redis.send(["EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0", "1", lock, token]) } }
        // Under the lock: the worker may have come back meanwhile.
        guard try await redis.send(["EXISTS", keys.worker(vm: vm)]).int == 0 else { return 0 }
        let entries = (try await redis.send(["LRANGE", keys.processing(vm: vm), "0", "-1"]).array ?? []).compactMap { reply -> [UInt8]? in
            if case .bulk(let bytes) = reply { bytes } else { nil }
        }
        var handled = 0
        for raw in entries.reversed() {
            try await recover(raw, keys: keys, vm: vm)
            handled += 1
        }
        return handled
    }

    func recover(_ raw: [UInt8], keys: RedisKeys, vm: String) async throws {
        let processing = Array(keys.processing(vm: vm).utf8)
        func transaction(_ commands: [[[UInt8]]]) async throws {
            let replies = try await redis.pipeline(bytes: [[Array("MULTI".utf8)]] + commands
                + [[Array("LREM".utf8), processing, Array("1".utf8), raw], [Array("EXEC".utf8)]])
            if case .error(let message)? = replies.last { throw RedisError.server("requeueing a dead worker's job: \(message)") }
        }
        guard case .success(let job) = JobDecoder.decode(raw) else {
            // Only a worker files malformed entries; the list keeps nothing a worker would not have rejected.
            try await transaction([[Array("RPUSH".utf8), Array(keys.failed.utf8), raw]])
            return
        }
        let id = job.payload.id
        let attempts = job.attempts + 1
        let worker = "\(keys.host):\(vm)"
        let now = Timestamp.now()
        let reporter = JobReporter(redis: redis, keys: keys, retention: retention, worker: worker, logger: logger)
        let lastNumber = LogStreamer.lastNumber(in: try await redis.send(["XREVRANGE", keys.log(id), "+", "-", "COUNT", "1"]))
        func log(_ text: String, closing: Bool = false) -> [[[UInt8]]] {
            LogStreamer.entryCommands(key: keys.log(id), after: lastNumber, text: text, closing: closing, retention: retention)
        }
        if attempts >= maxAttempts {
            let reason = "The worker running this job (\(worker)) died \(attempts) times; giving up after \(maxAttempts) attempts."
            try await transaction(log("\n\(reason)\n", closing: true)
                + reporter.stateCommands(id: id, state: .errored, fields: ["error": reason, "finished_at": now], event: .finished, at: now)
                    .map(WorkQueue.bytes))
            logger.warning("gave up a job whose worker died", metadata: ["job": "\(id)", "worker": "\(worker)"])
            return
        }
        let queueName = (try await redis.send(["HGET", keys.job(id), "queue"])).string.flatMap { $0.isEmpty ? nil : $0 } ?? defaultQueue
        try await transaction(log("\nThe worker running this job (\(worker)) died; the job was requeued (attempt \(attempts + 1) of \(maxAttempts)).\n")
            + [[Array("LPUSH".utf8), Array(keys.queue(queueName).utf8), job.withAttempts(attempts)]]
            + reporter.stateCommands(id: id, state: .requeued, fields: ["attempts": String(attempts), "error": "worker \(worker) died"],
                                     event: .requeued, at: now).map(WorkQueue.bytes))
        logger.warning("requeued a job whose worker died", metadata: ["job": "\(id)", "worker": "\(worker)", "queue": "\(queueName)"])
    }
}
