import Foundation
import Logging
import RedisClient
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// `redis.url: embedded`: a private `redis-server` on a unix socket under `<state_dir>/redis/`,
/// with its data (append-only file) beside it.
///
/// A server already running there (its pidfile names a live process whose socket answers) is
/// reused; one this process started is stopped again by `stop()`.
public final class EmbeddedRedis: Sendable {
    public let directory: String
    public let socketPath: String
    public let pidFile: String
    /// The pid of the server this process started, nil when it reused a running one.
    public let startedPID: pid_t?

    public struct StartFailure: Error, CustomStringConvertible {
        public var description: String
    }

    private init(directory: String, startedPID: pid_t?) {
        self.directory = directory
        self.socketPath = directory + "/redis.sock"
        self.pidFile = directory + "/redis.pid"
        self.startedPID = startedPID
    }

    public var endpoint: RedisEndpoint {
        // Parsing our own well-formed URL cannot fail.
        try! RedisEndpoint(url: "unix://" + socketPath)
    }

    /// Reuses the running embedded server or starts one.
    public static func startOrReuse(stateDir: String, logger: Logger) async throws -> EmbeddedRedis {
        let directory = (stateDir as NSString).appendingPathComponent("redis")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let probe = EmbeddedRedis(directory: directory, startedPID: nil)
        if let pid = probe.runningPID(), await probe.answers() {
            logger.debug("reusing embedded redis-server", metadata: ["pid": "\(pid)", "socket": "\(probe.socketPath)"])
            return probe
        }
        let binary = try ProgramLocator().locate(.redisServer)
        try? FileManager.default.removeItem(atPath: probe.socketPath)
        let arguments = [
            "--port", "0", "--unixsocket", probe.socketPath, "--unixsocketperm", "700",
            "--dir", directory, "--appendonly", "yes", "--pidfile", probe.pidFile,
            "--daemonize", "yes", "--logfile", directory + "/redis.log", "--save", "",
        ]
        // Daemonized, so a Ctrl-C aimed at tworker's process group does not take Redis down
        // before tworker has written its jobs' final states.
        let status = try await runAndWait(binary, arguments)
        guard status == 0 else {
            throw StartFailure(description: "redis-server failed to start (exit \(status)); see \(directory)/redis.log")
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let pid = probe.runningPID(), await probe.answers() {
                logger.info("started embedded redis-server", metadata: ["pid": "\(pid)", "socket": "\(probe.socketPath)"])
                return EmbeddedRedis(directory: directory, startedPID: pid)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw StartFailure(description: "redis-server did not answer on \(probe.socketPath) within 10 s; see \(directory)/redis.log")
    }

    /// Stops the server if this process started it; waits until it has exited.
    public func stop() {
        guard let pid = startedPID else { return }
        guard kill(pid, SIGTERM) == 0 else { return }
        for _ in 0..<1000 where Self.isAlive(pid) { usleep(5_000) }
    }

    /// A daemonized server's parent is init (or a container's pid 1), which may reap it late:
    /// a zombie has exited all the same.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return !stat[close...].hasPrefix(") Z")
    }

    func runningPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, Self.isAlive(pid) else { return nil }
        return pid
    }

    func answers() async -> Bool {
        guard FileManager.default.fileExists(atPath: socketPath) else { return false }
        let connection = RedisConnection(endpoint: endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(1))
        defer { connection.close() }
        return (try? await connection.send(["PING"]))?.string == "PONG"
    }

    private static func runAndWait(_ executable: String, _ arguments: [String]) async throws -> Int32 {
        let result = try await Subprocess.run(.path(FilePath(executable)), arguments: Arguments(arguments), output: .discarded, error: .discarded)
        switch result.terminationStatus {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }
}
