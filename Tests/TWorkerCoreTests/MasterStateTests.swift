import Foundation
import Testing
@testable import TWorkerCore

/// `MasterState.reduce` without processes or clocks: each test drives events and reads the effects.
@Suite struct MasterStateTests {
    let t0 = ContinuousClock.now
    static let limits = MasterState.Limits(workerMemoryMiB: 100, hardLimitSeconds: 300, stuckGrace: .seconds(60))

    /// A pool of `count` running children with pids 100 + N, ready or not.
    func pool(_ count: Int, ready: Bool = true) -> MasterState {
        var state = MasterState(masterPID: 1, limits: Self.limits)
        let boot = state.reduce(.boot(count: count), now: t0)
        #expect(boot == (1...count).map { .spawn(number: $0, generation: 1, paused: false) })
        for number in 1...count {
            _ = state.reduce(.started(number: number, generation: 1, pid: pid(number)), now: t0)
            if ready { _ = state.reduce(.ready(number: number, pid: pid(number)), now: t0) }
        }
        return state
    }

    func pid(_ number: Int, generation: Int = 1) -> pid_t { pid_t(100 * generation + number) }

    func logs(_ effects: [MasterEffect]) -> [String] {
        effects.compactMap { if case .log(_, let message, _) = $0 { message } else { nil } }
    }

    func signals(_ effects: [MasterEffect]) -> [MasterEffect] {
        effects.filter { if case .signal = $0 { true } else { false } }
    }

    @Test func aCrashRestartsAtOnceThenBacksOffWithATimer() {
        var state = pool(1)
        let first = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 1"), now: t0 + .seconds(2))
        #expect(first.contains(.spawn(number: 1, generation: 2, paused: false)))
        #expect(first.contains(.forgetHeartbeat(vm: "worker-1", pid: 101)))
        #expect(first.contains(.killBuildGroup(vm: "worker-1")))
        #expect(logs(first) == ["worker-1 (pid 101) exited with status 1 unexpectedly; restarting it"])

        _ = state.reduce(.started(number: 1, generation: 2, pid: 201), now: t0 + .seconds(2))
        let second = state.reduce(.exited(number: 1, generation: 2, description: "exited with status 1"), now: t0 + .seconds(3))
        #expect(second.contains(.scheduleTimer(at: t0 + .seconds(4))))
        #expect(!second.contains { if case .spawn = $0 { true } else { false } })
        #expect(logs(second).last?.contains("(2 times in a row); restarting it in 1.0 seconds") == true, "\(logs(second))")
        #expect(state.slots[1]?.state == .backingOff(until: t0 + .seconds(4)))
        #expect(state.slots[1]?.note == "exited 2 times in a row")

        #expect(state.reduce(.tick, now: t0 + .milliseconds(3500)).isEmpty, "not due yet")
        #expect(state.reduce(.tick, now: t0 + .seconds(4)) == [.spawn(number: 1, generation: 3, paused: false)])
        #expect(state.slots[1]?.note == nil)
    }

    @Test func anExitOfAnEarlierGenerationIsIgnored() {
        var state = pool(1)
        _ = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 1"), now: t0)
        #expect(state.reduce(.exited(number: 1, generation: 1, description: "again"), now: t0).isEmpty)
        #expect(state.slots[1]?.state == .starting)
    }

    @Test func quitStopsGracefullyAndFinishesWhenTheLastChildExits() {
        var state = pool(2)
        let quit = state.reduce(.signal(SIGQUIT), now: t0)
        #expect(signals(quit) == [.signal(pid: 101, SIGQUIT), .signal(pid: 102, SIGQUIT)])
        #expect(logs(quit) == ["SIGQUIT: stopping gracefully: the workers finish their jobs, then exit"])
        let one = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 0"), now: t0)
        #expect(!one.contains(.finish(0)))
        #expect(!one.contains { if case .spawn = $0 { true } else { false } }, "no restart while stopping")
        #expect(logs(one) == ["worker-1 (pid 101) exited with status 0"])
        let two = state.reduce(.exited(number: 2, generation: 1, description: "exited with status 0"), now: t0)
        #expect(two.last == .finish(0))
        #expect(state.finished == 0)
    }

    @Test func termStopsNowAndASecondTermKillsEverythingAndExitsOne() {
        var state = pool(2)
        let term = state.reduce(.signal(SIGTERM), now: t0)
        #expect(signals(term) == [.signal(pid: 101, SIGTERM), .signal(pid: 102, SIGTERM)])
        #expect(logs(term) == ["stopping now: the workers stop their builds and requeue the jobs"])
        let again = state.reduce(.signal(SIGINT), now: t0)
        #expect(again.contains(.killTree(pid: 101)) && again.contains(.killTree(pid: 102)))
        #expect(again.contains(.forgetHeartbeat(vm: "worker-1", pid: 101)) && again.contains(.forgetHeartbeat(vm: "worker-2", pid: 102)),
                "no exit is waited for: the master forgets the killed workers itself")
        #expect(again.contains(.stopMachine(vm: "worker-1")) && again.contains(.stopMachine(vm: "worker-2")),
                "killed workers cannot stop their VMs: the master does")
        #expect(again.last == .finish(1))
        #expect(state.finished == 1)
    }

    @Test func aStopWithNothingRunningFinishesAtOnce() {
        var state = MasterState(masterPID: 1, limits: Self.limits)
        #expect(state.reduce(.signal(SIGQUIT), now: t0).last == .finish(0))
    }

    @Test func aChildStartedDuringAStopIsTermedAndStillAwaited() {
        var state = MasterState(masterPID: 1, limits: Self.limits)
        _ = state.reduce(.boot(count: 1), now: t0)
        let quit = state.reduce(.signal(SIGQUIT), now: t0)
        #expect(!quit.contains(.finish(0)), "the starting child will exit")
        let started = state.reduce(.started(number: 1, generation: 1, pid: 101), now: t0)
        #expect(started.contains(.signal(pid: 101, SIGTERM)))
        #expect(state.reduce(.exited(number: 1, generation: 1, description: "exited with status 0"), now: t0).last == .finish(0))
    }

    @Test func hupReplacesEveryChildAfterItsJobAndResizes() {
        var state = pool(3)
        #expect(state.reduce(.signal(SIGHUP), now: t0) == [.reloadConfig])
        let reloaded = state.reduce(.configReloaded(count: 2, limits: Self.limits), now: t0)
        #expect(signals(reloaded) == [.signal(pid: 101, SIGQUIT), .signal(pid: 102, SIGQUIT), .signal(pid: 103, SIGQUIT)])
        #expect(state.slots[1]?.note == "restarting after its job")
        #expect(state.slots[3]?.note == "retiring after its job")
        let replaced = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 0"), now: t0)
        #expect(replaced.contains(.spawn(number: 1, generation: 2, paused: false)))
        #expect(logs(replaced) == ["worker-1 (pid 101) exited with status 0; starting its replacement"])
        let retired = state.reduce(.exited(number: 3, generation: 1, description: "exited with status 0"), now: t0)
        #expect(logs(retired) == ["worker-3 (pid 103) exited with status 0; removed"])
        #expect(state.slots[3] == nil)
    }

    @Test func ttouRetiresTheHighestAndTtinAddsOne() {
        var state = pool(2)
        let shrink = state.reduce(.signal(SIGTTOU), now: t0)
        #expect(logs(shrink) == ["TTOU: stopping worker-2 after its job"])
        #expect(signals(shrink) == [.signal(pid: 102, SIGQUIT)])
        #expect(logs(state.reduce(.signal(SIGTTOU), now: t0)) == ["TTOU: stopping worker-1 after its job"])
        #expect(logs(state.reduce(.signal(SIGTTOU), now: t0)) == ["TTOU: no worker left to stop"])
        let grow = state.reduce(.signal(SIGTTIN), now: t0)
        #expect(grow.contains(.spawn(number: 3, generation: 1, paused: false)))
    }

    @Test func pauseSignalsReadyChildrenAndDeliversToTheOthersWhenReady() {
        var state = pool(2, ready: false)
        _ = state.reduce(.ready(number: 1, pid: 101), now: t0)
        let pause = state.reduce(.signal(SIGUSR2), now: t0)
        #expect(signals(pause) == [.signal(pid: 101, SIGUSR2)], "worker-2 has no handlers yet")
        #expect(state.reduce(.ready(number: 2, pid: 102), now: t0).contains(.signal(pid: 102, SIGUSR2)))
        #expect(signals(state.reduce(.signal(SIGCONT), now: t0)) == [.signal(pid: 101, SIGCONT), .signal(pid: 102, SIGCONT)])
        #expect(!state.paused)
    }

    @Test func aChildStartedWhileThePoolIsPausedStartsPaused() {
        var state = pool(1)
        _ = state.reduce(.signal(SIGUSR2), now: t0)
        let restart = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 1"), now: t0 + .seconds(5))
        #expect(restart.contains(.spawn(number: 1, generation: 2, paused: true)))
    }

    @Test func aNotReadyChildIsStoppedWithTermNotQuit() {
        var state = pool(2, ready: false)
        _ = state.reduce(.ready(number: 1, pid: 101), now: t0)
        #expect(signals(state.reduce(.signal(SIGQUIT), now: t0)) == [.signal(pid: 101, SIGQUIT), .signal(pid: 102, SIGTERM)])
    }

    @Test func anOperatorHoldsAWorkerUntilRestart() {
        var state = pool(2)
        let stop = state.reduce(.control(ControlRequest(command: .stop, worker: "worker-2")), now: t0)
        #expect(stop.contains(.signal(pid: 102, SIGQUIT)))
        #expect(stop.last == .reply(ControlResponse(ok: true, message: "worker-2: stopping after its job; `tworker restart worker-2` starts it again")))
        let exit = state.reduce(.exited(number: 2, generation: 1, description: "exited with status 0"), now: t0)
        #expect(logs(exit) == ["worker-2 (pid 102) exited with status 0; stopped until `tworker restart worker-2`"])
        #expect(state.slots[2]?.state == .held)
        #expect(state.reduce(.tick, now: t0 + .seconds(120)).isEmpty)
        let again = state.reduce(.control(ControlRequest(command: .stop, worker: "worker-2")), now: t0)
        #expect(again == [.reply(ControlResponse(ok: true, message: "worker-2 is already stopped"))])
        let restart = state.reduce(.control(ControlRequest(command: .restart, worker: "worker-2")), now: t0)
        #expect(restart.first == .spawn(number: 2, generation: 2, paused: false))
    }

    @Test func controlRefusesAnUnknownWorkerAndAnyCommandWhileStopping() {
        var state = pool(1)
        let unknown = state.reduce(.control(ControlRequest(command: .pause, worker: "worker-9")), now: t0)
        #expect(unknown == [.reply(.failure("no worker worker-9 in this master (workers: worker-1)"))])
        _ = state.reduce(.signal(SIGQUIT), now: t0)
        let late = state.reduce(.control(ControlRequest(command: .restart)), now: t0)
        #expect(late == [.reply(.failure("the master (pid 1) is stopping"))])
    }

    @Test func controlStopNowTermsEveryChild() {
        var state = pool(2)
        let stop = state.reduce(.control(ControlRequest(command: .stop, now: true)), now: t0)
        #expect(signals(stop) == [.signal(pid: 101, SIGTERM), .signal(pid: 102, SIGTERM)])
        #expect(stop.last == .reply(ControlResponse(ok: true, message: "master 1: stopping now (TERM): builds are stopped and their jobs requeued")))
    }

    @Test func memoryOverTheLimitTwiceInARowReplacesAfterTheJob() {
        var state = pool(1)
        let over = 200 * 1024
        #expect(state.reduce(.memorySample(number: 1, pid: 101, rssKiB: over), now: t0).isEmpty, "one spike is not enough")
        let second = state.reduce(.memorySample(number: 1, pid: 101, rssKiB: over), now: t0)
        #expect(signals(second) == [.signal(pid: 101, SIGQUIT)])
        #expect(logs(second).first?.contains("uses 200 MiB, above limits.worker_memory (100 MiB) twice in a row") == true)
        #expect(state.slots[1]?.note == "replaced after its job: memory")
        let exit = state.reduce(.exited(number: 1, generation: 1, description: "exited with status 0"), now: t0)
        #expect(exit.contains(.spawn(number: 1, generation: 2, paused: false)))
    }

    @Test func aStuckJobKillsItsWorkerOnce() {
        var state = pool(1)
        let stuck = MasterEvent.stuck(number: 1, pid: 101, job: "j1", elapsed: .seconds(400))
        let first = state.reduce(stuck, now: t0)
        #expect(first.contains(.killTree(pid: 101)))
        #expect(logs(first).first?.contains("job j1 has run 400.0 s, past timeouts.hard_limit (300 s) + 60.0 s grace") == true)
        #expect(state.reduce(stuck, now: t0).isEmpty, "already killed")
        #expect(state.reduce(.exited(number: 1, generation: 1, description: "was killed by SIGKILL"), now: t0)
            .contains(.spawn(number: 1, generation: 2, paused: false)))
    }

    @Test func aWatchdogVerdictAboutAnEarlierProcessIsIgnored() {
        var state = pool(1)
        #expect(state.reduce(.stuck(number: 1, pid: 999, job: "j1", elapsed: .seconds(400)), now: t0).isEmpty)
        #expect(state.reduce(.ready(number: 1, pid: 999), now: t0).isEmpty)
    }
}
