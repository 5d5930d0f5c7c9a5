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

    /// Sets the cancel mark unless the job already ended, in one step: a worker finishing the
    /// job deletes the mark in its final transaction, so a mark never outlives the run.
    static let markUnlessFinal = """
    local state = redis.call('HGET', KEYS[1], 'state')
    if state == 'passed' or state == 'failed' or state == 'errored' or state == 'cancelled' then return state end
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
    return false
    """

    public func cancel(id: String, reason: String) async throws -> Outcome {
        // The mark first: a worker that takes the job from here on sees it before running it.
        let marked = try await redis.send(["EVAL", Self.markUnlessFinal, "2", keys.job(id), keys.cancel(id), reason, String(retention)])
        if let state = marked.string.flatMap(JobState.init(rawValue:)) { return .alreadyFinished(state) }
        let exists = try await redis.send(["EXISTS", keys.job(id)]).int == 1
        let queues = (try await redis.send(["SMEMBERS", keys.queues]).array ?? []).compactMap(\.string)
        for queue in queues.sorted() {
            let entries = try await redis.send(["LRANGE", keys.queue(queue), "0", "-1"]).array ?? []
            for case .bulk(let raw) in entries {
                guard case .success(let job) = JobDecoder.decode(raw), job.payload.id == id else { continue }
                if try await removeFromQueue(raw, queue: keys.queue(queue), id: id, reason: reason) { return .removedFromQueue(queue) }
            }
        }
        guard exists else {
            _ = try await redis.send(["DEL", keys.cancel(id)])
            return .unknown
        }
        _ = try await redis.send(["PUBLISH", RedisKeys.cancelChannel, id])
        return .signalledWorker
    }

    /// Takes `raw` off `queue`, writes `cancelled`, closes the log and drops the mark in one
    /// transaction; false when a worker took the entry first (the worker then cancels it).
    private func removeFromQueue(_ raw: [UInt8], queue: String, id: String, reason: String) async throws -> Bool {
        let reporter = JobReporter(redis: redis, keys: keys, retention: retention, worker: "", logger: Logger(label: "tworker.cancel"))
        // WATCH makes the transaction fail, not half-run, if the queue or the log changes meanwhile.
        for _ in 0..<50 {
            _ = try await redis.send(["WATCH", queue, keys.log(id)])
            let position = try await redis.send(bytes: [Array("LPOS".utf8), Array(queue.utf8), raw])
            if position.isNull {
                _ = try await redis.send(["UNWATCH"])
                return false
            }
            let last = LogStreamer.lastNumber(in: try await redis.send(["XREVRANGE", keys.log(id), "+", "-", "COUNT", "1"]))
            let now = Timestamp.now()
            let state = reporter.stateCommands(id: id, state: .cancelled, fields: ["error": reason, "finished_at": now], event: .finished, at: now)
            let log = LogStreamer.entryCommands(key: keys.log(id), after: last, text: "The job was cancelled before it started: \(reason)\n",
                                                closing: true, retention: retention)
            let transaction: [[[UInt8]]] = [WorkQueue.bytes(["MULTI"]), [Array("LREM".utf8), Array(queue.utf8), Array("1".utf8), raw]]
                + state.map(WorkQueue.bytes) + log + [WorkQueue.bytes(["DEL", keys.cancel(id)]), WorkQueue.bytes(["EXEC"])]
            let replies = try await redis.pipeline(bytes: transaction)
            guard let exec = replies.last else { continue }
            if case .error(let message) = exec { throw RedisError.server("cancelling job \(id): \(message)") }
            if exec.isNull { continue }
            return true
        }
        throw RedisError.server("cancelling job \(id): its queue kept changing; try again")
    }
}
