import Foundation
import RedisClient

/// What a master says about its host in `tworker:host:<host>`, refreshed by `HostBeat`.
public struct HostRecord: Sendable, Equatable {
    public var host: String
    public var version: String
    public var pid: Int32
    /// The machine's own name (`gethostname`), which `host` in the config need not be.
    public var machine: String
    public var startedAt: String
    public var heartbeatAt: String
    /// Workers the master runs (`vms.count`, changed by HUP, TTIN, TTOU).
    public var workers: Int
    /// The master is stopping (QUIT, TERM, `tworker stop`).
    public var stopping: Bool

    public init(host: String, version: String = TWorkerVersion.current, pid: Int32, machine: String,
                startedAt: String, heartbeatAt: String, workers: Int, stopping: Bool = false) {
        self.host = host
        self.version = version
        self.pid = pid
        self.machine = machine
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
        self.workers = workers
        self.stopping = stopping
    }

    public var fields: [String: String] {
        ["version": version, "pid": String(pid), "machine": machine, "started_at": startedAt,
         "heartbeat_at": heartbeatAt, "workers": String(workers), "stopping": stopping ? "1" : "0"]
    }

    /// The record a hash holds; nil when it is empty (expired) or not one of ours.
    public init?(host: String, fields: [String: String]) {
        guard let version = fields["version"], let pid = fields["pid"].flatMap(Int32.init) else { return nil }
        self.init(host: host, version: version, pid: pid, machine: fields["machine"] ?? "",
                  startedAt: fields["started_at"] ?? "", heartbeatAt: fields["heartbeat_at"] ?? "",
                  workers: fields["workers"].flatMap(Int.init) ?? 0, stopping: fields["stopping"] == "1")
    }

    /// This machine's name.
    public static func machineName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The master's side of the fleet view: keeps its host record fresh and registered in
/// `tworker:hosts`, prunes hosts silent for `FleetView.forgetAfter`, and reads its host's drain.
public struct HostBeat: Sendable {
    public let redis: RedisConnection
    /// Seconds the record lives without a new beat: a master that died shows `gone` after it.
    public let ttl: Int

    /// Three heartbeat intervals, as a worker's heartbeat; never under 5 s, as the master beats about once a second.
    public static func ttl(heartbeatInterval: Int) -> Int { max(5, 3 * heartbeatInterval) }

    public init(redis: RedisConnection, ttl: Int) {
        self.redis = redis
        self.ttl = ttl
    }

    /// The commands of one beat, in one pipeline; the last one reads the drain key.
    public static func commands(_ record: HostRecord, ttl: Int, now: Date) -> [[String]] {
        let key = RedisKeys.hostRecord(record.host)
        let seconds = Int64(now.timeIntervalSince1970)
        return [
            ["HSET", key] + record.fields.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] },
            ["EXPIRE", key, String(ttl)],
            ["ZADD", RedisKeys.hosts, String(seconds), record.host],
            ["ZREMRANGEBYSCORE", RedisKeys.hosts, "-inf", "(" + String(seconds - Int64(FleetView.forgetAfter))],
            ["GET", RedisKeys.drain(host: record.host)],
        ]
    }

    /// Writes one beat; returns the drain key's value (who drained the host, and when) or nil.
    public func beat(_ record: HostRecord, now: Date = Date()) async throws -> String? {
        try await redis.checkedPipeline(Self.commands(record, ttl: ttl, now: now)).last?.string
    }
}
