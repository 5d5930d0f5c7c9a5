import Foundation
import Testing
@testable import TWorkerCore

/// `WorkerControlState` without Redis, machines or processes: each test drives signals, the
/// job's steps and outcomes, and reads the decisions.
@Suite struct WorkerControlStateTests {
    let t0 = ContinuousClock.now

    /// A worker holding job `id` whose build runs.
    func building(_ id: String = "job-1", maxConsecutiveFailures: Int = 3) -> WorkerControlState {
        var state = WorkerControlState(maxConsecutiveFailures: maxConsecutiveFailures)
        state.jobTaken(id)
        #expect(state.buildMayStart)
        let stopAtOnce = state.buildStarted()
        #expect(!stopAtOnce)
        return state
    }

    func logs(_ effects: [WorkerEffect]) -> [String] {
        effects.compactMap { if case .log(_, let message) = $0 { message } else { nil } }
    }

    // MARK: - Signals

    @Test func termDuringABuildStopsItAndRequeuesTheJob() {
        var state = building()
        let effects = state.received(.stopNow("SIGTERM"))
        #expect(effects == [.log(.info, "SIGTERM: stopping the build and requeueing its job"), .cancelBuild])
        #expect(state.stop == .immediate)
        let conclusion = state.conclude(.interrupted)
        #expect(conclusion.ending == .requeued(.stop))
        #expect(conclusion.afterwards == .idle)
        #expect(conclusion.quarantineAfter == nil)
        #expect(state.interruption == nil, "taken by the conclusion")
    }

    @Test func termWhileIdleStopsTheLoopWithNothingToCancel() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        #expect(state.received(.stopNow("SIGINT")) == [.log(.info, "SIGINT: stopping the build and requeueing its job")])
        #expect(state.stop == .immediate)
    }

    @Test func aSecondTermOrIntExitsAtOnce() {
        var state = building()
        _ = state.received(.stopNow("SIGTERM"))
        let again = state.received(.stopNow("SIGINT"))
        #expect(again == [.log(.warning, "second SIGINT: exiting at once; the job stays in the processing list for recovery"), .exit(1)])
    }

    @Test func aStopRequestedOtherwiseDoesNotCountAsASignal() {
        var state = building()
        #expect(state.requestStop(.immediate) == [.cancelBuild])
        #expect(!state.received(.stopNow("SIGTERM")).contains(.exit(1)))
    }

    @Test func quitLetsTheBuildFinishThenStops() {
        var state = building()
        let effects = state.received(.finishThenExit)
        #expect(effects == [.log(.info, "SIGQUIT: finishing the current job, then exiting")])
        #expect(state.stop == .graceful)
        #expect(state.interruption == nil)
        let conclusion = state.conclude(.finished(.passed, exitCode: 0, message: nil))
        #expect(conclusion.ending == .finished(.passed, exitCode: 0, message: nil))
    }

    @Test func termAfterQuitStillStopsTheBuildAndQuitNeverWeakensAStop() {
        var state = building()
        _ = state.received(.finishThenExit)
        #expect(state.received(.stopNow("SIGTERM")).contains(.cancelBuild))
        #expect(state.stop == .immediate)
        _ = state.received(.finishThenExit)
        #expect(state.stop == .immediate)
    }

    @Test func usr1AbortsTheJobWhichIsRequeuedAndTheWorkerGoesOn() {
        var state = building()
        let effects = state.received(.abortJob)
        #expect(effects == [.log(.info, "SIGUSR1: aborting the running job (requeued at the head); going on"), .cancelBuild])
        #expect(state.stop == .none)
        #expect(state.conclude(.interrupted).ending == .requeued(.abort))
        state.jobLeft()
        state.jobTaken("job-2")
        #expect(state.buildMayStart, "the abort applied to the previous job only")
    }

    @Test func usr1WithNoJobDoesNothing() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        #expect(!state.received(.abortJob).contains(.cancelBuild))
        state.jobTaken("job-1")
        #expect(state.buildMayStart)
    }

    @Test func pauseAndResume() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        #expect(state.received(.pause) == [.log(.info, "SIGUSR2: paused, taking no new jobs")])
        #expect(state.paused)
        #expect(state.received(.resume) == [.log(.info, "SIGCONT: resumed")])
        #expect(!state.paused)
        #expect(WorkerControlState(maxConsecutiveFailures: 3, paused: true).paused)
    }

    @Test func pausingDoesNotTouchTheRunningBuild() {
        var state = building()
        #expect(!state.received(.pause).contains(.cancelBuild))
        #expect(state.conclude(.finished(.failed, exitCode: 1, message: nil)).ending == .finished(.failed, exitCode: 1, message: nil))
    }

    // MARK: - Cancel

    @Test func aCancelOfTheJobInHandEndsItCancelled() {
        var state = building()
        #expect(state.cancel(jobID: "job-1", reason: "by alice") == [.cancelBuild])
        #expect(state.conclude(.interrupted).ending == .cancelled("by alice"))
    }

    @Test func aCancelOfAnotherJobIsIgnored() {
        var state = building()
        #expect(state.cancel(jobID: "job-2", reason: "by alice").isEmpty)
        #expect(state.interruption == nil)
    }

    @Test func aCancelBeforeTheBuildStartsKeepsItFromStarting() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        state.jobTaken("job-1")
        _ = state.cancel(jobID: "job-1", reason: "cancelled")
        #expect(!state.buildMayStart)
        #expect(state.conclude(.interrupted).ending == .cancelled("cancelled"))
    }

    @Test func aStopNotedBeforeTheBuildIsRegisteredStopsItAtOnce() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        state.jobTaken("job-1")
        #expect(state.buildMayStart)
        _ = state.requestStop(.immediate)
        let stopAtOnce = state.buildStarted()
        #expect(stopAtOnce, "registered after the stop: cancelled at once")
        #expect(state.conclude(.interrupted).ending == .requeued(.stop))
    }

    @Test func aStopOutranksAnAbortOrACancel() {
        var state = building()
        _ = state.received(.stopNow("SIGTERM"))
        _ = state.received(.abortJob)
        _ = state.cancel(jobID: "job-1", reason: "late")
        #expect(state.interruption == .stop)
        #expect(state.conclude(.interrupted).ending == .requeued(.stop))
    }

    @Test func aCancelAfterAnAbortWins() {
        var state = building()
        _ = state.abortJob()
        _ = state.cancel(jobID: "job-1", reason: "by bob")
        #expect(state.conclude(.interrupted).ending == .cancelled("by bob"))
    }

    @Test func takingAJobForgetsThePreviousJobsInterruption() {
        var state = building()
        _ = state.abortJob()
        state.jobLeft()
        #expect(state.cancel(jobID: "job-1", reason: "too late").isEmpty, "the job settled")
        state.jobTaken("job-2")
        #expect(state.interruption == nil)
    }

    @Test func anInterruptedBuildWithNothingNotedIsAStop() {
        var state = building()
        #expect(state.conclude(.interrupted).ending == .requeued(.stop))
    }

    // MARK: - Quarantine

    @Test func quarantineAfterMaxConsecutiveInfrastructureFailures() {
        var state = building(maxConsecutiveFailures: 3)
        let first = state.conclude(.infrastructure("VBoxManage failed"))
        #expect(first == JobConclusion(ending: .retryElsewhere("VBoxManage failed"), afterwards: .idle,
                                       lastError: "VBoxManage failed", quarantineAfter: nil))
        #expect(state.conclude(.infrastructure("again")).quarantineAfter == nil)
        let third = state.conclude(.infrastructure("ssh refused"))
        #expect(third.quarantineAfter == 3)
        #expect(third.afterwards == .broken)
        #expect(state.isBroken)
        // Each further failure rewrites the quarantine with its error.
        #expect(state.infrastructureFailed() == 4)
    }

    @Test func aFinishedBuildResetsTheCountButAnInterruptionDoesNot() {
        var state = building(maxConsecutiveFailures: 2)
        _ = state.conclude(.infrastructure("one"))
        _ = state.conclude(.interrupted)
        #expect(state.consecutiveFailures == 1)
        _ = state.conclude(.finished(.failed, exitCode: 1, message: nil))
        #expect(state.consecutiveFailures == 0)
        #expect(state.conclude(.infrastructure("two")).quarantineAfter == nil)
    }

    @Test func aFailedMachineResetCountsTowardsTheQuarantine() {
        var state = building(maxConsecutiveFailures: 2)
        _ = state.conclude(.infrastructure("prepare failed"))
        #expect(state.infrastructureFailed() == 2, "the release after the job failed too")
        #expect(state.isBroken)
    }

    @Test func clearingTheQuarantineStartsTheCountAgain() {
        var state = WorkerControlState(maxConsecutiveFailures: 1)
        #expect(state.infrastructureFailed() == 1)
        state.quarantineCleared()
        #expect(!state.isBroken)
        #expect(state.conclude(.finished(.passed, exitCode: 0, message: nil)).afterwards == .idle)
    }

    // MARK: - Stepping back

    @Test func stepsBackFromAJobAtMostMaxStepBacksTimes() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        for _ in 0..<WorkerControlState.maxStepBacks {
            #expect(state.mayStepBack(from: "job-1"))
            state.steppedBack(from: "job-1")
        }
        #expect(!state.mayStepBack(from: "job-1"))
        #expect(state.mayStepBack(from: "job-2"), "counted per job")
    }

    @Test func stepBackCountsAreForgottenPastTheirMemory() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        for _ in 0..<WorkerControlState.maxStepBacks { state.steppedBack(from: "old") }
        for number in 0...WorkerControlState.stepBackMemory { state.steppedBack(from: "job-\(number)") }
        #expect(state.mayStepBack(from: "old"))
    }

    // MARK: - Maintenance and drain

    @Test func maintenanceIsReCheckedAfterItsIntervalAndChangesAreReported() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        #expect(state.knownHold(at: t0) == nil, "never checked")
        let changes = [(false, 0), (true, 300), (true, 600), (false, 900)].map { held, ms in
            let changed = state.holdChecked(maintenance: held, drained: false, at: t0 + .milliseconds(ms))
            return (changed, state.knownHold(at: t0 + .milliseconds(ms + 100)), state.knownHold(at: t0 + .milliseconds(ms + 250)))
        }
        // Entering and leaving maintenance are reported; a look trusted for 250 ms, then stale.
        #expect(changes.map(\.0) == [false, true, false, true])
        #expect(changes.map(\.1) == [WorkerHold.none, .maintenance, .maintenance, WorkerHold.none])
        #expect(changes.allSatisfy { $0.2 == nil })
        #expect(state.hold == .none)
    }

    @Test func aDrainHoldsTheWorkerAndMaintenanceWinsOverIt() {
        var state = WorkerControlState(maxConsecutiveFailures: 3)
        let steps: [(maintenance: Bool, drained: Bool)] = [(false, true), (true, true), (false, true), (false, false)]
        let seen = steps.enumerated().map { index, step in
            let changed = state.holdChecked(maintenance: step.maintenance, drained: step.drained, at: t0 + .seconds(index))
            return (changed, state.hold, state.hold.heartbeatState)
        }
        #expect(seen.map(\.0) == [true, true, true, true])
        #expect(seen.map(\.1) == [.draining, .maintenance, .draining, WorkerHold.none])
        // A rebuild waits for `maintenance` in the heartbeat, so a drained host's rebuild still proceeds.
        #expect(seen.map(\.2) == [.draining, .maintenance, .draining, .idle])
    }
}

@Suite struct MaintenanceHoldTests {
    @Test func aHoldSurvivesItsOwnEncodingAndAnOlderFormatIsNotParsed() {
        let hold = MaintenanceHold(pid: 4321, startTime: 98765, since: "2026-12-06T19:00:00Z", changing: true)
        #expect(MaintenanceHold(parsing: hold.encoded) == hold)
        #expect(MaintenanceHold(parsing: "4321 2026-12-06T19:00:00Z") == nil, "an older tworker's hold is kept as it is")
        #expect(MaintenanceHold(parsing: "pid=0 start=1 since=x phase=waiting") == nil)
        #expect(MaintenanceHold(parsing: "pid=12 start=1 since=x phase=later") == nil)
    }

    @Test func theHolderIsGoneWhenItsPidIsFreeOrBelongsToAnotherProcess() {
        let hold = MaintenanceHold(pid: 4321, startTime: 500, since: "", changing: false)
        #expect(!hold.holderIsGone(startTimeOf: { _ in 500 }, isAlive: { _ in true }))
        #expect(hold.holderIsGone(startTimeOf: { _ in 500 }, isAlive: { _ in false }))
        #expect(hold.holderIsGone(startTimeOf: { _ in 777 }, isAlive: { _ in true }), "a reused pid is not the holder")
        #expect(!MaintenanceHold.ofThisProcess(changing: false).holderIsGone(), "this process holds its own")
    }
}
