import Foundation
import RedisClient

/// `tworker status`: the master and its workers, queue depths, failed count. Built by the
/// master (its own view of its children, plus Redis), or by the CLI from Redis alone.
public struct StatusReport: Sendable, Codable, Equatable {
    public enum Source: String, Sendable, Codable { case master, redis }

    public struct Master: Sendable, Codable, Equatable {
        public var pid: Int32
        public var startedAt: String
        /// Seconds.
        public var uptime: Double
        public var env: String
        public var configDir: String?

        public init(pid: Int32, startedAt: String, uptime: Double, env: String, configDir: String?) {
            self.pid = pid
            self.startedAt = startedAt
            self.uptime = uptime
            self.env = env
            self.configDir = configDir
        }

        enum CodingKeys: String, CodingKey {
            case pid, env, uptime
            case startedAt = "started_at"
            case configDir = "config_dir"
        }
    }

    public struct Worker: Sendable, Codable, Equatable {
        public var host: String
        public var vm: String
        /// idle, busy, paused, stopping, broken, maintenance (the heartbeat's); or the master's
        /// own: starting, restarting, stopped, gone.
        public var state: String
        public var pid: Int32?
        public var job: String?
        /// Seconds the current job has been running.
        public var jobElapsed: Double?
        public var jobsDone: Int?
        public var rssKiB: Int?
        public var heartbeatAt: String?
        public var lastError: String?
        /// The master's note: "restarts in 4 s", "stopped by an operator", "replaced after its job (memory)".
        public var note: String?

        public init(host: String, vm: String, state: String) {
            self.host = host
            self.vm = vm
            self.state = state
        }

        enum CodingKeys: String, CodingKey {
            case host, vm, state, pid, job, note
            case jobElapsed = "job_elapsed"
            case jobsDone = "jobs_done"
            case rssKiB = "rss_kib"
            case heartbeatAt = "heartbeat_at"
            case lastError = "last_error"
        }
    }

    public struct Queue: Sendable, Codable, Equatable {
        public var name: String
        public var depth: Int

        public init(name: String, depth: Int) {
            self.name = name
            self.depth = depth
        }
    }

    public var source: Source
    public var host: String
    public var master: Master?
    public var paused: Bool
    /// `tworker:drain:<host>`'s value while the host is drained (`tworker drain`); nil otherwise.
    public var drainedBy: String?
    public var workers: [Worker]
    public var queues: [Queue]
    public var failed: Int

    public var draining: Bool { drainedBy != nil }

    enum CodingKeys: String, CodingKey {
        case source, host, master, paused, workers, queues, failed
        case drainedBy = "drained_by"
    }

    private enum ExtraKeys: String, CodingKey { case draining }

    /// As synthesized, plus `draining` for scripts.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(source, forKey: .source)
        try container.encode(host, forKey: .host)
        try container.encodeIfPresent(master, forKey: .master)
        try container.encode(paused, forKey: .paused)
        try container.encodeIfPresent(drainedBy, forKey: .drainedBy)
        try container.encode(workers, forKey: .workers)
        try container.encode(queues, forKey: .queues)
        try container.encode(failed, forKey: .failed)
        var extra = encoder.container(keyedBy: ExtraKeys.self)
        try extra.encode(draining, forKey: .draining)
    }

    public init(source: Source, host: String, master: Master? = nil, paused: Bool = false, drainedBy: String? = nil,
                workers: [Worker] = [], queues: [Queue] = [], failed: Int = 0) {
        self.drainedBy = drainedBy
        self.source = source
        self.host = host
        self.master = master
        self.paused = paused
        self.workers = workers
        self.queues = queues
        self.failed = failed
    }

    // MARK: - Reading Redis

    /// The heartbeat hashes of `members` (`host:vm`), in order; an expired one is an empty dictionary.
    public static func heartbeats(_ members: [String], redis: RedisConnection) async throws -> [[String: String]] {
        guard !members.isEmpty else { return [] }
        let replies = try await redis.pipeline(members.map { ["HGETALL", RedisKeys.workerRecord(member: $0)] })
        return replies.map(hash)
    }

    /// Queue depths (each queue in `<ns>:queues`) and the failed count.
    public static func queues(keys: RedisKeys, redis: RedisConnection) async throws -> (queues: [Queue], failed: Int) {
        let names = (try await redis.send(["SMEMBERS", keys.queues]).array ?? []).compactMap(\.string).sorted()
        let replies = try await redis.pipeline(names.map { ["LLEN", keys.queue($0)] } + [["LLEN", keys.failed]])
        let queues = zip(names, replies).map { Queue(name: $0, depth: Int($1.int ?? 0)) }
        return (queues, Int(replies.last?.int ?? 0))
    }

    /// Without a master: every worker registered in `tworker:workers` (all hosts), from its heartbeat.
    public static func fromRedis(keys: RedisKeys, redis: RedisConnection, now: Date = Date()) async throws -> StatusReport {
        let members = (try await redis.send(["SMEMBERS", RedisKeys.workers]).array ?? []).compactMap(\.string)
            .sorted { naturalOrder($0, $1) }
        let beats = try await heartbeats(members, redis: redis)
        var workers: [Worker] = []
        for (member, beat) in zip(members, beats) {
            let (host, vm) = split(member)
            var worker = Worker(host: host, vm: vm, state: "gone")
            if beat.isEmpty {
                worker.note = "registered, but its heartbeat expired"
            } else {
                worker.apply(heartbeat: beat, now: now)
                if host == keys.host, let pid = worker.pid { worker.rssKiB = ProcessProbe.rssKiB(pid) }
            }
            workers.append(worker)
        }
        let (queues, failed) = try await queues(keys: keys, redis: redis)
        let paused = !workers.isEmpty && workers.allSatisfy { $0.state == "paused" }
        let drainedBy = try await redis.send(["GET", keys.drain]).string
        return StatusReport(source: .redis, host: keys.host, paused: paused, drainedBy: drainedBy, workers: workers, queues: queues, failed: failed)
    }

    static func hash(_ reply: RedisReply) -> [String: String] {
        let items = reply.array ?? []
        var result: [String: String] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            result[items[index].string ?? ""] = items[index + 1].string ?? ""
        }
        return result
    }

    static func split(_ member: String) -> (host: String, vm: String) {
        guard let colon = member.lastIndex(of: ":") else { return ("", member) }
        return (String(member[..<colon]), String(member[member.index(after: colon)...]))
    }

    /// worker-2 before worker-10.
    static func naturalOrder(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: [.numeric]) == .orderedAscending
    }

    // MARK: - Text

    public func render(now: Date = Date()) -> String {
        var lines: [String] = []
        if let master {
            lines.append("master \(master.pid) on \(host), up \(Self.duration(master.uptime)) (env \(master.env))\(paused ? "; PAUSED" : "")")
        } else {
            lines.append("no master running on this host; from Redis:")
        }
        if let drainedBy {
            lines.append("DRAINED: running jobs finish, no new ones start (`tworker undrain \(host)` ends it; \(drainedBy))")
        }
        if workers.isEmpty {
            lines.append("no workers")
        } else {
            let showHost = source == .redis
            var rows = [[showHost ? "WORKER" : "VM", "STATE", "PID", "JOB", "ELAPSED", "DONE", "RSS", ""]]
            for worker in workers {
                var note = worker.note ?? ""
                if let error = worker.lastError, !error.isEmpty { note = note.isEmpty ? "last error: \(error)" : note + "; last error: \(error)" }
                rows.append([
                    showHost ? "\(worker.host):\(worker.vm)" : worker.vm,
                    worker.state,
                    worker.pid.map(String.init) ?? "-",
                    worker.job ?? "-",
                    worker.jobElapsed.map(Self.duration) ?? "-",
                    worker.jobsDone.map(String.init) ?? "-",
                    worker.rssKiB.map { String(format: "%.1f MiB", Double($0) / 1024) } ?? "-",
                    note,
                ])
            }
            let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                let cells = row.enumerated().map { index, cell in
                    index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
                }
                lines.append(cells.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
        let depths = queues.isEmpty ? "none" : queues.map { "\($0.name) \($0.depth)" }.joined(separator: ", ")
        lines.append("queues: \(depths)")
        lines.append("failed: \(failed)")
        return lines.joined(separator: "\n")
    }

    /// 42s, 3m05s, 2h03m.
    public static func duration(_ seconds: Double) -> String {
        let total = max(0, Int(seconds.rounded(.down)))
        if total < 60 { return "\(total)s" }
        if total < 3600 { return "\(total / 60)m\(String(format: "%02d", total % 60))s" }
        return "\(total / 3600)h\(String(format: "%02d", (total % 3600) / 60))m"
    }
}

extension StatusReport.Worker {
    /// Fills state, pid, job, elapsed time, jobs done, heartbeat time and last error from a heartbeat hash.
    mutating func apply(heartbeat beat: [String: String], now: Date) {
        if let state = beat["state"], !state.isEmpty { self.state = state }
        if pid == nil, let pid = beat["pid"].flatMap(Int32.init) { self.pid = pid }
        if let job = beat["job"], !job.isEmpty {
            self.job = job
            if let since = beat["since"].flatMap(Timestamp.parse) { jobElapsed = max(0, now.timeIntervalSince(since)) }
        }
        jobsDone = beat["jobs_done"].flatMap(Int.init)
        heartbeatAt = beat["heartbeat_at"]
        if let error = beat["last_error"], !error.isEmpty { lastError = error }
    }
}
