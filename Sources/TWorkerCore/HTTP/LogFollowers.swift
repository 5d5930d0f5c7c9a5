import Foundation
import Logging
import RedisClient

/// One entry of a job's log as the API shows it.
public struct LogChunk: Sendable, Equatable {
    public var number: Int
    public var text: String
    public var final: Bool
}

/// Reads logs (`tworker:job:<id>:log`, entries `0-<n>` with `n`, `data`, `final`).
public struct LogReader: Sendable {
    let redis: RedisConnection
    let keys: RedisKeys

    /// Entries numbered `from` and after.
    public func entries(of id: String, from: Int) async throws -> [LogChunk] {
        Self.chunks(try await redis.send(["XRANGE", keys.log(id), "0-\(max(from, 1))", "+"]))
    }

    static func chunks(_ reply: RedisReply) -> [LogChunk] {
        (reply.array ?? []).compactMap { entry -> LogChunk? in
            guard let pair = entry.array, pair.count == 2, let fields = pair[1].array else { return nil }
            var number: Int?
            var data: [UInt8] = []
            var final = false
            var index = 0
            while index + 1 < fields.count {
                switch fields[index].string {
                case "n": number = fields[index + 1].string.flatMap(Int.init)
                case "data": if case .bulk(let bytes) = fields[index + 1] { data = bytes }
                case "final": final = true
                default: break
                }
                index += 2
            }
            guard let number else { return nil }
            return LogChunk(number: number, text: String(decoding: data, as: UTF8.self), final: final)
        }
    }
}

/// The live side of `GET /api/jobs/<id>/log/stream`: one reader per followed job, however many
/// browsers follow it (200 followers cost one blocking XREAD, not 200), each follower getting
/// what it has not seen yet, in order, ending with the final entry.
public actor LogFollowers {
    private struct Tail {
        var task: Task<Void, Never>
        var followers: [UUID: AsyncStream<LogChunk>.Continuation]
    }

    private var tails: [String: Tail] = [:]
    private let endpoint: RedisEndpoint
    private let keys: RedisKeys
    private let logger: Logger

    public init(endpoint: RedisEndpoint, keys: RedisKeys, logger: Logger) {
        self.endpoint = endpoint
        self.keys = keys
        self.logger = logger
    }

    /// Everything from entry `from` on: what is there, then what arrives, until the final entry.
    public func follow(_ id: String, from: Int, history: LogReader) -> AsyncStream<LogChunk> {
        let (stream, continuation) = AsyncStream.makeStream(of: LogChunk.self, bufferingPolicy: .bufferingNewest(100_000))
        let follower = UUID()
        // Joined first, history second: an entry written in between arrives twice, never not at all.
        let live = AsyncStream<LogChunk>.makeStream(of: LogChunk.self, bufferingPolicy: .unbounded)
        join(id, follower, live.continuation)
        let relay = Task {
            var next = max(from, 1)
            var ended = false
            if let past = try? await history.entries(of: id, from: next) {
                for chunk in past where chunk.number >= next {
                    continuation.yield(chunk)
                    next = chunk.number + 1
                    if chunk.final { ended = true; break }
                }
            }
            if !ended {
                for await chunk in live.stream where chunk.number >= next {
                    continuation.yield(chunk)
                    next = chunk.number + 1
                    if chunk.final { break }
                }
            }
            continuation.finish()
            self.leave(id, follower)
        }
        continuation.onTermination = { _ in
            relay.cancel()
            Task { await self.leave(id, follower) }
        }
        live.continuation.onTermination = { _ in relay.cancel() }
        return stream
    }

    public var followedJobs: Int { tails.count }

    private func join(_ id: String, _ follower: UUID, _ continuation: AsyncStream<LogChunk>.Continuation) {
        if tails[id] == nil {
            tails[id] = Tail(task: Task { await self.tail(id) }, followers: [:])
        }
        tails[id]?.followers[follower] = continuation
    }

    private func leave(_ id: String, _ follower: UUID) {
        guard var tail = tails[id] else { return }
        tail.followers[follower]?.finish()
        tail.followers[follower] = nil
        if tail.followers.isEmpty {
            tail.task.cancel()
            tails[id] = nil
        } else {
            tails[id] = tail
        }
    }

    private func broadcast(_ id: String, _ chunks: [LogChunk]) {
        for continuation in tails[id]?.followers.values ?? [:].values {
            for chunk in chunks { continuation.yield(chunk) }
        }
    }

    /// One connection per followed job, blocking in XREAD until entries come.
    private func tail(_ id: String) async {
        let redis = RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), commandTimeout: .seconds(5), logger: logger)
        defer { redis.close() }
        let key = keys.log(id)
        var last = (try? await redis.send(["XREVRANGE", key, "+", "-", "COUNT", "1"]).array?.first?.array?.first?.string) ?? nil ?? "0-0"
        while !Task.isCancelled {
            do {
                let reply = try await redis.sendBlocking(["XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", key, last], blockTimeout: .seconds(1))
                guard let stream = reply.array?.first?.array, stream.count == 2 else { continue }
                let entries = stream[1]
                if let id = entries.array?.last?.array?.first?.string { last = id }
                let chunks = LogReader.chunks(entries)
                broadcast(id, chunks)
                if chunks.contains(where: \.final) { return }
            } catch {
                if Task.isCancelled { return }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}
