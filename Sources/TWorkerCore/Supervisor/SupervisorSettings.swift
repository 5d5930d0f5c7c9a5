import Foundation

/// What the master needs beyond `WorkerConfig`: the config's `user`, `group`, `allow_root` and
/// `limits.worker_memory`, each overridable for one run by `TWORKER_USER`, `TWORKER_GROUP`,
/// `TWORKER_ALLOW_ROOT` and `TWORKER_WORKER_MEMORY` (MiB).
public struct SupervisorSettings: Sendable, Equatable {
    /// The account the workers run as when the master runs as root.
    public var user: String?
    public var group: String?
    /// Lets the workers run as root when no `user` is set.
    public var allowRoot: Bool
    /// MiB of resident memory above which a worker is replaced after its job; nil: no limit.
    public var workerMemory: Int?
    /// Added to `timeouts.hard_limit` before the master SIGKILLs a worker whose job overran.
    public var stuckGrace: Duration
    /// Between memory and stuck checks.
    public var watchdogInterval: Duration

    public static let defaultStuckGrace: Duration = .seconds(30)

    public init(user: String? = nil, group: String? = nil, allowRoot: Bool = false, workerMemory: Int? = nil,
                stuckGrace: Duration = SupervisorSettings.defaultStuckGrace, watchdogInterval: Duration = .seconds(10)) {
        self.user = user
        self.group = group
        self.allowRoot = allowRoot
        self.workerMemory = workerMemory
        self.stuckGrace = stuckGrace
        self.watchdogInterval = watchdogInterval
    }

    /// Watchdog timing comes from the environment only (tests shorten it): `TWORKER_STUCK_GRACE`
    /// and `TWORKER_WATCHDOG_INTERVAL`, seconds, fractions allowed.
    public init(config: WorkerConfig, environment: [String: String] = ProcessInfo.processInfo.environment) {
        func text(_ name: String) -> String? {
            guard let value = environment[name]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
            return value
        }
        func seconds(_ name: String) -> Duration? {
            guard let value = text(name).flatMap(Double.init), value >= 0 else { return nil }
            return .milliseconds(Int64(value * 1000))
        }
        self.init(
            user: text("TWORKER_USER") ?? config.user,
            group: text("TWORKER_GROUP") ?? config.group,
            allowRoot: text("TWORKER_ALLOW_ROOT").map { ["1", "true", "yes", "on"].contains($0.lowercased()) } ?? config.allowRoot,
            workerMemory: text("TWORKER_WORKER_MEMORY").flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil } ?? config.limits.workerMemory,
            stuckGrace: seconds("TWORKER_STUCK_GRACE") ?? Self.defaultStuckGrace,
            watchdogInterval: seconds("TWORKER_WATCHDOG_INTERVAL") ?? .seconds(max(1, config.heartbeat.interval)))
    }
}

/// The account the workers run as.
public struct WorkerAccount: Sendable, Equatable {
    public var user: String
    public var uid: uid_t
    public var gid: gid_t
    public var groups: [gid_t]
    /// Its home directory, for HOME in the workers' environment.
    public var home: String = "/"

    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// nil: the workers run as the master does. Throws the one-line reason the master must not start.
    public static func resolve(_ settings: SupervisorSettings, euid: uid_t = geteuid()) throws(Problem) -> WorkerAccount? {
        guard let user = settings.user else {
            if settings.group != nil { throw Problem("group is set but user is not; set user too") }
            if euid == 0 && !settings.allowRoot {
                throw Problem("refusing to run workers as root: set user (and group) to the account builds run as, or allow_root: true")
            }
            return nil
        }
        guard let entry = getpwnam(user) else { throw Problem("user '\(user)' does not exist on this machine") }
        let uid = entry.pointee.pw_uid
        let home = entry.pointee.pw_dir.map { String(cString: $0) } ?? "/"
        var gid = entry.pointee.pw_gid
        if let group = settings.group {
            guard let groupEntry = getgrnam(group) else { throw Problem("group '\(group)' does not exist on this machine") }
            gid = groupEntry.pointee.gr_gid
        }
        if uid == 0 && !settings.allowRoot {
            throw Problem("refusing to run workers as root (user '\(user)'): use another account, or allow_root: true")
        }
        if euid != 0 && euid != uid {
            throw Problem("workers can run as '\(user)' only when the master runs as root or as '\(user)'")
        }
        // The user's supplementary groups, as login would set them (initgroups).
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(user, gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(user, gid, &groups, &count)
        }
        return WorkerAccount(user: user, uid: uid, gid: gid, groups: Array(groups.prefix(Int(max(0, count)))), home: home)
    }
}
