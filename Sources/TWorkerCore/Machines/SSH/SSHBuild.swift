import Foundation
import Synchronization

/// What every VM provider does over SSH: wait for the guest's sshd, run a build with `bash -s`.
extension SSHTarget {
    /// Polls the SSH banner every 25 ms until it answers or `timeout` (`timeouts.vm_boot`)
    /// passes: no fixed sleeps, and no ssh process per poll. `stillAlive` lets a provider stop
    /// waiting as soon as it knows the VM is gone (it throws what went wrong).
    func waitForBanner(timeout: Duration, stillAlive: @Sendable () async throws -> Void = {}) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if await SSHBanner.answers(host: host, port: port) { return }
            try await stillAlive()
            try await Task.sleep(for: .milliseconds(25))
        }
        throw InfrastructureError("SSH on \(host):\(port) did not answer within \(timeout.components.seconds) s (timeouts.vm_boot)")
    }

    /// Runs `script` with `bash -s` on the VM, streaming its merged output to `output`.
    ///
    /// The build's own output (stderr merged into stdout by the script) comes on stdout; the
    /// guest-side wrapper reports the script's exit status on stderr, where ssh also reports
    /// its own failures. No status line means ssh's 255 was the connection, not the build.
    func runBuild(script: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit {
        let token = "tworker-exit-" + UUID().uuidString.prefix(8).lowercased()
        let remote = "bash -s; status=$?; echo \(token):$status >&2; exit $status"
        let command = try BuildCommand(.ssh(self, remoteCommand: [remote]), standardInput: script)
        let errors = Mutex<[UInt8]>([])
        let exit = try await ChildProcess.run(command, output: output) { chunk in
            errors.withLock { if $0.count < 65536 { $0 += chunk } }
        }
        let stderr = String(decoding: errors.withLock { $0 }, as: UTF8.self)
        if let reported = Self.reportedStatus(in: stderr, token: token) { return .exited(reported) }
        if case .exited(255) = exit {
            let detail = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw InfrastructureError("the connection to the machine was lost (ssh exit 255)" + (detail.isEmpty ? "" : ": \(detail)"))
        }
        return exit
    }

    static func reportedStatus(in stderr: String, token: String) -> Int32? {
        guard let line = stderr.split(separator: "\n").last(where: { $0.hasPrefix(token + ":") }) else { return nil }
        return Int32(line.dropFirst(token.count + 1))
    }
}
