import Foundation
import Logging
import RedisClient

/// `tworker cancel`: a queued job is taken off its queue; a running one is killed by its
/// worker (told on `tworker:cancel`, or finding `tworker:cancel:<id>` when it polls).
/// Either way the job ends `cancelled` and is never requeued.
public struct JobCancellation: Sendable {
    public let redis: RedisConnection
    public let keys: RedisKeys
    public let retention: Int

    public init(redis: RedisConnection, keys: RedisKeys, retention: Int) {
        self.redis = redis
        self.keys = keys
        self.retention = retention
    }

    public enum Outcome: Sendable, Equatable {
        /// Taken off this queue before any worker got it.
        case removedFromQueue(String)
        /// A worker holds it; the worker was told.
        case signalledWorker
        /// It had already ended in this state.
        case alreadyFinished(JobState)
        case unknown
    }

    public func cancel(id: String, reason: String) async throws -> Outcome {
        let record = JobReporter.hash(from: try await redis.send(["HGETALL", keys.job(id)]))
        if let state = record["state"].flatMap(JobState.init(rawValue:)), state.isFinal {
            return .alreadyFinished(state)
        }
        // The mark first: a worker that takes the job from here on sees it before running it.
        _ = try await redis.send(["SET", keys.cancel(id), reason, "EX", String(retention)])
        let queues = (try await redis.send(["SMEMBERS", keys.queues]).array ?? []).compactMap(\.string)
        for queue in queues.sorted() {
            let entries = try await redis.send(["LRANGE", keys.queue(queue), "0", "-1"]).array ?? []
            for case .bulk(let raw) in entries {
                guard case .success(let job) = JobDecoder.decode(raw), job.payload.id == id else { continue }
                let removed = try await redis.send(bytes: [Array("LREM".utf8), Array(keys.queue(queue).utf8), Array("1".utf8), raw])
                guard removed.int == 1 else { continue }
                let now = Timestamp.now()
                let reporter = JobReporter(redis: redis, keys: keys, retention: retention, worker: "", logger: Logger(label: "tworker.cancel"))
                _ = try await redis.pipeline(reporter.stateCommands(id: id, state: .cancelled, fields: ["error": reason, "finished_at": now],
                                                                    event: .finished, at: now)
                    + [["XADD", keys.log(id), "*", "data", "The job was cancelled before it started: \(reason)\n"],
                       ["XADD", keys.log(id), "*", "final", "1"], ["EXPIRE", keys.log(id), String(retention)]])
                return .removedFromQueue(queue)
            }
        }
        guard !record.isEmpty else {
            _ = try await redis.send(["DEL", keys.cancel(id)])
            return .unknown
        }
        _ = try await redis.send(["PUBLISH", RedisKeys.cancelChannel, id])
        return .signalledWorker
    }
}
