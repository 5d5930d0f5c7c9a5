import Foundation
import RedisClient
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A throwaway redis-server for tests, on a free loopback port and a unix socket in its own
/// temp directory. Prefer `withRedisServer`, which always stops it.
public final class RedisServer: Sendable {
    public let port: Int
    public let socketPath: String
    /// The server's working directory (also holds `redis.log` and any AOF files).
    public let directory: String
    public let password: String?
    public let appendonly: Bool
    /// Extra `--name value` arguments, given again on every restart.
    public let arguments: [String]
    private let tempDirectory: TempDirectory
    private let executable: String
    /// PID of the running process, 0 once stopped.
    private let process = Mutex<pid_t>(0)

    /// PID of the current process (changes on `restart()`; 0 while stopped).
    public var pid: Int32 { process.withLock { $0 } }

    /// `redis://127.0.0.1:<port>`, with `:password@` when set.
    public var url: String {
        let credentials = password.map { ":\(Self.percentEncode($0))@" } ?? ""
        return "redis://\(credentials)127.0.0.1:\(port)"
    }

    /// `unix://<socketPath>`, with `?password=` when set.
    public var unixURL: String {
        "unix://\(socketPath)" + (password.map { "?password=\(Self.percentEncode($0))" } ?? "")
    }

    /// The TCP endpoint, credentials included.
    public var endpoint: RedisEndpoint {
        RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port), password: password)
    }

    /// The unix-socket endpoint, credentials included.
    public var unixEndpoint: RedisEndpoint {
        RedisEndpoint(address: .unix(path: socketPath), password: password)
    }

    /// Starts a server and waits (up to 10 s) until it answers PING. `arguments` are extra
    /// command-line settings (e.g. `["--key-load-delay", "100"]`), kept across restarts.
    public static func start(password: String? = nil, appendonly: Bool = false, arguments: [String] = []) async throws -> RedisServer {
        var lastError: any Error = TestSupportError("redis-server did not start")
        // A free port can be taken by someone else before redis binds it: retry with a new one.
        for _ in 0..<5 {
            let server = try RedisServer(port: try freeLoopbackPort(), password: password, appendonly: appendonly, arguments: arguments)
            do {
                try await server.launch()
                return server
            } catch {
                lastError = error
                await server.destroy()
            }
        }
        throw lastError
    }

    private init(port: Int, password: String?, appendonly: Bool, arguments: [String]) throws {
        self.port = port
        self.password = password
        self.appendonly = appendonly
        self.arguments = arguments
        tempDirectory = try TempDirectory(prefix: "tworker-redis")
        directory = tempDirectory.path
        socketPath = tempDirectory.path + "/redis.sock"
        executable = try Self.findExecutable()
    }

    deinit {
        // Safety net for a server nobody stopped: never leave a process behind.
        let pid = process.withLock { $0 }
        if pid > 0 {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }

    /// SIGTERM, wait for exit (SIGKILL after 5 s). Idempotent.
    public func stop() async {
        let pid = process.withLock { pid in
            defer { pid = 0 }
            return pid
        }
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if Self.reaped(pid) { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    /// Stops the server and starts it again on the same port, socket and directory.
    public func restart() async throws {
        await stop()
        var lastError: any Error = TestSupportError("redis-server did not restart")
        for _ in 0..<3 {
            do {
                try await launch()
                return
            } catch {
                lastError = error
                await stop()
            }
        }
        throw lastError
    }

    /// Stops the server and deletes its directory.
    public func destroy() async {
        await stop()
        tempDirectory.remove()
    }

    /// The last lines of the server's log, for failure messages.
    public func logTail(lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: directory + "/redis.log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    // MARK: - Process handling

    private func launch() async throws {
        var arguments = [
            "--port", String(port), "--bind", "127.0.0.1",
            "--unixsocket", socketPath, "--unixsocketperm", "700",
            "--save", "", "--appendonly", appendonly ? "yes" : "no",
            "--daemonize", "no", "--dir", directory, "--logfile", "",
            // Tests use DEBUG SLEEP to simulate a hung server.
            "--enable-debug-command", "local",
        ]
        if let password { arguments += ["--requirepass", password] }
        arguments += self.arguments
        let pid = try Self.spawn(executable, arguments, log: directory + "/redis.log")
        process.withLock { $0 = pid }
        try await waitUntilReady(pid)
    }

    private func waitUntilReady(_ pid: pid_t) async throws {
        let probe = RedisConnection(
            endpoint: endpoint, connectTimeout: .milliseconds(500), commandTimeout: .seconds(2))
        defer { probe.close() }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if Self.reaped(pid) {
                process.withLock { $0 = 0 }
                throw TestSupportError("redis-server exited during startup:\n\(logTail())")
            }
            // Errors (refused, LOADING) just mean "not yet".
            if let reply = try? await probe.send(["PING"]), reply == .status("PONG"),
               FileManager.default.fileExists(atPath: socketPath) {
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestSupportError("redis-server on port \(port) did not answer PING within 10 s:\n\(logTail())")
    }

    /// True once `pid` has exited (and is reaped, by us or, if ECHILD, by someone else).
    private static func reaped(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        return result == pid || (result < 0 && errno == ECHILD)
    }

    private static func findExecutable() throws -> String {
        var candidates = ["/usr/bin/redis-server"]
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        candidates += path.split(separator: ":").map { "\($0)/redis-server" }
        guard let found = candidates.first(where: { access($0, X_OK) == 0 }) else {
            throw TestSupportError("redis-server not found in /usr/bin or on PATH (apt-get install redis-server)")
        }
        return found
    }

    /// posix_spawn with stdout/stderr to `log`, stdin from /dev/null, no inherited descriptors
    /// and default signal handling, so the server behaves the same whatever the test runner does.
    private static func spawn(_ executable: String, _ arguments: [String], log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        closeInheritedDescriptors(&actions)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var cArguments = argv + [nil]
        var pid: pid_t = 0
        let result = cArguments.withUnsafeMutableBufferPointer { buffer in
            posix_spawn(&pid, executable, &actions, &attributes, buffer.baseAddress!, environ)
        }
        guard result == 0 else {
            throw TestSupportError("posix_spawn(\(executable)) failed: \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// glibc >= 2.34 has posix_spawn_file_actions_addclosefrom_np, but Swift's Glibc module does
    /// not import it, so look it up at run time; without it the child may inherit stray fds.
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return }
        let closeFrom = unsafeBitCast(symbol, to: CloseFrom.self)
        _ = closeFrom(&actions, 3)
    }

    private static func percentEncode(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? text
    }
}

/// Starts a redis-server, runs `body` with it, and always stops it and removes its directory,
/// whether `body` returns or throws.
public func withRedisServer<T>(
    password: String? = nil,
    appendonly: Bool = false,
    arguments: [String] = [],
    _ body: (RedisServer) async throws -> T
) async throws -> T {
    let server = try await RedisServer.start(password: password, appendonly: appendonly, arguments: arguments)
    let result: T
    do {
        result = try await body(server)
    } catch {
        await server.destroy()
        throw error
    }
    await server.destroy()
    return result
}
