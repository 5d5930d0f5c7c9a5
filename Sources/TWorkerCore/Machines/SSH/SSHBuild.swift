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
    ///
    /// `settingClock`: the same session first sets the guest's clock to the host's (a guest
    /// loses the time it was paused), so a job pays for one SSH session, not two.
    /// `whenRefused`: called with ssh's complaint when a session failed before it ran anything
    /// on the guest (a guest still waking, dropbear refusing); it throws to give up, or returns
    /// to try again. Without it such a session fails the build as a lost connection.
    /// `liveness`: a session from which nothing comes for its `allowedSilence` is ended as an
    /// infrastructure error (see `SessionLiveness`). `record`: where the ssh client's process
    /// group is noted while it runs (see `BuildGroupRecord.ofRemoteBuild`).
    func runBuild(script: String, settingClock: Bool = false, whenRefused: (@Sendable (String) async throws -> Void)? = nil,
                  liveness: SessionLiveness = .standard, record: BuildGroupRecord? = nil,
                  output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit {
        // The script goes in only after the client's group is on record, so a worker killed
        // before that leaves a session that runs nothing, and one killed after it a client
        // its master or its successor kills.
        defer { record?.clear() }
        while true {
            let token = "tworker-exit-" + UUID().uuidString.prefix(8).lowercased()
            // Taken as late as possible: the command runs one session set-up later, ~0.1 s over an
            // open master connection, ~0.3 s for a handshake of its own (TCG).
            let overMaster = controlPath.map { FileManager.default.fileExists(atPath: $0) } ?? false
            let epoch = settingClock ? Self.clockEpoch(now: Date(), sessionSetUp: overMaster ? 0.1 : 0.3) : nil
            let remote = Self.buildRemoteCommand(token: token, clockEpoch: epoch, marksStart: whenRefused != nil,
                                                 markAliveEvery: liveness.markEvery)
            let command = try BuildCommand(.ssh(self, remoteCommand: [remote]), standardInput: script)
            let errors = SessionErrors(aliveMark: token + ":alive")
            let watch = SessionWatch()
            let ended = try await withThrowingTaskGroup(of: BuildExit?.self) { group in
                group.addTask {
                    try await ChildProcess.run(command, output: { chunk in
                        watch.sawSign()
                        await watch.holdingBack { await output(chunk) }
                    }, errorOutput: { chunk in
                        watch.sawSign()
                        errors.take(chunk)
                    }, started: { pid in record?.record(pid) })
                }
                group.addTask {
                    try await watch.silence(allowed: liveness.allowedSilence)
                    return nil
                }
                // The first to end decides: the session, or the watch (which ends the session).
                let first = try await group.next() ?? nil
                group.cancelAll()
                return first
            }
            guard let exit = ended else {
                throw InfrastructureError("the machine stopped answering: nothing came over the build's SSH session to \(host):\(port) "
                                          + "for \(liveness.allowedSilence.components.seconds) s, not even its mark every \(liveness.markEvery) s")
            }
            let stderr = errors.text
            if let reported = Self.reportedStatus(in: stderr, token: token) { return .exited(reported) }
            if Self.marks(stderr, token: token, "clock") {
                throw InfrastructureError("could not set the machine's clock (`date -s` as \(user) on \(host):\(port)); "
                                          + "ssh.user must be allowed to set the time (root)")
            }
            if case .exited(255) = exit {
                let detail = stderr.split(separator: "\n").filter { !$0.hasPrefix(token) }.joined(separator: "\n")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                if let whenRefused, !Self.marks(stderr, token: token, "start") {
                    try await whenRefused(detail)
                    continue
                }
                throw InfrastructureError("the connection to the machine was lost (ssh exit 255)" + (detail.isEmpty ? "" : ": \(detail)"))
            }
            return exit
        }
    }

    /// The guest side of a build session. `<token>:start` on stderr says the session ran (a
    /// retry would run the build twice); `<token>:clock` that the clock could not be set, and
    /// the build did not run; `<token>:alive` every `markAliveEvery` seconds while the build
    /// runs; `<token>:<status>` how the build ended. The clock's own output goes nowhere, so
    /// the job's log starts with the build's first line.
    ///
    /// The marking loop keeps only stderr: a `sleep` it leaves behind when killed holds no
    /// end of the session open, so the session closes as soon as the build ends.
    static func buildRemoteCommand(token: String, clockEpoch: Int?, marksStart: Bool, markAliveEvery: Int? = nil) -> String {
        var remote = marksStart ? "echo \(token):start >&2; " : ""
        if let clockEpoch { remote += "date -s @\(clockEpoch) >/dev/null 2>&1 || { echo \(token):clock >&2; exit 1; }; " }
        guard let every = markAliveEvery else {
            return remote + "bash -s; status=$?; echo \(token):$status >&2; exit $status"
        }
        remote += "(while sleep \(max(every, 1)) </dev/null >/dev/null 2>&1; do echo \(token):alive >&2 || exit; done) </dev/null >/dev/null & alive=$!; "
        return remote + "bash -s; status=$?; kill -9 $alive 2>/dev/null; echo \(token):$status >&2; exit $status"
    }

    /// The host's time in whole seconds (busybox `date -s @N` takes no fraction) as it will be
    /// when the command runs on the guest, about one session set-up after `now`: rounding
    /// keeps the guest within about half a second of the host.
    static func clockEpoch(now: Date, sessionSetUp: TimeInterval) -> Int {
        Int((now.timeIntervalSince1970 + sessionSetUp).rounded())
    }

    static func reportedStatus(in stderr: String, token: String) -> Int32? {
        stderr.split(separator: "\n").reversed().lazy
            .compactMap { $0.hasPrefix(token + ":") ? Int32($0.dropFirst(token.count + 1)) : nil }.first
    }

    static func marks(_ stderr: String, token: String, _ marker: String) -> Bool {
        stderr.split(separator: "\n").contains { $0 == token + ":" + marker }
    }
}
