import Foundation
import Logging

/// Why a running build was stopped from outside.
enum JobInterruption: Sendable, Equatable {
    /// TERM/INT: the worker is stopping; the job goes back to the head of the queue.
    case stop
    /// USR1: the operator aborts the running job; it goes back to the head of the queue.
    case abort
    /// `tworker cancel`: the job ends `cancelled` and is never requeued.
    case cancel(String)
}

/// A signal the worker acts on, as Resque taught operators.
enum WorkerSignal: Equatable, Sendable {
    /// QUIT: finish the running job, then exit.
    case finishThenExit
    /// TERM or INT (named as received): stop the build now and requeue its job.
    case stopNow(String)
    /// USR1: abort the running job (requeued) and go on.
    case abortJob
    /// USR2: take no new jobs.
    case pause
    /// CONT: take jobs again.
    case resume
}

/// What the worker must do after a signal; `WorkerControlState` only decides.
enum WorkerEffect: Equatable, Sendable {
    case log(Logger.Level, String)
    /// Stop the running build, if one runs; its job's interruption is already noted.
    case cancelBuild
    /// Exit the process at once with this code; the job stays in the processing list for recovery.
    case exit(Int32)
}

/// How the job in hand ends once its attempt is over, decided from the attempt's outcome.
struct JobConclusion: Equatable, Sendable {
    enum Ending: Equatable, Sendable {
        /// The build ran to a result.
        case finished(BuildResult, exitCode: Int32, message: String?)
        /// The machine failed: requeued with one attempt more (or errored once they are used up).
        case retryElsewhere(String)
        /// `tworker cancel`: final state `cancelled`.
        case cancelled(String)
        /// TERM/INT or USR1: back to the head of the queue unchanged.
        case requeued(JobInterruption)
    }

    let ending: Ending
    /// The worker's heartbeat state once the job settles, written in the job's transaction.
    let afterwards: WorkerState
    /// The machine's failure, for the heartbeat's `last_error`.
    let lastError: String?
    /// Infrastructure errors in a row, set when that many quarantine the VM.
    let quarantineAfter: Int?
}

/// The worker's bookkeeping and its decisions, without Redis, machines, clocks or tasks: what
/// signals, cancels and the job loop change together, so that each change is atomic under
/// the worker's one lock. Time comes in as an argument.
struct WorkerControlState: Sendable {
    /// Infrastructure errors in a row after which the VM is quarantined as `broken`.
    let maxConsecutiveFailures: Int
    private(set) var stop = StopRequest.none
    private(set) var paused = false
    /// The job in hand, from the moment it is taken until it settles.
    private(set) var job: String?
    /// Why the job in hand must stop, noted before or while its build runs.
    private(set) var interruption: JobInterruption?
    private(set) var consecutiveFailures = 0
    /// TERM/INT signals received: the second exits at once.
    private var stopSignals = 0
    /// How often this worker left each job it had failed to another worker.
    private var stepBacks: [String: Int] = [:]
    private var holdCheckedAt: ContinuousClock.Instant?
    /// What keeps the worker from taking jobs: its VM's maintenance, or its host's drain.
    private(set) var hold = WorkerHold.none

    /// Bounded, so a job whose every other worker stays busy still runs here in the end.
    static let maxStepBacks = 5
    /// Past this many jobs the step-back counts are forgotten: they only matter for a while.
    static let stepBackMemory = 1000
    /// A busy queue pays almost nothing for noticing maintenance this late.
    static let maintenanceRecheck: Duration = .milliseconds(250)

    init(maxConsecutiveFailures: Int, paused: Bool = false) {
        self.maxConsecutiveFailures = maxConsecutiveFailures
        self.paused = paused
    }

    // MARK: - Signals and requests

    /// Decides what one signal does, in order.
    mutating func received(_ signal: WorkerSignal) -> [WorkerEffect] {
        switch signal {
        case .finishThenExit:
            return [.log(.info, "SIGQUIT: finishing the current job, then exiting")] + requestStop(.graceful)
        case .abortJob:
            return [.log(.info, "SIGUSR1: aborting the running job (requeued at the head); going on")] + abortJob()
        case .pause:
            paused = true
            return [.log(.info, "SIGUSR2: paused, taking no new jobs")]
        case .resume:
            paused = false
            return [.log(.info, "SIGCONT: resumed")]
        case .stopNow(let name):
            stopSignals += 1
            if stopSignals > 1 {
                return [.log(.warning, "second \(name): exiting at once; the job stays in the processing list for recovery"), .exit(1)]
            }
            return [.log(.info, "\(name): stopping the build and requeueing its job")] + requestStop(.immediate)
        }
    }

    /// A stronger request overrides a weaker one; stopping now interrupts the job in hand.
    mutating func requestStop(_ request: StopRequest) -> [WorkerEffect] {
        stop = max(stop, request)
        return stop == .immediate ? interrupt(.stop) : []
    }

    /// USR1: the job in hand goes back to the head of the queue; the worker goes on.
    mutating func abortJob() -> [WorkerEffect] {
        interrupt(.abort)
    }

    mutating func pause() { paused = true }
    mutating func resume() { paused = false }

    /// `tworker cancel`: honoured only for the job in hand, whether its build runs yet or not.
    mutating func cancel(jobID id: String, reason: String) -> [WorkerEffect] {
        job == id ? interrupt(.cancel(reason)) : []
    }

    /// Notes why the job in hand must stop; a job whose build has not started sees the note
    /// before starting it.
    private mutating func interrupt(_ why: JobInterruption) -> [WorkerEffect] {
        guard job != nil else { return [] }
        // A stop outranks an abort or a cancel that arrives with it.
        if interruption != .stop { interruption = why }
        return [.cancelBuild]
    }

    // MARK: - The job in hand

    /// From here on a cancel, abort or stop applies to job `id`.
    mutating func jobTaken(_ id: String) {
        job = id
        interruption = nil
    }

    /// The job settled (or stays for recovery): nothing applies to it any more.
    mutating func jobLeft() {
        job = nil
    }

    /// A cancel, abort or stop that came while the machine got ready wins before the build starts.
    var buildMayStart: Bool { interruption == nil && stop != .immediate }

    /// The build is registered: true when it must be stopped at once (a stop or cancel noted
    /// before it was registered).
    mutating func buildStarted() -> Bool {
        if stop == .immediate { _ = interrupt(.stop) }
        return interruption != nil
    }

    /// Counts the attempt's outcome and decides how its job ends.
    mutating func conclude(_ outcome: BuildOutcome) -> JobConclusion {
        var quarantineAfter: Int?
        var lastError: String?
        let ending: JobConclusion.Ending
        switch outcome {
        case .finished(let result, let exitCode, let message):
            consecutiveFailures = 0
            ending = .finished(result, exitCode: exitCode, message: message)
        case .infrastructure(let message):
            quarantineAfter = infrastructureFailed()
            lastError = message
            ending = .retryElsewhere(message)
        case .interrupted:
            // Interrupted with nothing noted: the build's task was cancelled by the worker stopping.
            let why = interruption ?? .stop
            interruption = nil
            if case .cancel(let reason) = why { ending = .cancelled(reason) } else { ending = .requeued(why) }
        }
        return JobConclusion(ending: ending, afterwards: isBroken ? .broken : .idle, lastError: lastError, quarantineAfter: quarantineAfter)
    }

    // MARK: - Quarantine

    /// Counts one infrastructure error; returns the count when it quarantines the VM.
    mutating func infrastructureFailed() -> Int? {
        consecutiveFailures += 1
        return isBroken ? consecutiveFailures : nil
    }

    /// Enough infrastructure errors in a row: no jobs until the quarantine key is gone.
    var isBroken: Bool { consecutiveFailures >= maxConsecutiveFailures }

    /// The operator removed the quarantine key.
    mutating func quarantineCleared() {
        consecutiveFailures = 0
    }

    // MARK: - Stepping back

    /// Whether this worker may still leave job `id`, which it failed before, to another worker.
    func mayStepBack(from id: String) -> Bool {
        stepBacks[id, default: 0] < Self.maxStepBacks
    }

    mutating func steppedBack(from id: String) {
        if stepBacks.count > Self.stepBackMemory { stepBacks.removeAll() }
        stepBacks[id, default: 0] += 1
    }

    // MARK: - Maintenance and drain

    /// What the worker was held by when last checked, if that was recent enough to trust.
    func knownHold(at now: ContinuousClock.Instant) -> WorkerHold? {
        guard let last = holdCheckedAt, now - last < Self.maintenanceRecheck else { return nil }
        return hold
    }

    /// Records one look at the maintenance and drain keys (maintenance wins: a rebuild waits
    /// for `maintenance` in the heartbeat); returns true when the hold changed.
    mutating func holdChecked(maintenance: Bool, drained: Bool, at now: ContinuousClock.Instant) -> Bool {
        let held: WorkerHold = maintenance ? .maintenance : drained ? .draining : .none
        defer {
            holdCheckedAt = now
            hold = held
        }
        return held != hold
    }
}

/// Why a worker takes no jobs although it runs and is not paused.
enum WorkerHold: Sendable, Equatable {
    case none
    /// `tworker:maintenance:<host>:<vm>`: an operator's rebuild or reprovision holds the VM.
    case maintenance
    /// `tworker:drain:<host>`: `tworker drain` holds the whole host.
    case draining

    var heartbeatState: WorkerState {
        switch self {
        case .none: .idle
        case .maintenance: .maintenance
        case .draining: .draining
        }
    }
}
