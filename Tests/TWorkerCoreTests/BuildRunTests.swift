import Foundation
import Synchronization
import Testing
@testable import TWorkerCore

/// A machine that replays canned output and exit status, for the limit and result logic.
struct ScriptedMachine: Machine {
    let name = "worker-1"
    var chunks: [String]
    var exit: BuildExit
    var pauseAfterChunks: Duration = .zero
    var failure: String?

    func prepare() async throws(InfrastructureError) {}
    func release() async throws(InfrastructureError) {}

    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        if let failure { throw InfrastructureError(failure) }
        for chunk in chunks { await output(Array(chunk.utf8)) }
        if pauseAfterChunks > .zero {
            // Sleeps until cancelled, like a build the watchdog has to kill.
            try? await Task.sleep(for: pauseAfterChunks)
            if Task.isCancelled { return .signaled(9) }
        }
        return exit
    }
}

func limits(hard: Int = 60, silence: Int = 60, length: Int = 1 << 20, stage: [String: Int] = [:]) -> BuildLimits {
    BuildLimits(hardLimit: .seconds(hard), logSilence: .seconds(silence), logLength: length, stageTimeout: { stage[$0] })
}

private final class Collected: Sendable {
    let bytes = Mutex<[UInt8]>([])
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

@Suite struct BuildRunTests {
    func run(_ machine: ScriptedMachine, _ limits: BuildLimits, lookEvery: Duration = .milliseconds(100)) async -> (BuildOutcome, String) {
        let log = Collected()
        let outcome = await BuildRun.execute(machine: machine, script: "", jobID: "j", limits: limits, lookEvery: lookEvery) { chunk in
            log.bytes.withLock { $0 += chunk }
        }
        return (outcome, log.text)
    }

    @Test func exitZeroPasses() async {
        let (outcome, log) = await run(ScriptedMachine(chunks: ["hello\n"], exit: .exited(0)), limits())
        #expect(outcome == .finished(.passed, exitCode: 0, message: nil))
        #expect(log == "hello\n")
    }

    @Test func aNonZeroExitAfterTheScriptStageIsFailed() async {
        let chunks = ["travis_fold:start:script\n", "$ false\n", "travis_fold:end:script\nThe script stage exited with 1.\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(1)), limits())
        #expect(outcome == .finished(.failed, exitCode: 1, message: nil))
    }

    @Test func markersSplitAcrossChunksAreStillSeen() async {
        let chunks = ["travis_fold:st", "art:scr", "ipt\n$ exit 4\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(4)), limits())
        #expect(outcome == .finished(.failed, exitCode: 4, message: nil))
    }

    @Test func aNonZeroExitBeforeTheScriptStageIsErrored() async {
        let chunks = ["travis_fold:start:install\n", "The command \"x\" failed and exited with 2 during install.\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(2)), limits())
        #expect(outcome == .finished(.errored, exitCode: 2, message: nil))
    }

    @Test func aMarkerInsideALongLineIsNotAMarker() async {
        let long = String(repeating: "x", count: 300) + "travis_fold:start:script\n"
        let (outcome, _) = await run(ScriptedMachine(chunks: [long], exit: .exited(1)), limits())
        #expect(outcome == .finished(.errored, exitCode: 1, message: nil))
    }

    @Test func aKilledBuildIsErroredWithTheSignal() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: [], exit: .signaled(11)), limits())
        #expect(outcome == .finished(.errored, exitCode: 139, message: "The build was killed by signal 11."))
    }

    @Test func theLogIsCutExactlyAtItsLengthLimit() async {
        let chunks = [String(repeating: "a", count: 60), String(repeating: "b", count: 60), "more\n"]
        let (outcome, log) = await run(ScriptedMachine(chunks: chunks, exit: .exited(0), pauseAfterChunks: .seconds(30)), limits(length: 100))
        #expect(log.utf8.count == 100)
        #expect(log.hasSuffix(String(repeating: "b", count: 40)))
        guard case .finished(.errored, _, let message?) = outcome else {
            Issue.record("expected errored, got \(outcome)")
            return
        }
        #expect(message.contains("exceeded the limit of 100 bytes"))
    }

    @Test func aStageOverItsTimeoutIsStopped() async {
        let chunks = ["travis_fold:start:install\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(0), pauseAfterChunks: .seconds(30)), limits(stage: ["install": 1]))
        guard case .finished(.errored, _, let message?) = outcome else {
            Issue.record("expected errored, got \(outcome)")
            return
        }
        #expect(message == "The install stage exceeded its time limit of 1 s, and the build has been terminated.")
    }

    // MARK: - Limits in after_* stages

    static let passedScriptThenAfterScript = ["travis_fold:start:script\ntravis_fold:end:script\nThe script stage exited with 0.\n",
                                              "travis_fold:start:after_script\n"]

    /// after_* commands and their own timeouts never change the result.
    @Test func anAfterStagesOwnTimeoutKeepsTheScriptResult() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: Self.passedScriptThenAfterScript, exit: .exited(0), pauseAfterChunks: .seconds(30)),
                                     limits(stage: ["after_script": 1]))
        #expect(outcome == .finished(.passed, exitCode: 0, message: "The after_script stage exceeded its time limit of 1 s, and the build has been terminated."))
    }

    @Test func anAfterStagesOwnTimeoutKeepsAFailedScriptFailed() async {
        let chunks = ["travis_fold:start:script\ntravis_fold:end:script\nThe script stage exited with 1.\n", "travis_fold:start:after_failure\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(1), pauseAfterChunks: .seconds(30)), limits(stage: ["after_failure": 1]))
        #expect(outcome == .finished(.failed, exitCode: 1, message: "The after_failure stage exceeded its time limit of 1 s, and the build has been terminated."))
    }

    /// The job-level limits end the job errored in any stage, after_* too.
    @Test func theLogLengthInAfterScriptErrorsTheJob() async {
        let chunks = Self.passedScriptThenAfterScript + [String(repeating: "x", count: 500)]
        let (outcome, log) = await run(ScriptedMachine(chunks: chunks, exit: .exited(0), pauseAfterChunks: .seconds(30)), limits(length: 200))
        #expect(log.utf8.count == 200)
        #expect(outcome == .finished(.errored, exitCode: 137, message:
            "The log length has exceeded the limit of 200 bytes (this usually means the build produced excessive output). The build has been terminated."))
    }

    @Test func theHardLimitInAfterScriptErrorsTheJob() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: Self.passedScriptThenAfterScript, exit: .exited(0), pauseAfterChunks: .seconds(30)),
                                     limits(hard: 1, stage: ["after_script": 20]))
        #expect(outcome == .finished(.errored, exitCode: 137, message: "The job exceeded the maximum time limit for jobs (1 s), and has been terminated."))
    }

    @Test func logSilenceInAfterScriptErrorsTheJob() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: Self.passedScriptThenAfterScript, exit: .exited(0), pauseAfterChunks: .seconds(30)),
                                     limits(silence: 1, stage: ["after_script": 20]))
        #expect(outcome == .finished(.errored, exitCode: 137, message:
            "No output has been received in the last 1 seconds, this potentially indicates a stalled build or something wrong with the build itself. The build has been terminated."))
    }

    /// The after_* result rule needs the script stage's result: a timeout of an after_* stage the
    /// build reached without one (a broken script) errors the job like any other limit.
    @Test func anAfterStageTimeoutWithoutAScriptResultErrorsTheJob() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: ["travis_fold:start:after_script\n"], exit: .exited(0), pauseAfterChunks: .seconds(30)),
                                     limits(stage: ["after_script": 1]))
        #expect(outcome == .finished(.errored, exitCode: 137, message: "The after_script stage exceeded its time limit of 1 s, and the build has been terminated."))
    }

    @Test func silenceStopsTheBuild() async {
        let (outcome, _) = await run(ScriptedMachine(chunks: ["one line\n"], exit: .exited(0), pauseAfterChunks: .seconds(30)), limits(silence: 1))
        guard case .finished(.errored, _, let message?) = outcome else {
            Issue.record("expected errored, got \(outcome)")
            return
        }
        #expect(message.hasPrefix("No output has been received in the last 1 seconds"))
    }

    @Test func aMachineFailureIsAnInfrastructureError() async {
        var machine = ScriptedMachine(chunks: [], exit: .exited(0))
        machine.failure = "ssh: connection refused"
        let (outcome, _) = await run(machine, limits())
        #expect(outcome == .infrastructure("ssh: connection refused"))
    }

    @Test func cancellationInterruptsTheBuild() async {
        let task = Task { await run(ScriptedMachine(chunks: ["x\n"], exit: .exited(0), pauseAfterChunks: .seconds(30)), limits()) }
        try? await Task.sleep(for: .milliseconds(200))
        task.cancel()
        let (outcome, _) = await task.value
        #expect(outcome == .interrupted)
    }

    // MARK: - Limits whoever wins the race

    /// The build exits the moment it has printed: the 100 ms watchdog never gets a look.
    @Test func aCutLogErrorsTheJobEvenWhenTheBuildExitsFirst() async {
        let chunks = [String(repeating: "x", count: 5000), "the end\n"]
        let (outcome, log) = await run(ScriptedMachine(chunks: chunks, exit: .exited(0)), limits(length: 1000))
        #expect(log.utf8.count == 1000)
        guard case .finished(.errored, 0, let message?) = outcome else {
            Issue.record("expected errored, got \(outcome)")
            return
        }
        #expect(message.contains("exceeded the limit of 1000 bytes"))
    }

    /// A machine that prints, then exits after `exitAfter`: a build that ends on its own just
    /// after a time limit elapsed, while the watchdog (looking every 10 s here) has not looked
    /// since the start. Only the re-check when the build exits can see the limit.
    struct ExitsAfter: Machine {
        let name = "worker-1"
        var chunks: [String]
        var exitAfter: Duration

        func prepare() async throws(InfrastructureError) {}
        func release() async throws(InfrastructureError) {}

        func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
            for chunk in chunks { await output(Array(chunk.utf8)) }
            // Not cancellable: the build is past the limit and exits whatever the watchdog does.
            let until = ContinuousClock.now + exitAfter
            while ContinuousClock.now < until { try? await Task.sleep(until: until) }
            return .exited(0)
        }
    }

    func run(_ machine: ExitsAfter, _ limits: BuildLimits) async -> BuildOutcome {
        await BuildRun.execute(machine: machine, script: "", jobID: "j", limits: limits, lookEvery: .seconds(10)) { _ in }
    }

    @Test func theHardLimitErrorsTheJobEvenWhenTheBuildExitsFirst() async {
        let chunks = ["travis_fold:start:script\n", "working\n"]
        let outcome = await run(ExitsAfter(chunks: chunks, exitAfter: .milliseconds(1200)), limits(hard: 1))
        #expect(outcome == .finished(.errored, exitCode: 0, message: "The job exceeded the maximum time limit for jobs (1 s), and has been terminated."))
    }

    @Test func logSilenceErrorsTheJobEvenWhenTheBuildExitsFirst() async {
        let chunks = ["travis_fold:start:script\n", "working\n"]
        let outcome = await run(ExitsAfter(chunks: chunks, exitAfter: .milliseconds(1200)), limits(silence: 1))
        #expect(outcome == .finished(.errored, exitCode: 0, message:
            "No output has been received in the last 1 seconds, this potentially indicates a stalled build or something wrong with the build itself. The build has been terminated."))
    }

    /// The same race in after_script: the job-level limits still error the job.
    @Test func theHardLimitInAfterScriptErrorsTheJobEvenWhenTheBuildExitsFirst() async {
        let outcome = await run(ExitsAfter(chunks: Self.passedScriptThenAfterScript, exitAfter: .milliseconds(1200)), limits(hard: 1))
        #expect(outcome == .finished(.errored, exitCode: 0, message: "The job exceeded the maximum time limit for jobs (1 s), and has been terminated."))
    }

    @Test func logSilenceInAfterScriptErrorsTheJobEvenWhenTheBuildExitsFirst() async {
        let outcome = await run(ExitsAfter(chunks: Self.passedScriptThenAfterScript, exitAfter: .milliseconds(1200)), limits(silence: 1))
        #expect(outcome == .finished(.errored, exitCode: 0, message:
            "No output has been received in the last 1 seconds, this potentially indicates a stalled build or something wrong with the build itself. The build has been terminated."))
    }
}
