import Foundation
import Logging
import RedisClient

/// How `tworker cancel` ended.
public enum JobCancellation: Sendable, Equatable {
    /// Taken off this queue before any worker got it.
    case removedFromQueue(String)
    /// A worker holds it; the worker was told.
    case signalledWorker
    /// It had already ended in this state.
    case alreadyFinished(JobState)
    case unknown
}

/// `tworker cancel`: a queued job is taken off its queue; a running one is killed by its
/// worker (told on `tworker:cancel`, or finding `tworker:cancel:<id>` when it polls).
/// Either way the job ends `cancelled` and is never requeued.
extension JobStore {
    public func cancel(id: String, reason: String) async throws -> JobCancellation {
        // The mark first: a worker that takes the job from here on sees it before running it.
        if let state = try await markCancelled(id: id, reason: reason) { return .alreadyFinished(state) }
        let exists = try await redis.send(["EXISTS", keys.job(id)]).int == 1
        let queues = (try await redis.send(["SMEMBERS", keys.queues]).array ?? []).compactMap(\.string)
        for queue in queues.sorted() {
            let entries = try await redis.send(["LRANGE", keys.queue(queue), "0", "-1"]).array ?? []
            for case .bulk(let raw) in entries {
                guard case .success(let job) = JobDecoder.decode(raw), job.payload.id == id else { continue }
                if try await cancelQueued(raw, queue: keys.queue(queue), id: id, reason: reason) { return .removedFromQueue(queue) }
            }
        }
        guard exists else {
            try await unmarkCancelled(id: id)
            return .unknown
        }
        _ = try await redis.send(["PUBLISH", RedisKeys.cancelChannel, id])
        return .signalledWorker
    }
}
