import Foundation
import RedisClient

/// `tworker drain` / `undrain`: sets or removes `tworker:drain:<host>`, from any machine. The
/// host's workers see it before they take their next job (as they see a VM's maintenance key);
/// being Redis state, a drain outlives a restart of the host's master.
public struct FleetDrain: Sendable {
    public let redis: RedisConnection

    public init(redis: RedisConnection) {
        self.redis = redis
    }

    public struct UnknownHosts: Error, CustomStringConvertible {
        public var hosts: [String]
        public var known: [String]
        public var description: String {
            let list = known.isEmpty ? "none" : known.joined(separator: ", ")
            return "unknown host\(hosts.count == 1 ? "" : "s") \(hosts.joined(separator: ", ")) (hosts on this Redis: \(list)); "
                + "`tworker hosts` lists them, --force drains a host before it first comes up"
        }
    }

    public struct StillRunning: Error, CustomStringConvertible {
        public var hosts: [FleetHost]
        public var description: String {
            let parts = hosts.map { host in
                host.runningJobs.isEmpty ? "\(host.host): workers not yet held" : "\(host.host): running \(host.runningJobs.joined(separator: ", "))"
            }
            return "timed out waiting for the drain: " + parts.joined(separator: "; ")
        }
    }

    /// The hosts `names` asks for (`all`: every host listed), checking that each is known unless `force`.
    public func resolve(_ names: [String], all: Bool, force: Bool) async throws -> [String] {
        let hosts = try await FleetView.read(redis: redis)
        if all { return hosts.map(\.host) }
        let known = Set(hosts.map(\.host))
        let unknown = names.filter { !known.contains($0) }
        if !unknown.isEmpty && !force { throw UnknownHosts(hosts: unknown, known: known.sorted()) }
        return names
    }

    /// Who asked, and when: the key's value (`tworker hosts --json`'s `drained_by`).
    public static func mark(machine: String = HostRecord.machineName(), now: Date = Date()) -> String {
        "tworker drain on \(machine) (pid \(getpid())) at \(Timestamp.format(now))"
    }

    public func drain(_ hosts: [String]) async throws {
        guard !hosts.isEmpty else { return }
        let value = Self.mark()
        // NX: draining again keeps the first drain's who-and-when.
        _ = try await redis.checkedPipeline(hosts.map { ["SET", RedisKeys.drain(host: $0), value, "NX"] })
    }

    /// Removes the drain of `hosts`; `all`: every drain key, listed host or not.
    public func undrain(_ hosts: [String], all: Bool) async throws -> [String] {
        let targets = all ? Array(try await FleetView.drainedHosts(redis: redis).keys).sorted() : hosts
        guard !targets.isEmpty else { return [] }
        _ = try await redis.checkedPipeline(targets.map { ["DEL", RedisKeys.drain(host: $0)] })
        return targets
    }

    /// Waits until no live worker of `hosts` is `idle`: an idle worker polls the queue for up to a
    /// second between its looks at the drain key, so until it says `draining` it could still take
    /// a job. Returns the hosts whose workers still said idle at the deadline (an old tworker there?).
    public func waitForAcknowledgement(of hosts: [String], timeout: Duration = .seconds(10),
                                       poll: Duration = .milliseconds(100)) async throws -> [String] {
        let deadline = ContinuousClock.now + timeout
        let wanted = Set(hosts)
        while true {
            let idle = try await FleetView.read(redis: redis)
                .filter { wanted.contains($0.host) && $0.workers.contains { $0.state == "idle" } }.map(\.host)
            if idle.isEmpty || ContinuousClock.now >= deadline { return idle }
            try await Task.sleep(for: poll)
        }
    }

    /// Waits until every one of `hosts` is drained through (`FleetHost.isDrained`): no job runs
    /// there and none can start. Throws `StillRunning` at the deadline.
    public func wait(for hosts: [String], timeout: Duration, poll: Duration = .milliseconds(200),
                     progress: @Sendable ([FleetHost]) -> Void = { _ in }) async throws {
        let deadline = ContinuousClock.now + timeout
        let wanted = Set(hosts)
        var lastRunning: [String]?
        while true {
            let pending = try await FleetView.read(redis: redis).filter { wanted.contains($0.host) && !$0.isDrained }
            if pending.isEmpty { return }
            let running = pending.flatMap(\.runningJobs)
            if running != lastRunning {
                progress(pending)
                lastRunning = running
            }
            if ContinuousClock.now >= deadline { throw StillRunning(hosts: pending) }
            try await Task.sleep(for: poll)
        }
    }
}
