import Foundation
import RedisClient

/// What a file is, as `stat(2)` says.
public struct FileFacts: Sendable, Equatable {
    public var uid: uid_t
    public var gid: gid_t
    /// Permission bits (`0o644`).
    public var mode: mode_t
    public var isDirectory: Bool

    public init(uid: uid_t, gid: gid_t, mode: mode_t, isDirectory: Bool) {
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.isDirectory = isDirectory
    }
}

/// What a Redis server says about itself.
public struct RedisFacts: Sendable, Equatable {
    /// `master`, `slave` (a replica) or `sentinel`.
    public var role: String
    public var version: String

    public init(role: String, version: String) {
        self.role = role
        self.version = version
    }
}

/// The host as `tworker doctor` sees it: every side effect the checks need, behind one seam so
/// each check's logic runs in a unit test against a made-up host.
public protocol DoctorProbing: ProgramRunning {
    /// The path `program` runs by, or the locator's operator-facing message.
    func locate(_ program: Program) throws(ProgramNotFound) -> String
    /// Connects, asks `ROLE` and `INFO server`; throws what the connection said.
    func redis(_ endpoint: RedisEndpoint) async throws -> RedisFacts
    /// nil: no such file (or it cannot be reached).
    func file(_ path: String) -> FileFacts?
    /// Whether this process may write `path` (access(2): a unix socket needs it to connect).
    func canWrite(_ path: String) -> Bool
    /// Bytes available to unprivileged users and the filesystem's size, of the filesystem holding `path`.
    func diskSpace(_ path: String) -> (available: UInt64, total: UInt64)?
    /// True when something listens on (or holds) `host:port`, so a VM's NAT rule could not bind it.
    func portInUse(host: String, port: Int) -> Bool
    /// The pid of the running master of this `state_dir`, nil when none runs.
    func masterPID(stateDir: String) -> pid_t?
    /// Whether `-accel kvm` can work here.
    func hardwareKVMWorks() -> Bool
    /// The effective uid doctor runs as (root decides whether workers change account).
    var euid: uid_t { get }
}

/// The real host.
public struct SystemDoctorProbes: DoctorProbing {
    let runner: ProgramRunner

    public init(runner: ProgramRunner = ProgramRunner()) { self.runner = runner }

    public func run(_ command: ProgramCommand) async throws -> ProgramOutput { try await runner.run(command) }

    public func locate(_ program: Program) throws(ProgramNotFound) -> String { try runner.locate(program) }

    public func redis(_ endpoint: RedisEndpoint) async throws -> RedisFacts {
        let connection = RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), commandTimeout: .seconds(5))
        defer { connection.close() }
        let info = try await connection.send(["INFO", "server"]).string ?? ""
        var role = "unknown"
        // ROLE is Redis 2.8.12+; INFO replication says the same on anything older.
        if let first = try? await connection.send(["ROLE"]).array?.first?.string {
            role = first
        } else if let replication = try? await connection.send(["INFO", "replication"]).string {
            role = Self.infoField("role", in: replication) ?? role
        }
        return RedisFacts(role: role, version: Self.infoField("redis_version", in: info) ?? "unknown version")
    }

    /// `name:value` of an INFO reply.
    static func infoField(_ name: String, in info: String) -> String? {
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix(name + ":") {
            return String(line.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    public func file(_ path: String) -> FileFacts? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileFacts(uid: info.st_uid, gid: info.st_gid, mode: info.st_mode & 0o7777, isDirectory: (info.st_mode & S_IFMT) == S_IFDIR)
    }

    public func canWrite(_ path: String) -> Bool { access(path, W_OK) == 0 }

    public func diskSpace(_ path: String) -> (available: UInt64, total: UInt64)? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        return (UInt64(info.f_bavail) * UInt64(info.f_frsize), UInt64(info.f_blocks) * UInt64(info.f_frsize))
    }

    public func portInUse(host: String, port: Int) -> Bool {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(clamping: port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // As a listener would bind it: a port left in TIME_WAIT by an earlier connection is free.
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let error = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 ? 0 : errno }
        }
        return error == EADDRINUSE
    }

    public func masterPID(stateDir: String) -> pid_t? {
        PidFileLock.holder(of: MasterPaths(stateDir: stateDir).pidFile)
    }

    public func hardwareKVMWorks() -> Bool { KVMProbe.hardwareKVMWorks() }

    public var euid: uid_t { geteuid() }
}
