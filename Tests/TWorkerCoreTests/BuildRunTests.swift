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
    func run(_ machine: ScriptedMachine, _ limits: BuildLimits) async -> (BuildOutcome, String) {
        let log = Collected()
        let outcome = await BuildRun.execute(machine: machine, script: "", jobID: "j", limits: limits) { chunk in
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

    @Test func aLimitHitInAnAfterStageKeepsTheScriptResult() async {
        let chunks = ["travis_fold:start:script\ntravis_fold:end:script\nThe script stage exited with 0.\n", "travis_fold:start:after_script\n"]
        let (outcome, _) = await run(ScriptedMachine(chunks: chunks, exit: .exited(0), pauseAfterChunks: .seconds(30)), limits(stage: ["after_script": 1]))
        guard case .finished(.passed, 0, let message?) = outcome else {
            Issue.record("expected passed, got \(outcome)")
            return
        }
        #expect(message.contains("after_script stage exceeded"))
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
}
