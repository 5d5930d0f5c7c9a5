import Foundation

/// `Tests/Fixtures/redis-loading-proxy` in front of a test's redis-server: it answers `LOADING`
/// (as a server loading its dataset does) to the commands its rules name, so a test puts the
/// loading phase before exactly the command it means. Stopped by PID.
public final class RedisLoadingProxy: Sendable {
    public let port: Int
    public let process: SpawnedProcess

    /// `rules`: `COMMAND[:KEYPREFIX]=COUNT`, e.g. `HGET:tworker:job:=3` refuses the first three
    /// HGETs of a job record.
    public init(upstreamPort: Int, rules: [String], log: String) async throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/redis-loading-proxy").path
        port = try freeLoopbackPort()
        process = try SpawnedProcess.spawn("/bin/sh", [script, String(port), String(upstreamPort)] + rules,
                                           environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], log: log)
        let deadline = ContinuousClock.now + .seconds(10)
        while !process.output.contains("listening") {
            guard ContinuousClock.now < deadline, await process.waitForExit(timeout: .milliseconds(1)) == nil else {
                stop()
                throw TestSupportError("redis-loading-proxy did not start: \(process.output)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// One line per answer it made up: `LOADING <command> <key>`.
    public var refusals: [String] { process.output.split(separator: "\n").map(String.init).filter { $0.hasPrefix("LOADING ") } }

    public func stop() {
        process.signal(SIGKILL)
        Task { [process] in _ = await process.waitForExit(timeout: .seconds(5)) }
    }
}
