import Foundation
import RedisClient

/// One host sharing the Redis, as `tworker hosts` and `/api/hosts` show it.
public struct FleetHost: Sendable, Codable, Equatable {
    public struct Worker: Sendable, Codable, Equatable {
        public var vm: String
        /// The heartbeat's state (idle, busy, paused, stopping, broken, maintenance, draining);
        /// `gone` when it expired.
        public var state: String
        public var job: String?
        public var pid: Int32?
        public var heartbeatAt: String?

        public init(vm: String, state: String, job: String? = nil, pid: Int32? = nil, heartbeatAt: String? = nil) {
            self.vm = vm
            self.state = state
            self.job = job
            self.pid = pid
            self.heartbeatAt = heartbeatAt
        }

        enum CodingKeys: String, CodingKey {
            case vm, state, job, pid
            case heartbeatAt = "heartbeat_at"
        }
    }

    public var host: String
    /// `up`, `stopping` (its master is stopping), `gone` (its record expired: the master died or
    /// stopped), or `no master` (workers beat, but no master record: `tworker work` alone).
    public var state: String
    public var version: String?
    public var pid: Int32?
    public var machine: String?
    public var startedAt: String?
    /// The master's last beat; for a host without a master, its newest worker heartbeat.
    public var lastHeartbeat: String?
    /// Seconds since `lastHeartbeat` when read.
    public var heartbeatAge: Double?
    /// `tworker:drain:<host>` is set.
    public var draining: Bool
    /// The drain key's value: who drained the host, and when.
    public var drainedBy: String?
    public var workers: [Worker]

    public init(host: String, state: String, version: String? = nil, pid: Int32? = nil, machine: String? = nil,
                startedAt: String? = nil, lastHeartbeat: String? = nil, heartbeatAge: Double? = nil,
                draining: Bool = false, drainedBy: String? = nil, workers: [Worker] = []) {
        self.host = host
        self.state = state
        self.version = version
        self.pid = pid
        self.machine = machine
        self.startedAt = startedAt
        self.lastHeartbeat = lastHeartbeat
        self.heartbeatAge = heartbeatAge
        self.draining = draining
        self.drainedBy = drainedBy
        self.workers = workers
    }

    /// Live workers counted by state, e.g. `["busy": 1, "idle": 2]`.
    public var workersByState: [String: Int] {
        workers.filter { $0.state != "gone" }.reduce(into: [:]) { $0[$1.state, default: 0] += 1 }
    }

    /// The ids of the jobs its live workers run.
    public var runningJobs: [String] {
        workers.filter { $0.state != "gone" }.compactMap(\.job)
    }

    /// States of a live worker that takes no job and runs none.
    static let heldStates: Set<String> = ["draining", "maintenance", "paused", "broken"]

    /// Drained through: the drain is set, no job runs, and every live worker has seen the drain
    /// (or is held otherwise), so none can take a job any more. A gone host is drained.
    public var isDrained: Bool {
        draining && runningJobs.isEmpty && workers.allSatisfy { $0.state == "gone" || Self.heldStates.contains($0.state) }
    }

    enum CodingKeys: String, CodingKey {
        case host, state, version, pid, machine, draining, workers
        case startedAt = "started_at"
        case lastHeartbeat = "last_heartbeat"
        case heartbeatAge = "heartbeat_age"
        case drainedBy = "drained_by"
        case workersByState = "workers_by_state"
        case runningJobs = "running_jobs"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(host: try container.decode(String.self, forKey: .host),
                  state: try container.decode(String.self, forKey: .state),
                  version: try container.decodeIfPresent(String.self, forKey: .version),
                  pid: try container.decodeIfPresent(Int32.self, forKey: .pid),
                  machine: try container.decodeIfPresent(String.self, forKey: .machine),
                  startedAt: try container.decodeIfPresent(String.self, forKey: .startedAt),
                  lastHeartbeat: try container.decodeIfPresent(String.self, forKey: .lastHeartbeat),
                  heartbeatAge: try container.decodeIfPresent(Double.self, forKey: .heartbeatAge),
                  draining: try container.decodeIfPresent(Bool.self, forKey: .draining) ?? false,
                  drainedBy: try container.decodeIfPresent(String.self, forKey: .drainedBy),
                  workers: try container.decodeIfPresent([Worker].self, forKey: .workers) ?? [])
    }

    /// Every key written, null where unknown, so scripts can rely on the shape.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(host, forKey: .host)
        try container.encode(state, forKey: .state)
        try container.encode(version, forKey: .version)
        try container.encode(pid, forKey: .pid)
        try container.encode(machine, forKey: .machine)
        try container.encode(startedAt, forKey: .startedAt)
        try container.encode(lastHeartbeat, forKey: .lastHeartbeat)
        try container.encode(heartbeatAge, forKey: .heartbeatAge)
        try container.encode(draining, forKey: .draining)
        try container.encode(drainedBy, forKey: .drainedBy)
        try container.encode(workers, forKey: .workers)
        try container.encode(workersByState, forKey: .workersByState)
        try container.encode(runningJobs, forKey: .runningJobs)
    }
}

/// Every host sharing the Redis, read from Redis alone: the hosts registry (`tworker:hosts`),
/// each master's record, the workers' heartbeats and the drain keys. Needs no master here.
public enum FleetView {
    /// Seconds a host stays listed (`gone`) after its last beat before it is pruned from `tworker:hosts`.
    public static let forgetAfter = 24 * 3600

    public static func read(redis: RedisConnection, now: Date = Date()) async throws -> [FleetHost] {
        let registry = try await redis.send(["ZRANGE", RedisKeys.hosts, "0", "-1", "WITHSCORES"]).array ?? []
        var registered: [String: Double] = [:]
        for index in stride(from: 0, to: registry.count - 1, by: 2) {
            guard let host = registry[index].string, let score = registry[index + 1].string.flatMap(Double.init) else { continue }
            registered[host] = score
        }
        let members = (try await redis.send(["SMEMBERS", RedisKeys.workers]).array ?? []).compactMap(\.string)
            .sorted { StatusReport.naturalOrder($0, $1) }
        let drained = try await drainedHosts(redis: redis)
        let beats = try await StatusReport.heartbeats(members, redis: redis)
        var workers: [String: [FleetHost.Worker]] = [:]
        for (member, beat) in zip(members, beats) {
            let (host, vm) = StatusReport.split(member)
            workers[host, default: []].append(worker(vm: vm, beat: beat))
        }
        let hosts = Set(registered.keys).union(workers.keys).union(drained.keys).sorted()
        let records = try await redis.pipeline(hosts.map { ["HGETALL", RedisKeys.hostRecord($0)] })
        return zip(hosts, records).map { host, reply in
            assemble(host: host, record: HostRecord(host: host, fields: StatusReport.hash(reply)),
                     registeredAt: registered[host].map { Date(timeIntervalSince1970: $0) },
                     drainedBy: drained[host], workers: workers[host] ?? [], now: now)
        }
    }

    static func worker(vm: String, beat: [String: String]) -> FleetHost.Worker {
        guard !beat.isEmpty else { return FleetHost.Worker(vm: vm, state: "gone") }
        let job = beat["job"].flatMap { $0.isEmpty ? nil : $0 }
        return FleetHost.Worker(vm: vm, state: beat["state"].flatMap { $0.isEmpty ? nil : $0 } ?? "idle", job: job,
                                pid: beat["pid"].flatMap(Int32.init), heartbeatAt: beat["heartbeat_at"])
    }

    /// One host from what Redis holds about it.
    public static func assemble(host: String, record: HostRecord?, registeredAt: Date?, drainedBy: String?,
                                workers: [FleetHost.Worker], now: Date) -> FleetHost {
        var view = FleetHost(host: host, state: "gone", draining: drainedBy != nil, drainedBy: drainedBy, workers: workers)
        let newestWorkerBeat = workers.compactMap(\.heartbeatAt).max()
        if let record {
            view.state = record.stopping ? "stopping" : "up"
            view.version = record.version
            view.pid = record.pid
            view.machine = record.machine.isEmpty ? nil : record.machine
            view.startedAt = record.startedAt.isEmpty ? nil : record.startedAt
            view.lastHeartbeat = record.heartbeatAt
        } else if workers.contains(where: { $0.state != "gone" }) {
            view.state = "no master"
            view.lastHeartbeat = newestWorkerBeat
        } else {
            view.lastHeartbeat = registeredAt.map(Timestamp.format) ?? newestWorkerBeat
        }
        if let at = view.lastHeartbeat.flatMap(Timestamp.parse) { view.heartbeatAge = max(0, now.timeIntervalSince(at)) }
        return view
    }

    /// Drained hosts (`tworker:drain:*`) -> the key's value.
    public static func drainedHosts(redis: RedisConnection) async throws -> [String: String] {
        var keys: [String] = []
        var cursor = "0"
        repeat {
            let reply = try await redis.send(["SCAN", cursor, "MATCH", RedisKeys.drainPrefix + "*", "COUNT", "1000"]).array ?? []
            guard reply.count == 2 else { break }
            cursor = reply[0].string ?? "0"
            keys += (reply[1].array ?? []).compactMap(\.string)
        } while cursor != "0"
        guard !keys.isEmpty else { return [:] }
        let values = try await redis.pipeline(keys.map { ["GET", $0] })
        var result: [String: String] = [:]
        for (key, value) in zip(keys, values) {
            guard let value = value.string else { continue }
            result[String(key.dropFirst(RedisKeys.drainPrefix.count))] = value
        }
        return result
    }

    // MARK: - Text

    /// `tworker hosts`: one row per host.
    public static func render(_ hosts: [FleetHost]) -> String {
        guard !hosts.isEmpty else { return "no hosts on this Redis" }
        var rows = [["HOST", "STATE", "VERSION", "PID", "WORKERS", "RUNNING", "HEARTBEAT", "DRAINING"]]
        for host in hosts {
            rows.append([
                host.host,
                host.state,
                host.version ?? "-",
                host.pid.map(String.init) ?? "-",
                workerSummary(host.workersByState),
                host.runningJobs.isEmpty ? "-" : host.runningJobs.joined(separator: ","),
                host.heartbeatAge.map { StatusReport.duration($0) + " ago" } ?? "-",
                host.draining ? (host.isDrained ? "yes (drained)" : "yes") : "no",
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }

    /// `2 idle, 1 busy`: busiest states first, then by name; `-` for none.
    public static func workerSummary(_ counts: [String: Int]) -> String {
        guard !counts.isEmpty else { return "-" }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { "\($0.value) \($0.key)" }.joined(separator: ", ")
    }

    /// `{"hosts":[...]}`, what `tworker hosts --json` prints and `/api/hosts` answers.
    public static func json(_ hosts: [FleetHost], pretty: Bool = false) throws -> String {
        struct Body: Encodable { var hosts: [FleetHost] }
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(Body(hosts: hosts)), as: UTF8.self)
    }
}
