import Foundation
import Logging
import RedisClient
import Synchronization

/// `redis.url: embedded`: a private `redis-server` on a unix socket under `<state_dir>/redis/`,
/// with its data (append-only file) beside it, shared by every tworker command using that
/// `state_dir` at the moment.
///
/// Two locks beside the socket make concurrent commands (`tworker work` in one terminal,
/// `tworker logs --follow` in another) share exactly one server:
/// - `start.lock` (exclusive, short): held while a command finds, starts or stops the server,
///   so two never start one each on the same socket and append-only file;
/// - `users.lock` (shared, for as long as a command uses the server): the last user to leave
///   (it alone can turn its shared lock exclusive) stops the server. The kernel drops a killed
///   command's locks, so a server left behind by SIGKILL is reachable, and the next command to
///   leave it stops it.
///
/// A master's workers are users too: their `REDIS_URL` is the socket the master started, and
/// they join it (`join`) without ever starting one, so workers that outlive a SIGKILLed master
/// keep the server up until the last of them leaves.
public final class EmbeddedRedis: Sendable {
    public let directory: String
    public let socketPath: String
    public let pidFile: String
    /// The pid of the server this process started, nil when it joined a running one.
    public let startedPID: pid_t?
    private let users: FileLock?

    public struct StartFailure: Error, CustomStringConvertible {
        public var description: String
    }

    private init(directory: String, startedPID: pid_t?, users: FileLock?) {
        self.directory = directory
        self.socketPath = directory + "/redis.sock"
        self.pidFile = directory + "/redis.pid"
        self.startedPID = startedPID
        self.users = users
    }

    public var endpoint: RedisEndpoint {
        // Parsing our own well-formed URL cannot fail.
        try! RedisEndpoint(url: "unix://" + socketPath)
    }

    /// The socket path under `state_dir`, whether or not a server runs there.
    public static func socketPath(stateDir: String) -> String {
        (stateDir as NSString).appendingPathComponent("redis/redis.sock")
    }

    /// Joins the running embedded server or starts one.
    public static func startOrReuse(stateDir: String, logger: Logger) async throws -> EmbeddedRedis {
        let directory = (stateDir as NSString).appendingPathComponent("redis")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let startLock = try await FileLock.acquire(directory + Self.startLockFile, exclusive: true)
        defer { startLock.unlock() }
        let probe = EmbeddedRedis(directory: directory, startedPID: nil, users: nil)
        var startedPID: pid_t?
        if let pid = probe.runningPID(), FileManager.default.fileExists(atPath: probe.socketPath),
           await probe.answers(within: .seconds(10)) {
            logger.debug("joining the running embedded redis-server", metadata: ["pid": "\(pid)", "socket": "\(probe.socketPath)"])
        } else {
            probe.stopStray(logger: logger)
            startedPID = try await probe.launch(logger: logger)
        }
        let users = try await FileLock.acquire(directory + Self.usersLockFile, exclusive: false)
        return EmbeddedRedis(directory: directory, startedPID: startedPID, users: users)
    }

    /// Joins `stateDir`'s embedded server as a user without starting one: for a process handed
    /// the server's socket (a master's workers), which must not be stopped under it by another
    /// command leaving. Under the start lock, so no stop is half done when it joins.
    public static func join(stateDir: String) async throws -> EmbeddedRedis {
        let directory = (stateDir as NSString).appendingPathComponent("redis")
        let startLock = try await FileLock.acquire(directory + Self.startLockFile, exclusive: true)
        defer { startLock.unlock() }
        let users = try await FileLock.acquire(directory + Self.usersLockFile, exclusive: false)
        return EmbeddedRedis(directory: directory, startedPID: nil, users: users)
    }

    /// True when `socket` is `stateDir`'s embedded socket, however either is spelled (relative,
    /// through a symlink): the same directory (device and inode) and the same file name.
    public static func isSocket(_ socket: String, ofStateDir stateDir: String) -> Bool {
        let own = socketPath(stateDir: stateDir)
        guard (socket as NSString).lastPathComponent == (own as NSString).lastPathComponent else { return false }
        var given = stat()
        var embedded = stat()
        guard stat((socket as NSString).deletingLastPathComponent, &given) == 0,
              stat((own as NSString).deletingLastPathComponent, &embedded) == 0 else { return false }
        return given.st_dev == embedded.st_dev && given.st_ino == embedded.st_ino
    }

    /// The lock files beside the socket, which every user of the server opens (`join`, `stop`).
    public static func lockFiles(stateDir: String) -> [String] {
        let directory = (stateDir as NSString).appendingPathComponent("redis")
        return [directory + startLockFile, directory + usersLockFile]
    }

    static let startLockFile = "/start.lock"
    static let usersLockFile = "/users.lock"

    /// Leaves the server; the last command using it stops it and waits until it has exited.
    /// Only the first call does anything.
    public func stop() {
        guard let users else { return }
        // Under the start lock, so nobody joins between the check and the stop. Blocking here is
        // fine: this runs once, at the command's end.
        let startLock = FileLock.acquireBlocking(directory + Self.startLockFile, exclusive: true)
        defer { startLock?.unlock() }
        let last = users.tryUpgrade()
        guard users.unlock() else { return }
        if last, let pid = runningPID() {
            Self.terminate(pid)
        }
    }

    // MARK: - Starting

    private func launch(logger: Logger) async throws -> pid_t {
        let runner = ProgramRunner(logger: logger)
        // Checked before the old socket and pid file go: a missing redis-server changes nothing.
        _ = try runner.locate(.redisServer)
        try? FileManager.default.removeItem(atPath: socketPath)
        try? FileManager.default.removeItem(atPath: pidFile)
        do {
            try await runner.run(.embeddedRedisServer(directory: directory, socket: socketPath, pidFile: pidFile))
        } catch let failure as ProgramFailure {
            throw StartFailure(description: "redis-server failed to start (exit \(failure.exitCode ?? -1)); see \(directory)/redis.log")
        }
        if await answers(within: .seconds(10)), let pid = runningPID() {
            logger.info("started embedded redis-server", metadata: ["pid": "\(pid)", "socket": "\(socketPath)"])
            return pid
        }
        if let pid = runningPID() { Self.terminate(pid) }
        throw StartFailure(description: "redis-server did not answer on \(socketPath) within 10 s; see \(directory)/redis.log")
    }

    /// A server whose pid file is ours but which does not answer (its socket removed, or
    /// wedged) would hold the append-only file beside a new one: stop it first. Only a process
    /// named redis-server is signalled, so a pid reused by something else is left alone.
    private func stopStray(logger: Logger) {
        guard let pid = runningPID(), Self.command(of: pid) == "redis-server" else { return }
        logger.warning("stopping an embedded redis-server that does not answer", metadata: ["pid": "\(pid)", "socket": "\(socketPath)"])
        Self.terminate(pid)
    }

    // MARK: - Probing

    func runningPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, Self.isAlive(pid) else { return nil }
        return pid
    }

    /// Waits up to `patience` for PONG (a server loading its append-only file answers LOADING first).
    func answers(within patience: Duration) async -> Bool {
        let deadline = ContinuousClock.now + patience
        repeat {
            if FileManager.default.fileExists(atPath: socketPath) {
                let connection = RedisConnection(endpoint: endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(1))
                let reply = try? await connection.send(["PING"])
                connection.close()
                if reply?.string == "PONG" { return true }
            }
            try? await Task.sleep(for: .milliseconds(20))
        } while ContinuousClock.now < deadline
        return false
    }

    /// A daemonized server's parent is init (or a container's pid 1), which may reap it late:
    /// a zombie has exited all the same.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return !stat[close...].hasPrefix(") Z")
    }

    static func command(of pid: pid_t) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// SIGTERM (redis-server flushes its append-only file), SIGKILL after 10 s.
    static func terminate(_ pid: pid_t) {
        guard kill(pid, SIGTERM) == 0 else { return }
        for _ in 0..<2000 where isAlive(pid) { usleep(5_000) }
        if isAlive(pid) {
            kill(pid, SIGKILL)
            for _ in 0..<400 where isAlive(pid) { usleep(5_000) }
        }
    }
}

/// An flock on a file, held until `unlock()` or the process's end. The descriptor is
/// close-on-exec, so programs tworker starts (redis-server itself) never inherit the lock.
final class FileLock: Sendable {
    /// nil once unlocked: a second unlock must not close a descriptor number reused since.
    private let fd: Mutex<Int32?>

    private init(fd: Int32) { self.fd = Mutex(fd) }

    /// Waits for the lock without blocking a thread of the cooperative pool.
    static func acquire(_ path: String, exclusive: Bool) async throws -> FileLock {
        let fd = try openLockFile(path)
        while flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let error = errno
                close(fd)
                throw CocoaError(.fileLocking, userInfo: [NSFilePathErrorKey: path, NSUnderlyingErrorKey: POSIXError(POSIXErrorCode(rawValue: error) ?? .EIO)])
            }
            do {
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                close(fd)
                throw error
            }
        }
        return FileLock(fd: fd)
    }

    static func acquireBlocking(_ path: String, exclusive: Bool) -> FileLock? {
        guard let fd = try? openLockFile(path) else { return nil }
        while flock(fd, exclusive ? LOCK_EX : LOCK_SH) != 0 {
            guard errno == EINTR else { close(fd); return nil }
        }
        return FileLock(fd: fd)
    }

    /// Turns a shared lock exclusive if nobody else holds it; true when it did.
    func tryUpgrade() -> Bool {
        fd.withLock { fd in fd.map { flock($0, LOCK_EX | LOCK_NB) == 0 } ?? false }
    }

    /// True the first time only.
    @discardableResult
    func unlock() -> Bool {
        fd.withLock { fd in
            guard let open = fd else { return false }
            close(open)
            fd = nil
            return true
        }
    }

    /// A lock file that cannot be opened (a worker's account not given the lock files' group).
    struct OpenFailure: Error, CustomStringConvertible {
        var path: String
        var error: Int32
        var description: String { "cannot open \(path): \(String(cString: strerror(error)))" }
    }

    private static func openLockFile(_ path: String) throws -> Int32 {
        // Read-only suffices for flock, so another user given the group can take it too.
        var fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o660)
        if fd < 0 { fd = open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw OpenFailure(path: path, error: errno) }
        return fd
    }
}
