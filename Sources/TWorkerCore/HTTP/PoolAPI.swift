import Foundation
import Logging
import RedisClient

/// What the HTTP API answers, without HTTP: each call returns a status and a JSON body.
/// The master supplies its own view (status, control) through closures, so tests can too.
public struct PoolAPI: Sendable {
    public struct Reply: Sendable, Equatable {
        public var status: Int
        public var json: String
    }

    public let redis: RedisConnection
    public let keys: RedisKeys
    public let retention: Int
    public let logger: Logger
    /// `status --json`'s report, from the master (nil: no master view, read Redis).
    public let status: @Sendable () async -> StatusReport?
    /// pause/resume of one worker, through the master.
    public let control: @Sendable (ControlRequest) async -> ControlResponse
    /// The master is stopping.
    public let draining: @Sendable () async -> Bool

    public init(redis: RedisConnection, keys: RedisKeys, retention: Int, logger: Logger,
                status: @escaping @Sendable () async -> StatusReport?,
                control: @escaping @Sendable (ControlRequest) async -> ControlResponse,
                draining: @escaping @Sendable () async -> Bool) {
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.logger = logger
        self.status = status
        self.control = control
        self.draining = draining
    }

    static func error(_ status: Int, _ message: String) -> Reply {
        Reply(status: status, json: JSONValue.object(["error": .string(message)]).jsonText)
    }

    static let ok = Reply(status: 200, json: #"{"ok":true}"#)

    // MARK: - Reading

    public func statusReport() async throws -> StatusReport {
        if let report = await status() { return report }
        return try await StatusReport.fromRedis(keys: keys, redis: redis)
    }

    public func statusJSON() async -> Reply {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return Reply(status: 200, json: String(decoding: try encoder.encode(try await statusReport()), as: UTF8.self))
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    /// The health decision, from Redis's answer and the master's view.
    public func health() async -> HealthCheck {
        var redisError: String?
        do {
            _ = try await redis.send(["PING"])
        } catch {
            redisError = "\(error)"
        }
        let report = await status()
        var brokenReasons: [String: String] = [:]
        if redisError == nil, let report {
            let replies = try? await redis.pipeline(report.workers.map { ["GET", keys.broken(vm: $0.vm)] })
            for (worker, reply) in zip(report.workers, replies ?? []) { if let reason = reply.string { brokenReasons[worker.vm] = reason } }
        }
        let workers = (report?.workers ?? []).map { worker in
            HealthCheck.Worker(vm: worker.vm, alive: worker.pid != nil && !["gone", "stopped", "restarting"].contains(worker.state),
                               brokenReason: brokenReasons[worker.vm] ?? (worker.state == "broken" ? (worker.lastError ?? "quarantined") : nil))
        }
        return HealthCheck(redisError: redisError, draining: await draining(), drained: report?.draining ?? false, workers: workers)
    }

    public func queues() async -> Reply {
        do {
            let (queues, _) = try await StatusReport.queues(keys: keys, redis: redis)
            let failed = (try await redis.send(["LRANGE", keys.failed, "-100", "-1"]).array ?? []).reversed().compactMap { reply -> JSONValue? in
                guard case .bulk(let bytes) = reply else { return nil }
                let record = (try? JSONValue.parse(bytes))?.objectValue ?? [:]
                let payload = record["payload"].map { $0.stringValue ?? $0.jsonText } ?? ""
                return .object([
                    "queue": .string(record["queue"]?.stringValue ?? ""),
                    "error": .string(record["error"]?.stringValue ?? record["exception"]?.stringValue ?? ""),
                    "failed_at": .string(record["failed_at"]?.stringValue ?? ""),
                    "payload": .string(payload),
                ])
            }
            let list = queues.map { JSONValue.object(["name": .string($0.name), "depth": .int(Int64($0.depth))]) }
            return Reply(status: 200, json: JSONValue.object(["queues": .array(list), "failed": .array(Array(failed))]).jsonText)
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    /// This host's recent jobs, newest first, from the events its workers wrote.
    public func jobs(state: String?, limit: Int) async -> Reply {
        let limit = min(max(limit, 1), 1000)
        do {
            var ids: [String] = []
            var seen = Set<String>()
            var end = "+"
            scan: for _ in 0..<20 {
                let page = try await redis.send(["XREVRANGE", RedisKeys.events, end, "-", "COUNT", "1000"]).array ?? []
                if page.isEmpty { break }
                for entry in page {
                    guard let pair = entry.array, pair.count == 2, let entryID = pair[0].string else { continue }
                    end = "(" + entryID
                    let fields = MetricsFeed.fields(pair[1])
                    guard fields["worker"]?.hasPrefix(keys.host + ":") == true, let id = fields["id"], !id.isEmpty,
                          seen.insert(id).inserted else { continue }
                    ids.append(id)
                    if state == nil, ids.count >= limit { break scan }
                }
                if page.count < 1000 { break }
            }
            var jobs: [JSONValue] = []
            let records = try await redis.pipeline(ids.map { ["HGETALL", keys.job($0)] })
            for (id, reply) in zip(ids, records) {
                let record = StatusReport.hash(reply)
                guard !record.isEmpty, state == nil || record["state"] == state else { continue }
                jobs.append(Self.summary(id: id, record))
                if jobs.count >= limit { break }
            }
            return Reply(status: 200, json: JSONValue.object(["jobs": .array(jobs)]).jsonText)
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    static func summary(id: String, _ record: [String: String]) -> JSONValue {
        var object: [String: JSONValue] = ["id": .string(id)]
        for name in ["state", "queue", "worker", "attempts", "queued_at", "started_at", "finished_at", "exit_code", "error"] {
            object[name] = .string(record[name] ?? "")
        }
        if let seconds = MetricsFeed.seconds(from: record["started_at"], to: record["finished_at"]) {
            object["duration_seconds"] = .double((seconds * 1000).rounded() / 1000)
        } else {
            object["duration_seconds"] = .null
        }
        return .object(object)
    }

    public func job(_ id: String) async -> Reply {
        do {
            let record = StatusReport.hash(try await redis.send(["HGETALL", keys.job(id)]))
            guard !record.isEmpty else { return Self.error(404, "no job \(id)") }
            var object = record.mapValues { JSONValue.string($0) }
            object["id"] = .string(id)
            return Reply(status: 200, json: JSONValue.object(object).jsonText)
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    public func log(_ id: String, from: Int) async -> Reply {
        do {
            let chunks = try await LogReader(redis: redis, keys: keys).entries(of: id, from: from)
            let final = chunks.contains(where: \.final)
            let next = (chunks.last?.number).map { $0 + 1 } ?? max(from, 1)
            let entries = chunks.filter { !$0.final || !$0.text.isEmpty }.map {
                JSONValue.object(["n": .int(Int64($0.number)), "text": .string($0.text)])
            }
            return Reply(status: 200, json: JSONValue.object(["entries": .array(entries), "final": .bool(final), "next": .int(Int64(next))]).jsonText)
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    // MARK: - Changing

    public func cancel(_ id: String) async -> Reply {
        let store = JobStore(redis: redis, keys: keys, retention: retention, worker: "", logger: logger)
        do {
            switch try await store.cancel(id: id, reason: "cancelled from the dashboard") {
            case .removedFromQueue, .signalledWorker: return Self.ok
            case .alreadyFinished(let state): return Self.error(409, "job \(id) already ended: \(state.rawValue)")
            case .unknown: return Self.error(404, "no job \(id)")
            }
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }

    public func worker(_ vm: String, _ command: ControlCommand) async -> Reply {
        guard VirtualBoxProvider.workerNumber(vm) != nil else { return Self.error(404, "'\(vm)' is not a worker name (worker-N)") }
        let response = await control(ControlRequest(command: command, worker: vm))
        return response.ok ? Self.ok : Self.error(409, response.error ?? "refused")
    }

    // MARK: - Hosts

    /// Every host sharing the Redis: what `tworker hosts --json` prints.
    public func hosts() async -> Reply {
        do {
            return Reply(status: 200, json: try FleetView.json(try await FleetView.read(redis: redis)))
        } catch {
            return Self.error(503, "Redis unreachable: \(error)")
        }
    }
}
