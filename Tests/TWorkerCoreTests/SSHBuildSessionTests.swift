import Foundation
import Synchronization
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

/// The guest side of a build's SSH session, run here by `sh -c` as sshd would, with a `date`
/// of the test's own (the real one would set this host's clock).
@Suite struct SSHBuildSessionTests {
    struct Session {
        var stdout: String
        var stderr: String
        var exit: BuildExit
        var dateCalls: [String]
    }

    /// Runs the session's remote command with `script` on stdin; the fake `date` logs its
    /// arguments, prints what busybox prints, and exits `dateStatus`.
    func session(clockEpoch: Int?, marksStart: Bool = false, markAliveEvery: Int? = nil, dateStatus: Int = 0,
                 script: String) async throws -> Session {
        let directory = try TempDirectory(prefix: "tworker-ssh-session")
        defer { directory.remove() }
        let calls = directory.path + "/date-calls"
        let date = directory.path + "/date"
        try "#!/bin/sh\necho \"$*\" >>\(calls)\necho 'Sun Dec  6 15:20:00 UTC 2026'\necho 'date: noise' >&2\nexit \(dateStatus)\n"
            .write(toFile: date, atomically: true, encoding: .utf8)
        chmod(date, 0o755)
        let remote = SSHTarget.buildRemoteCommand(token: "tok", clockEpoch: clockEpoch, marksStart: marksStart, markAliveEvery: markAliveEvery)
        let command = BuildCommand(executable: "/bin/sh", arguments: ["-c", remote],
                                   environment: ["PATH": directory.path + ":/usr/bin:/bin"], standardInput: script)
        let out = Mutex<[UInt8]>([]), err = Mutex<[UInt8]>([])
        let exit = try await ChildProcess.run(command, output: { chunk in out.withLock { $0 += chunk } },
                                              errorOutput: { chunk in err.withLock { $0 += chunk } })
        let logged = (try? String(contentsOfFile: calls, encoding: .utf8)) ?? ""
        return Session(stdout: String(decoding: out.withLock { $0 }, as: UTF8.self), stderr: String(decoding: err.withLock { $0 }, as: UTF8.self),
                       exit: exit, dateCalls: logged.split(separator: "\n").map(String.init))
    }

    @Test func theBuildsOwnSessionSetsTheClockFirstAndKeepsItOutOfTheLog() async throws {
        let run = try await session(clockEpoch: 1_796_570_400, script: "echo first line\nexit 3\n")
        #expect(run.dateCalls == ["-s @1796570400"], "the clock is set in the build's session, once")
        #expect(run.stdout == "first line\n", "the log starts with the build's first line: \(run.stdout)")
        #expect(SSHTarget.reportedStatus(in: run.stderr, token: "tok") == 3)
        #expect(run.exit == .exited(3))
    }

    @Test func aClockThatCannotBeSetStopsTheBuildBeforeItRuns() async throws {
        let run = try await session(clockEpoch: 1_796_570_400, marksStart: true, dateStatus: 1, script: "echo ran\n")
        #expect(run.stdout.isEmpty, "the build did not run: \(run.stdout)")
        #expect(SSHTarget.marks(run.stderr, token: "tok", "start") && SSHTarget.marks(run.stderr, token: "tok", "clock"))
        #expect(SSHTarget.reportedStatus(in: run.stderr, token: "tok") == nil)
    }

    @Test func withoutAClockTheSessionOnlyRunsTheBuild() async throws {
        let run = try await session(clockEpoch: nil, script: "echo ok\n")
        #expect(run.dateCalls.isEmpty && run.stdout == "ok\n")
        #expect(!SSHTarget.marks(run.stderr, token: "tok", "start"), "no start marker unless a refused session may be retried")
        #expect(SSHTarget.reportedStatus(in: run.stderr, token: "tok") == 0)
    }

    @Test func theEpochIsTheHostsTimeWhenTheCommandRuns() {
        #expect(SSHTarget.clockEpoch(now: Date(timeIntervalSince1970: 100.1), sessionSetUp: 0.3) == 100)
        #expect(SSHTarget.clockEpoch(now: Date(timeIntervalSince1970: 100.3), sessionSetUp: 0.3) == 101, "rounded after the session's set-up")
        #expect(SSHTarget.clockEpoch(now: Date(timeIntervalSince1970: 100.3), sessionSetUp: 0.1) == 100)
    }

    @Test func aRunningBuildMarksItselfAliveAndItsMarksStayOutOfTheErrors() async throws {
        let run = try await session(clockEpoch: nil, markAliveEvery: 1, script: "echo one\nsleep 2.5\necho two\nexit 4\n")
        #expect(run.stdout == "one\ntwo\n", "the marks are not in the build's output: \(run.stdout)")
        let marks = run.stderr.split(separator: "\n").filter { $0 == "tok:alive" }.count
        #expect(marks >= 2, "a mark about every second while the build ran: \(run.stderr)")
        #expect(SSHTarget.reportedStatus(in: run.stderr, token: "tok") == 4, "the status is read past the marks: \(run.stderr)")
        #expect(run.exit == .exited(4))

        let errors = SessionErrors(aliveMark: "tok:alive")
        // Marks split across chunks are still recognised; other lines are kept as they came.
        for chunk in ["tok:al", "ive\nssh: warn", "ing\ntok:alive\n", "tok:4\n"] { errors.take(Array(chunk.utf8)) }
        #expect(errors.text == "ssh: warning\ntok:4\n")
    }

    @Test func theMarkingLoopDoesNotHoldTheSessionOpenAfterTheBuild() async throws {
        // As sshd does, wait for every holder of the session's output to close it (no group
        // kill here): a marking loop whose `sleep` kept stderr would make this take 30 s.
        let remote = SSHTarget.buildRemoteCommand(token: "tok", clockEpoch: nil, marksStart: false, markAliveEvery: 30)
        // The runner collects stdout until every holder closed it, and the child gets no other
        // descriptor of ours (an inherited one would hold the pipe open as well).
        let command = ProgramCommand(.bash(), arguments: ["-c", "echo 'echo quick' | sh -c \"$REMOTE\" 2>&1 | cat"],
                                     environment: .inherit(updating: ["REMOTE": remote]))
        let started = ContinuousClock.now
        let text = try await ProgramRunner().run(command).stdout
        #expect(text == "quick\ntok:0\n", "\(text)")
        #expect(ContinuousClock.now - started < .seconds(15), "the session's output closed with its build")
    }

    @Test func aSessionIsSilentOnlyWhenNothingComesWhileTworkerIsNotHoldingItBack() async throws {
        let watch = SessionWatch()
        let silent = Task { try await watch.silence(allowed: .milliseconds(600)); return ContinuousClock.now }
        // Signs keep it from ending, and so does time tworker spends handing output on.
        for _ in 0..<4 {
            try await Task.sleep(for: .milliseconds(300))
            watch.sawSign()
        }
        await watch.holdingBack { try? await Task.sleep(for: .milliseconds(1500)) }
        let quietFrom = ContinuousClock.now
        #expect(!silent.isCancelled)
        let endedAt = try await silent.value
        #expect(endedAt - quietFrom >= .milliseconds(550), "silence counts from the last sign, after the hold")
    }
}
