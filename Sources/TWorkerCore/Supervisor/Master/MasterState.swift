import Foundation
import Logging

/// Where one worker slot's child is in its life.
enum SlotState: Equatable, Sendable {
    /// Nothing runs and nothing is scheduled (only while the pool stops, or before its first start).
    case idle
    /// Launched; its pid is not known yet.
    case starting
    /// Running; `ready` once its heartbeat shows its pid (its signal handlers are installed).
    case running(pid: pid_t, ready: Bool)
    /// Exited unexpectedly again: restarted at `until`.
    case backingOff(until: ContinuousClock.Instant)
    /// `tworker stop worker-N`: not restarted until `tworker restart`.
    case held
}

/// What happens when a child exits.
enum AfterExit: Equatable, Sendable {
    /// It was not asked to: restart it, with backoff if it keeps dying.
    case restart
    /// A graceful restart (HUP, `tworker restart`, memory, stuck): start a replacement at once.
    case replace
    /// TTOU or a smaller `vms.count`: the slot goes.
    case remove
    /// `tworker stop worker-N`: not restarted until `tworker restart`.
    case hold
}

/// Something the master learnt: from a signal, a child, the control socket, a watchdog or a timer.
enum MasterEvent: Equatable, Sendable {
    /// The first children, one per VM.
    case boot(count: Int)
    case started(number: Int, generation: Int, pid: pid_t)
    case exited(number: Int, generation: Int, description: String)
    case signal(Int32)
    /// Any command but `status`, which reads and changes nothing.
    case control(ControlRequest)
    /// A backoff timer fired.
    case tick
    /// The child's heartbeat carries its pid.
    case ready(number: Int, pid: pid_t)
    /// The job a live heartbeat of this child shows (nil: none).
    case jobSeen(number: Int, pid: pid_t, job: String?)
    /// One resident-memory reading of a child (nil: unreadable).
    case memorySample(number: Int, pid: pid_t, rssKiB: Int?)
    /// The child's job ran past `timeouts.hard_limit` + grace.
    case stuck(number: Int, pid: pid_t, job: String, elapsed: Duration)
    /// HUP: the config loaded and passed every check.
    case configReloaded(count: Int, limits: MasterState.Limits)
}

/// What the master must do; `MasterState.reduce` only decides.
enum MasterEffect: Equatable, Sendable {
    case spawn(number: Int, generation: Int, paused: Bool)
    case signal(pid: pid_t, Int32)
    /// SIGKILL to the child and its builds.
    case killTree(pid: pid_t)
    /// A killed worker leaves its heartbeat behind; its master knows it is gone. Written before
    /// the master's `run()` returns.
    case forgetHeartbeat(vm: String, pid: pid_t)
    /// A killed worker's local build runs on in its own session: it dies with its worker.
    case killBuildGroup(vm: String)
    /// A worker killed on the way out cannot stop its VM (a qemu process): the master does, last.
    case stopMachine(vm: String)
    /// `tworker_worker_restarts_total{reason}`: crash (it exited unasked), memory, stuck.
    case countRestart(vm: String, reason: String)
    case log(Logger.Level, String, metadata: [String: String] = [:])
    /// Deliver `.tick` at this instant.
    case scheduleTimer(at: ContinuousClock.Instant)
    /// HUP: load and check the config, then report `.configReloaded`.
    case reloadConfig
    case reply(ControlResponse)
    /// Every child is gone (or the second TERM): `run()` returns this code.
    case finish(Int32)
}

/// The master's bookkeeping and its decisions, without processes, clocks or I/O: every event
/// comes in with the time, every action goes out as an effect.
struct MasterState: Sendable {
    /// The config values the decisions need (reloaded on HUP).
    struct Limits: Equatable, Sendable {
        var workerMemoryMiB: Int?
        var hardLimitSeconds: Int
        var stuckGrace: Duration

        init(workerMemoryMiB: Int?, hardLimitSeconds: Int, stuckGrace: Duration) {
            self.workerMemoryMiB = workerMemoryMiB
            self.hardLimitSeconds = hardLimitSeconds
            self.stuckGrace = stuckGrace
        }
    }

    struct Slot: Equatable, Sendable {
        let number: Int
        var state = SlotState.idle
        var generation = 0
        var startedAt: ContinuousClock.Instant?
        var afterExit = AfterExit.restart
        var paused = false
        var backoff = RestartBackoff()
        var note: String?
        var lastExit: String?
        /// The job its heartbeat last showed, kept when the heartbeat expires (a wedged worker
        /// stops beating): the stuck watchdog's subject.
        var watchedJob: String?

        init(number: Int) { self.number = number }

        var vm: String { "worker-\(number)" }
        var pid: pid_t? { if case .running(let pid, _) = state { pid } else { nil } }
        var ready: Bool { if case .running(_, true) = state { true } else { false } }
        /// Starting or running: an exit is still to come.
        var launched: Bool {
            switch state {
            case .starting, .running: true
            case .idle, .backingOff, .held: false
            }
        }
        var held: Bool { state == .held }
        var restartAt: ContinuousClock.Instant? { if case .backingOff(let until) = state { until } else { nil } }
    }

    let masterPID: pid_t
    private(set) var slots: [Int: Slot] = [:]
    private(set) var stopping = StopRequest.none
    private(set) var paused = false
    private(set) var finished: Int32?
    private(set) var limits: Limits
    private var immediateSignals = 0
    private var memory: MemoryWatchdog

    init(masterPID: pid_t, limits: Limits) {
        self.masterPID = masterPID
        self.limits = limits
        memory = MemoryWatchdog(limitMiB: limits.workerMemoryMiB)
    }

    var watchesMemory: Bool { memory.limitKiB != nil }

    private var ordered: [Slot] { slots.values.sorted { $0.number < $1.number } }
    var isStopping: Bool { stopping != .none }

    /// Applies one event at `now` and returns what to do, in order.
    mutating func reduce(_ event: MasterEvent, now: ContinuousClock.Instant) -> [MasterEffect] {
        var effects: [MasterEffect] = []
        switch event {
        case .boot(let count):
            for number in stride(from: 1, through: count, by: 1) {
                slots[number] = Slot(number: number)
                spawn(number, now: now, into: &effects)
            }
        case .started(let number, let generation, let pid):
            started(number, generation, pid: pid, into: &effects)
        case .exited(let number, let generation, let description):
            exited(number, generation, description: description, now: now, into: &effects)
        case .signal(let signal):
            handle(signal: signal, now: now, into: &effects)
        case .control(let request):
            effects.append(.reply(control(request, now: now, into: &effects)))
        case .tick:
            for slot in ordered where !slot.launched {
                if let at = slot.restartAt, at <= now { spawn(slot.number, now: now, into: &effects) }
            }
        case .ready(let number, let pid):
            guard var slot = slots[number], slot.state == .running(pid: pid, ready: false) else { break }
            slot.state = .running(pid: pid, ready: true)
            slots[number] = slot
            effects.append(.log(.debug, "\(slot.vm) is ready", metadata: ["pid": "\(pid)"]))
            if slot.paused { effects.append(.signal(pid: pid, SIGUSR2)) }
        case .jobSeen(let number, let pid, let job):
            if slots[number]?.pid == pid { slots[number]?.watchedJob = job }
        case .memorySample(let number, let pid, let rssKiB):
            memorySample(number, pid: pid, rssKiB: rssKiB, into: &effects)
        case .stuck(let number, let pid, let job, let elapsed):
            stuck(number, pid: pid, job: job, elapsed: elapsed, into: &effects)
        case .configReloaded(let count, let fresh):
            configReloaded(count: count, limits: fresh, now: now, into: &effects)
        }
        return effects
    }

    // MARK: - Children

    private mutating func spawn(_ number: Int, now: ContinuousClock.Instant, into effects: inout [MasterEffect]) {
        guard stopping == .none, var slot = slots[number], !slot.launched else { return }
        slot.generation += 1
        slot.state = .starting
        slot.note = nil
        slot.watchedJob = nil
        slot.afterExit = .restart
        slot.startedAt = now
        if paused { slot.paused = true }
        slots[number] = slot
        effects.append(.spawn(number: number, generation: slot.generation, paused: slot.paused))
    }

    private mutating func started(_ number: Int, _ generation: Int, pid: pid_t, into effects: inout [MasterEffect]) {
        guard var slot = slots[number], slot.generation == generation else { return }
        slot.state = .running(pid: pid, ready: false)
        slots[number] = slot
        effects.append(.log(.info, "started \(slot.vm)", metadata: ["pid": "\(pid)"]))
        // A stop that came while it was being started.
        if stopping != .none || slot.afterExit != .restart { effects.append(.signal(pid: pid, SIGTERM)) }
    }

    private mutating func exited(_ number: Int, _ generation: Int, description: String, now: ContinuousClock.Instant,
                                 into effects: inout [MasterEffect]) {
        guard var slot = slots[number], slot.generation == generation else { return }
        let pid = slot.pid.map(String.init) ?? "-"
        effects.append(.killBuildGroup(vm: slot.vm))
        if let exitedPID = slot.pid { effects.append(.forgetHeartbeat(vm: slot.vm, pid: exitedPID)) }
        slot.state = .idle
        slot.lastExit = description
        memory.forget(worker: slot.vm)
        if stopping != .none {
            effects.append(.log(.info, "\(slot.vm) (pid \(pid)) \(description)"))
            slots[number] = nil
            finishIfDone(into: &effects)
            return
        }
        switch slot.afterExit {
        case .restart:
            effects.append(.countRestart(vm: slot.vm, reason: "crash"))
        case .replace where slot.note?.hasPrefix("killed") == true:
            effects.append(.countRestart(vm: slot.vm, reason: "stuck"))
        case .replace where slot.note?.hasSuffix(": memory") == true:
            effects.append(.countRestart(vm: slot.vm, reason: "memory"))
        default:
            break
        }
        switch slot.afterExit {
        case .remove:
            effects.append(.log(.info, "\(slot.vm) (pid \(pid)) \(description); removed"))
            slots[number] = nil
        case .hold:
            effects.append(.log(.info, "\(slot.vm) (pid \(pid)) \(description); stopped until `tworker restart \(slot.vm)`"))
            slot.state = .held
            slot.note = "stopped by an operator"
            slots[number] = slot
        case .replace:
            effects.append(.log(.info, "\(slot.vm) (pid \(pid)) \(description); starting its replacement"))
            slot.backoff.reset()
            slots[number] = slot
            spawn(number, now: now, into: &effects)
        case .restart:
            let delay = slot.backoff.delay(afterUptime: now - (slot.startedAt ?? now))
            if delay == .zero {
                effects.append(.log(.warning, "\(slot.vm) (pid \(pid)) \(description) unexpectedly; restarting it"))
                slots[number] = slot
                spawn(number, now: now, into: &effects)
            } else {
                effects.append(.log(.warning, "\(slot.vm) (pid \(pid)) \(description) unexpectedly (\(slot.backoff.streak) times in a row); restarting it in \(delay)"))
                slot.state = .backingOff(until: now + delay)
                slot.note = "exited \(slot.backoff.streak) times in a row"
                slots[number] = slot
                effects.append(.scheduleTimer(at: now + delay))
            }
        }
    }

    /// QUIT to a ready child; a child whose handlers may not be installed yet has no job and
    /// gets TERM (QUIT's default action would dump core).
    private func quit(_ number: Int, immediate: Bool = false, into effects: inout [MasterEffect]) {
        guard let slot = slots[number], let pid = slot.pid else { return }
        effects.append(.signal(pid: pid, immediate || !slot.ready ? SIGTERM : SIGQUIT))
    }

    // MARK: - Signals

    private mutating func handle(signal: Int32, now: ContinuousClock.Instant, into effects: inout [MasterEffect]) {
        let name = Master.signalName(signal)
        switch signal {
        case SIGQUIT:
            effects.append(.log(.info, "\(name): stopping gracefully: the workers finish their jobs, then exit"))
            stop(.graceful, into: &effects)
        case SIGTERM, SIGINT:
            stop(.immediate, into: &effects)
        case SIGUSR1:
            effects.append(.log(.info, "\(name): the workers abort their running jobs (requeued) and go on"))
            for slot in ordered where slot.ready {
                if let pid = slot.pid { effects.append(.signal(pid: pid, SIGUSR1)) }
            }
        case SIGUSR2:
            effects.append(.log(.info, "\(name): pausing: the workers take no new jobs"))
            pause(nil, into: &effects)
        case SIGCONT:
            effects.append(.log(.info, "\(name): resuming"))
            resume(nil, into: &effects)
        case SIGHUP:
            if stopping == .none { effects.append(.reloadConfig) }
        case SIGTTIN:
            grow(now: now, into: &effects)
        case SIGTTOU:
            shrink(into: &effects)
        default:
            break
        }
    }

    // MARK: - Stopping

    private mutating func stop(_ request: StopRequest, into effects: inout [MasterEffect]) {
        if request == .immediate {
            immediateSignals += 1
            if immediateSignals > 1 {
                effects.append(.log(.warning, "second TERM/INT: killing the workers and exiting at once; their jobs stay in the processing lists for recovery"))
                for slot in ordered {
                    if let pid = slot.pid {
                        effects.append(.killTree(pid: pid))
                        // Their exits are not waited for: their entries in `tworker:workers` go now.
                        effects.append(.forgetHeartbeat(vm: slot.vm, pid: pid))
                    }
                    effects.append(.stopMachine(vm: slot.vm))
                }
                finish(1, into: &effects)
                return
            }
            effects.append(.log(.info, "stopping now: the workers stop their builds and requeue the jobs"))
        }
        guard request > stopping else { return }
        stopping = request
        for slot in ordered {
            if slot.pid != nil {
                quit(slot.number, immediate: request == .immediate, into: &effects)
            } else if slot.state != .starting {
                slots[slot.number] = nil
            }
        }
        finishIfDone(into: &effects)
    }

    private mutating func finishIfDone(into effects: inout [MasterEffect]) {
        guard stopping != .none else { return }
        if slots.values.allSatisfy({ !$0.launched }) { finish(0, into: &effects) }
    }

    private mutating func finish(_ code: Int32, into effects: inout [MasterEffect]) {
        guard finished == nil else { return }
        finished = code
        effects.append(.finish(code))
    }

    // MARK: - Pause, resize, reload

    private mutating func pause(_ number: Int?, into effects: inout [MasterEffect]) {
        if number == nil { paused = true }
        for slot in ordered where number == nil || slot.number == number {
            slots[slot.number]?.paused = true
            if slot.ready, let pid = slot.pid { effects.append(.signal(pid: pid, SIGUSR2)) }
        }
    }

    private mutating func resume(_ number: Int?, into effects: inout [MasterEffect]) {
        if number == nil { paused = false }
        for slot in ordered where number == nil || slot.number == number {
            slots[slot.number]?.paused = false
            if let pid = slot.pid { effects.append(.signal(pid: pid, SIGCONT)) }
        }
    }

    private mutating func grow(now: ContinuousClock.Instant, into effects: inout [MasterEffect]) {
        guard stopping == .none else { return }
        let number = (slots.keys.max() ?? 0) + 1
        guard number <= 64 else {
            effects.append(.log(.warning, "TTIN: already 64 workers"))
            return
        }
        effects.append(.log(.info, "TTIN: adding worker-\(number)"))
        slots[number] = Slot(number: number)
        spawn(number, now: now, into: &effects)
    }

    private mutating func shrink(into effects: inout [MasterEffect]) {
        guard stopping == .none else { return }
        guard let slot = slots.values.filter({ $0.afterExit != .remove }).max(by: { $0.number < $1.number }) else {
            effects.append(.log(.warning, "TTOU: no worker left to stop"))
            return
        }
        effects.append(.log(.info, "TTOU: stopping \(slot.vm) after its job"))
        retire(slot.number, into: &effects)
    }

    private mutating func retire(_ number: Int, into effects: inout [MasterEffect]) {
        guard let slot = slots[number] else { return }
        if !slot.launched {
            slots[number] = nil
            return
        }
        slots[number]?.afterExit = .remove
        slots[number]?.note = "retiring after its job"
        quit(number, into: &effects)
    }

    /// A graceful restart after its job (HUP, `tworker restart`).
    private mutating func replaceAfterJob(_ number: Int, into effects: inout [MasterEffect]) {
        slots[number]?.afterExit = .replace
        slots[number]?.note = "restarting after its job"
        quit(number, into: &effects)
    }

    private mutating func configReloaded(count: Int, limits fresh: Limits, now: ContinuousClock.Instant,
                                         into effects: inout [MasterEffect]) {
        guard stopping == .none else { return }
        limits = fresh
        memory.limitKiB = fresh.workerMemoryMiB.map { $0 * 1024 }
        effects.append(.log(.info, "HUP: config reloaded; restarting the workers gracefully", metadata: ["workers": "\(count)"]))
        for slot in ordered {
            if slot.number > count {
                retire(slot.number, into: &effects)
            } else if slot.launched {
                replaceAfterJob(slot.number, into: &effects)
            } else if !slot.held {
                spawn(slot.number, now: now, into: &effects)
            }
        }
        for number in stride(from: 1, through: count, by: 1) where slots[number] == nil {
            slots[number] = Slot(number: number)
            spawn(number, now: now, into: &effects)
        }
    }

    // MARK: - Watchdogs

    private mutating func memorySample(_ number: Int, pid: pid_t, rssKiB: Int?, into effects: inout [MasterEffect]) {
        guard let slot = slots[number], slot.pid == pid, slot.afterExit == .restart else { return }
        guard memory.check(worker: slot.vm, rssKiB: rssKiB) else { return }
        effects.append(.log(.warning, "\(slot.vm) (pid \(pid)) uses \(rssKiB.map { $0 / 1024 } ?? 0) MiB, above limits.worker_memory (\(limits.workerMemoryMiB ?? 0) MiB) twice in a row: replacing it after its current job"))
        slots[number]?.afterExit = .replace
        slots[number]?.note = "replaced after its job: memory"
        memory.forget(worker: slot.vm)
        quit(number, into: &effects)
    }

    private mutating func stuck(_ number: Int, pid: pid_t, job: String, elapsed: Duration, into effects: inout [MasterEffect]) {
        guard let slot = slots[number], slot.pid == pid,
              slot.afterExit != .replace || slot.note?.hasPrefix("killed") != true else { return }
        effects.append(.log(.error, "\(slot.vm) (pid \(pid)): job \(job) has run \(Master.seconds(elapsed)), past timeouts.hard_limit (\(limits.hardLimitSeconds) s) + \(Master.seconds(limits.stuckGrace)) grace: killing the worker; its replacement recovers the job"))
        slots[number]?.afterExit = .replace
        slots[number]?.note = "killed: job \(job) overran its hard limit"
        effects.append(.killTree(pid: pid))
    }

    // MARK: - Control socket

    private mutating func control(_ request: ControlRequest, now: ContinuousClock.Instant,
                                  into effects: inout [MasterEffect]) -> ControlResponse {
        guard stopping == .none else {
            return .failure("the master (pid \(masterPID)) is stopping")
        }
        var target: Int?
        if let worker = request.worker {
            guard let number = Master.workerNumber(worker), slots[number] != nil else {
                let known = slots.keys.sorted().map { "worker-\($0)" }.joined(separator: ", ")
                return .failure("no worker \(worker) in this master (workers: \(known.isEmpty ? "none" : known))")
            }
            target = number
        }
        let immediately = request.now == true
        switch (request.command, target) {
        case (.stop, nil):
            stop(immediately ? .immediate : .graceful, into: &effects)
            return ControlResponse(ok: true, message: immediately
                ? "master \(masterPID): stopping now (TERM): builds are stopped and their jobs requeued"
                : "master \(masterPID): stopping gracefully (QUIT): running jobs finish, then everything exits")
        case (.stop, let number?):
            let vm = "worker-\(number)"
            guard let slot = slots[number], !slot.held else { return ControlResponse(ok: true, message: "\(vm) is already stopped") }
            if !slot.launched {
                slots[number]?.state = .held
                slots[number]?.note = "stopped by an operator"
            } else {
                slots[number]?.afterExit = .hold
                slots[number]?.note = "stopping"
                quit(number, immediate: immediately, into: &effects)
            }
            return ControlResponse(ok: true, message: "\(vm): stopping\(immediately ? " now" : " after its job"); `tworker restart \(vm)` starts it again")
        case (.restart, _):
            for number in target.map({ [$0] }) ?? slots.keys.sorted() {
                guard let slot = slots[number] else { continue }
                if slot.launched {
                    replaceAfterJob(number, into: &effects)
                } else {
                    slots[number]?.backoff.reset()
                    spawn(number, now: now, into: &effects)
                }
            }
            return ControlResponse(ok: true, message: "restarting \(target.map { "worker-\($0)" } ?? "every worker") gracefully (each after its current job)")
        case (.pause, _):
            pause(target, into: &effects)
            return ControlResponse(ok: true, message: "paused \(target.map { "worker-\($0)" } ?? "every worker"): no new jobs are taken")
        case (.resume, _):
            resume(target, into: &effects)
            return ControlResponse(ok: true, message: "resumed \(target.map { "worker-\($0)" } ?? "every worker")")
        case (.status, _):
            // Answered by the master from its view of the slots: nothing changes.
            return ControlResponse(ok: true)
        }
    }
}
