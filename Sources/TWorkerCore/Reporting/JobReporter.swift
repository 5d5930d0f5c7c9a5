import Foundation
import Logging
import RedisClient

/// Event types on `tworker:events`.
public enum JobEvent: String, Sendable {
    case received = "job:received"
    case started = "job:started"
    case finished = "job:finished"
    case requeued = "job:requeued"
    case failed = "job:failed"
}

/// Writes job records (`tworker:job:<id>`) and their events (`tworker:events`).
///
/// Each state change is one pipelined round trip: the record fields, its expiry and the event.
/// Writes are retried across lost connections, so a state reached while Redis was away is
/// written once it is back.
public struct JobReporter: Sendable {
    public static let eventsMaxLength = "100000"

    public let redis: RedisConnection
    public let keys: RedisKeys
    public let retention: Int
    public let worker: String
    public let logger: Logger

    public init(redis: RedisConnection, keys: RedisKeys, retention: Int, worker: String, logger: Logger) {
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.worker = worker
        self.logger = logger
    }

    /// The commands that set `fields` on the record, refresh its expiry and emit `event`.
    public func stateCommands(id: String, state: JobState, fields: [String: String], event: JobEvent?, at: String) -> [[String]] {
        var hset = ["HSET", keys.job(id), "state", state.rawValue]
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) { hset += [name, value] }
        var commands = [hset, ["EXPIRE", keys.job(id), String(retention)]]
        if let event {
            commands.append(["XADD", RedisKeys.events, "MAXLEN", "~", Self.eventsMaxLength, "*",
                             "type", event.rawValue, "id", id, "state", state.rawValue, "worker", worker, "at", at])
        }
        return commands
    }

    /// Records a state change, retrying until Redis takes it.
    public func record(id: String, state: JobState, fields: [String: String] = [:], event: JobEvent?) async throws {
        let commands = stateCommands(id: id, state: state, fields: fields, event: event, at: Timestamp.now())
        _ = try await withRedisRetry(logger: logger, what: "record job \(id) \(state.rawValue)") {
            try Self.check(try await redis.pipeline(commands))
        }
    }

    /// Throws the first error reply of a pipeline: a write Redis refused is not a write made.
    @discardableResult
    public static func check(_ replies: [RedisReply]) throws -> [RedisReply] {
        for case .error(let message) in replies { throw RedisError.server(message) }
        return replies
    }

    /// The record as stored, empty when there is none.
    public func read(id: String) async throws -> [String: String] {
        let reply = try await redis.send(["HGETALL", keys.job(id)])
        return Self.hash(from: reply)
    }

    static func hash(from reply: RedisReply) -> [String: String] {
        var result: [String: String] = [:]
        let items = reply.array ?? []
        var index = 0
        while index + 1 < items.count {
            if let name = items[index].string { result[name] = items[index + 1].string ?? "" }
            index += 2
        }
        return result
    }
}
