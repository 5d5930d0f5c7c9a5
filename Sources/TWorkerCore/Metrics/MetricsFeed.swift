import Foundation
import Logging
import RedisClient

/// Feeds the master's `PoolMetrics` from Redis: this host's job events (`tworker:events`) and
/// its workers' observations (`tworker:observations:<host>`), read as they arrive with one
/// blocking XREAD on a connection of its own.
public struct MetricsFeed: Sendable {
    let metrics: PoolMetrics
    let keys: RedisKeys
    let redis: RedisConnection
    let logger: Logger

    public init(metrics: PoolMetrics, keys: RedisKeys, redis: RedisConnection, logger: Logger) {
        self.metrics = metrics
        self.keys = keys
        self.redis = redis
        self.logger = logger
    }

    public func run() async {
        // From what is there now: XREAD with `$` each time would skip what came between two reads.
        var positions: [String: String] = [:]
        let streams = [RedisKeys.events, keys.observations]
        var reportedReconnects = 0
        while !Task.isCancelled {
            do {
                for stream in streams where positions[stream] == nil { positions[stream] = try await lastID(of: stream) }
                let reconnects = RedisConnection.reconnects.load(ordering: .relaxed)
                metrics.redisReconnected(reconnects - reportedReconnects)
                reportedReconnects = reconnects
                let reply = try await redis.sendBlocking(["XREAD", "COUNT", "500", "BLOCK", "1000", "STREAMS"] + streams + streams.map { positions[$0]! },
                                                         blockTimeout: .seconds(1))
                for stream in reply.array ?? [] {
                    guard let parts = stream.array, parts.count == 2, let name = parts[0].string else { continue }
                    for entry in parts[1].array ?? [] {
                        guard let pair = entry.array, pair.count == 2, let id = pair[0].string else { continue }
                        positions[name] = id
                        let fields = Self.fields(pair[1])
                        if name == RedisKeys.events { try await event(fields) } else if let observation = Observation(fields: fields) {
                            metrics.observe(observation)
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.debug("metrics feed: Redis did not answer; trying again", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func lastID(of stream: String) async throws -> String {
        let last = try await redis.send(["XREVRANGE", stream, "+", "-", "COUNT", "1"]).array?.first?.array?.first?.string
        return last ?? "0-0"
    }

    /// One job event of this host's workers.
    private func event(_ fields: [String: String]) async throws {
        guard let worker = fields["worker"], worker.hasPrefix(keys.host + ":"), let id = fields["id"], let type = fields["type"] else { return }
        let vm = String(worker.dropFirst(keys.host.count + 1))
        switch JobEvent(rawValue: type) {
        case .finished:
            let times = try await redis.send(["HMGET", keys.job(id), "started_at", "finished_at"]).array?.map(\.string) ?? []
            metrics.jobFinished(result: fields["state"] ?? "", vm: vm, duration: Self.seconds(from: times.first ?? nil, to: times.last ?? nil))
        case .failed:
            metrics.jobFinished(result: JobState.errored.rawValue, vm: vm, duration: nil)
        case .started:
            let times = try await redis.send(["HMGET", keys.job(id), "queued_at", "started_at"]).array?.map(\.string) ?? []
            metrics.jobStarted(queueWait: Self.seconds(from: times.first ?? nil, to: times.last ?? nil))
        case .requeued:
            if let reason = fields["reason"].flatMap(RequeueReason.init(rawValue:)) { metrics.requeued(reason: reason) }
        case .received, nil:
            break
        }
    }

    static func seconds(from start: String?, to end: String?) -> Double? {
        guard let start = start.flatMap(Timestamp.parse), let end = end.flatMap(Timestamp.parse) else { return nil }
        return end.timeIntervalSince(start)
    }

    static func fields(_ reply: RedisReply) -> [String: String] {
        let items = (reply.array ?? []).compactMap(\.string)
        var result: [String: String] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) { result[items[index]] = items[index + 1] }
        return result
    }
}
