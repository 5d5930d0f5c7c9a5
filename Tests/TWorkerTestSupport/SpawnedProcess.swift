import Foundation

/// A child process started for a test (the `tworker` binary, mostly), with its output in a
/// log file, signalled and reaped by PID.
public final class SpawnedProcess: Sendable {
    public let pid: pid_t
    public let logPath: String

    private init(pid: pid_t, logPath: String) {
        self.pid = pid
        self.logPath = logPath
    }

    /// Starts `executable` with exactly `environment`, stdin from /dev/null, stdout to `log` and
    /// stderr there too or, when given, to `errorLog`; in a process group of its own.
    public static func spawn(_ executable: String, _ arguments: [String], environment: [String: String], log: String,
                             errorLog: String? = nil) throws -> SpawnedProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if let errorLog {
            posix_spawn_file_actions_addopen(&actions, 2, errorLog, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // Nothing else of the test process: a build pipe a worker of the test had open at this
        // moment, inherited by a long-lived CLI, would keep that build from ever ending.
        // (glibc 2.34+, not in Swift's Glibc module: looked up as Subprocess does.)
        if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
            typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
            _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, 3)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // Own process group: a test's signals reach only this child and what it starts.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = ([executable] + arguments).map { strdup($0) }
        let envp = environment.map { strdup("\($0.key)=\($0.value)") }
        defer { (argv + envp).forEach { free($0) } }
        var cArguments = argv + [nil]
        var cEnvironment = envp + [nil]
        var pid: pid_t = 0
        let result = cArguments.withUnsafeMutableBufferPointer { arguments in
            cEnvironment.withUnsafeMutableBufferPointer { environment in
                posix_spawn(&pid, executable, &actions, &attributes, arguments.baseAddress!, environment.baseAddress!)
            }
        }
        guard result == 0 else { throw TestSupportError("posix_spawn(\(executable)) failed: error \(result)") }
        return SpawnedProcess(pid: pid, logPath: log)
    }

    public func signal(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Waits for the exit; the exit status (128+signal when killed), nil on timeout.
    public func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
            if result < 0 { return -1 }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    /// SIGKILL to the process and its group, then reap it.
    public func kill9() async {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
        _ = await waitForExit(timeout: .seconds(10))
    }

    public var output: String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }
}

/// The `tworker` executable built next to the running test binary.
public func tworkerExecutable() throws -> String {
    let testBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var directory = testBinary.deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("tworker").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    throw TestSupportError("the tworker executable was not found next to \(testBinary.path); run `swift build` first")
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
public func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    repeat {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    } while ContinuousClock.now < deadline
    return try await condition()
}

/// True once `pid` has exited; a zombie nobody has reaped yet counts as exited.
public func processIsGone(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
    return stat[close...].hasPrefix(") Z")
}
