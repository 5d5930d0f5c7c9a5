import Foundation
import Logging
import RedisClient
import Synchronization

/// How a worker was asked to stop.
public enum StopRequest: Int, Sendable, Comparable {
    case none = 0
    /// SIGQUIT: finish the running job, take no new one.
    case graceful = 1
    /// SIGTERM/SIGINT: kill the build, put its job back at the head of the queue.
    case immediate = 2

    public static func < (a: StopRequest, b: StopRequest) -> Bool { a.rawValue < b.rawValue }
}

/// One worker serving one machine: takes jobs off the queue one at a time, runs each on the
/// machine and reports every step to Redis.
public final class Worker: Sendable {
    public struct Settings: Sendable {
        public var vm: String
        public var queue: String
        public var host: String
        public var namespace: String
        public var maxAttempts: Int
        /// Infrastructure errors in a row after which the VM is quarantined as `broken`.
        public var maxConsecutiveFailures: Int = 3
        public var retention: Int
        public var heartbeatInterval: Int
        public var limits: BuildLimits
        /// How long one BLMOVE waits; also bounds how late a stop request is noticed when idle.
        public var fetchBlock: Duration = .seconds(1)
        /// Exit once the queue is empty instead of waiting for more.
        public var burst: Bool = false
        /// Start paused (a master resuming a paused pool).
        public var startPaused: Bool = false
        /// The master this worker belongs to; when it is gone the worker finishes its job and exits.
        public var masterPID: pid_t?
        /// `secrets.env`'s variables, added before each job's own; `secrets.redact`'s patterns.
        public var hostSecrets: [JobPayload.EnvVar] = []
        public var redact: [String] = JobSecrets.defaultRedact
        public var hooks = JobHooks(beforeJob: nil, afterJob: nil, timeout: .seconds(60))
        /// `redis.wait_replicas`: replicas that confirm the fetch's move and the final commit.
        public var replicaWait: ReplicaWait?

        public init(vm: String, queue: String, host: String, namespace: String, maxAttempts: Int, retention: Int,
                    heartbeatInterval: Int, limits: BuildLimits) {
            self.vm = vm
            self.queue = queue
            self.host = host
            self.namespace = namespace
            self.maxAttempts = maxAttempts
            self.retention = retention
            self.heartbeatInterval = heartbeatInterval
            self.limits = limits
        }

        public init(config: WorkerConfig, vm: String, queue: String? = nil) {
            let timeouts = config.timeouts
            self.init(
                vm: vm, queue: queue ?? config.queue, host: config.host, namespace: config.redis.namespace,
                maxAttempts: config.limits.maxAttempts, retention: config.reporting.retention,
                heartbeatInterval: config.heartbeat.interval,
                limits: BuildLimits(hardLimit: .seconds(timeouts.hardLimit), logSilence: .seconds(timeouts.logSilence),
                                    logLength: config.limits.logLength, stageTimeout: { timeouts.stageTimeout($0) }))
            maxConsecutiveFailures = config.vms.maxConsecutiveFailures
            hostSecrets = config.secrets.variables
            redact = config.secrets.redact
            hooks = JobHooks(config: config.hooks)
            replicaWait = ReplicaWait(config: config)
        }

        public var worker: String { "\(host):\(vm)" }
        /// `queue` (`a,b`, `*`) as the list the worker serves, highest priority first.
        public var queueList: QueueList { (try? QueueList(parsing: queue)) ?? QueueList(unchecked: queue) }
    }

    let settings: Settings
    let machine: any Machine
    let redis: RedisConnection
    /// Every queue the worker serves and its processing list.
    let queues: WorkQueue
    /// The same, holding the job in hand: a requeue puts it back on the queue it came from.
    var queue: WorkQueue { queues.holding(from: jobQueue.withLock { $0 } ?? queues.queue) }
    /// The queue the job in hand came from.
    private let jobQueue = Mutex<String?>(nil)
    let resque: ResqueWorkerRegistry
    let store: JobStore
    let attempts: AttemptPolicy
    let heartbeat: Heartbeat
    let keys: RedisKeys
    let logger: Logger
    /// The worker's bookkeeping, and beside it the running build, under one lock: noting why
    /// the job in hand must stop and finding the build to stop are one step.
    private struct Control {
        var state: WorkerControlState
        var build: Task<BuildOutcome, Never>?
    }
    /// The dead maintenance hold last reported, so it is reported once.
    private let staleHoldReported = Mutex<String?>(nil)
    private let control: Mutex<Control>
    let subscriptionRedis: RedisConnection?

    public init(settings: Settings, machine: any Machine, redis: RedisConnection, blockingRedis: RedisConnection,
                subscriptionRedis: RedisConnection? = nil, logger: Logger) {
        self.settings = settings
        self.subscriptionRedis = subscriptionRedis
        self.machine = machine
        self.redis = redis
        self.logger = logger
        control = Mutex(Control(state: WorkerControlState(maxConsecutiveFailures: settings.maxConsecutiveFailures)))
        keys = RedisKeys(namespace: settings.namespace, host: settings.host)
        let queueList = settings.queueList
        queues = WorkQueue(redis: redis, blockingRedis: blockingRedis, keys: keys, queue: queueList.fallback ?? settings.queue,
                           queues: queueList, vm: settings.vm, logger: logger, replicaWait: settings.replicaWait)
        resque = ResqueWorkerRegistry(keys: keys, vm: settings.vm, queues: queueList)
        var store = JobStore(redis: redis, keys: keys, retention: settings.retention, worker: settings.worker, logger: logger)
        store.resque = resque
        self.store = store
        attempts = AttemptPolicy(maxAttempts: settings.maxAttempts)
        heartbeat = Heartbeat(redis: redis, keys: keys, vm: settings.vm, interval: settings.heartbeatInterval,
                              queue: settings.queue, logger: logger)
    }

    /// Asks the worker to stop; a stronger request overrides a weaker one.
    public func requestStop(_ request: StopRequest) {
        apply { $0.requestStop(request) }
    }

    /// USR1: stops the running build and puts its job back at the head of the queue; the worker goes on.
    public func abortCurrentJob() {
        apply { $0.abortJob() }
    }

    /// USR2 / CONT: take no new jobs until resumed (a running job finishes).
    public func pause() {
        control.withLock { $0.state.pause() }
    }

    public func resume() {
        control.withLock { $0.state.resume() }
    }

    var isPaused: Bool { control.withLock { $0.state.paused } }

    /// Cancels job `id` if this worker holds it, whether its build runs yet or not.
    public func cancel(jobID id: String, reason: String) {
        apply { $0.cancel(jobID: id, reason: reason) }
    }

    /// Feeds one signal to the state and carries out what it decides.
    func handle(_ signal: WorkerSignal) {
        apply { $0.received(signal) }
    }

    /// Changes the state under the lock, then carries out the effects outside it.
    private func apply(_ change: (inout WorkerControlState) -> [WorkerEffect]) {
        let (effects, build) = control.withLock { control in (change(&control.state), control.build) }
        for effect in effects {
            switch effect {
            case .log(let level, let message):
                logger.log(level: level, "\(message)")
            case .cancelBuild:
                build?.cancel()
            case .exit(let code):
                exit(code)
            }
        }
    }

    var stopRequest: StopRequest { control.withLock { $0.state.stop } }
    private var currentJob: String? { control.withLock { $0.state.job } }

    /// Serves the queue until stopped (or, in burst mode, until it is empty).
    public func run() async throws {
        if settings.startPaused { pause() }
        heartbeat.start()
        defer { logger.info("worker stopped", metadata: ["vm": "\(settings.vm)"]) }
        // A restart is the operator's way to clear a quarantine.
        _ = try await withRedisRetry(logger: logger, what: "clear quarantine") { try await redis.send(["DEL", keys.broken(vm: settings.vm)]) }
        // A build its killed predecessor left running dies before its job is requeued.
        await machine.killLeftovers()
        try await recoverUnfinished()
        let cancellations = watchCancellations()
        defer { cancellations?.cancel() }
        // Measurements for the master's /metrics, written about once a second.
        let observations = Task { [settings, redis, keys, logger] in
            await WorkerObservations.run(vm: settings.vm, redis: redis, keys: keys, logger: logger)
        }
        defer { observations.cancel() }
        logger.info("worker ready", metadata: ["vm": "\(settings.vm)", "queues": "\(queues.queues)", "host": "\(settings.host)"])
        await heartbeat.update(.idle)
        await registerWithResque()
        while stopRequest == .none {
            do {
                if try await serveOnce() == .stop { break }
            } catch {
                // Whatever Redis answered, the worker goes on; its job (if any) was settled.
                logger.error("unexpected error while waiting for a job; retrying in 1 s", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
        await heartbeat.update(.stopping)
        // A dead entry left anyway is pruned once this worker's heartbeat is gone.
        await redis.writeOnTheWayOut(resque.unregisterCommands(), what: "leave Resque's worker list", within: Heartbeat.removalGrace, logger: logger)
        await heartbeat.stop()
    }

    /// Prunes dead workers as Resque's `startup` does, then registers this one (its heartbeat is
    /// written). Best effort: it never holds up taking jobs, and each job's start registers again.
    private func registerWithResque() async {
        do {
            try await ResqueWorkerRegistry.prune(redis: redis, namespace: settings.namespace, logger: logger)
            _ = try await redis.checkedPipeline(bytes: JobStore.transaction(resque.registerCommands().map(JobStore.bytes)))
        } catch {
            logger.warning("could not register with Resque's worker list; the next job registers again", metadata: ["error": "\(error)"])
        }
    }


    private enum LoopStep { case next, stop }

    /// One turn of the worker loop: wait for (or skip) one job and run it to its end.
    private func serveOnce() async throws -> LoopStep {
            if let master = settings.masterPID, getppid() != master {
                logger.warning("the master (pid \(master)) is gone; finishing and exiting")
                requestStop(.graceful)
                return .stop
            }
            if isPaused {
                await heartbeat.updateIfChanged(.paused)
                if settings.burst { return .stop }
                try? await Task.sleep(for: .milliseconds(100))
                return .next
            }
            await heartbeat.leave(.paused)
            let heldBack = try await isHeld() ? true : try await isQuarantined()
            if heldBack {
                if settings.burst { return .stop }
                try? await Task.sleep(for: settings.fetchBlock)
                return .next
            }
            let taken: WorkQueue.Taken?
            do {
                taken = try await queues.take(block: settings.burst ? nil : settings.fetchBlock, retention: settings.retention)
            } catch {
                // The move may have happened with its reply lost: the processing list tells.
                logger.warning("taking a job failed; checking \(queue.processingKey)", metadata: ["error": "\(error)"])
                try await waitForRedis()
                if let taken = try await queue.unfinished().first { return await process(taken) ? .next : .stop }
                try? await Task.sleep(for: .milliseconds(100))
                return .next
            }
            guard let taken else { return settings.burst ? .stop : .next }
            let raw = taken.raw
            if taken.held {
                // Taken before and never settled (a take whose reply was lost): it runs now, as
                // after a failed take, and goes back (if it must) to the queue its record names.
                logger.warning("the processing list still holds a job; running it before taking another",
                               metadata: ["list": "\(queue.processingKey)"])
                if let recorded = try? await recordedQueue(of: raw) { jobQueue.withLock { $0 = recorded } }
            } else {
                jobQueue.withLock { $0 = taken.queue }
            }
            if stopRequest == .immediate {
                _ = await putBack(raw, reason: "The worker is stopping; the job was put back at the head of the queue.")
                return .stop
            }
            // A job that could not be settled stays in the processing list: take no other.
            return await process(raw) ? .next : .stop
    }

    /// While an operator holds the VM (rebuild, reprovision) or drains the host, the worker takes
    /// no jobs and says so in its heartbeat. Checked at most every 250 ms, so a busy queue pays almost nothing.
    private func isHeld() async throws -> Bool {
        let now = ContinuousClock.now
        var hold = control.withLock { $0.state.knownHold(at: now) }
        if hold == nil {
            let replies = try await withRedisRetry(logger: logger, what: "check maintenance and drain") {
                // Checked: an error reply read as "no hold" would take a job on a VM in maintenance.
                try await redis.checkedPipeline([["GET", keys.maintenance(vm: settings.vm)], ["EXISTS", keys.drain]])
            }
            var maintenance = false
            if let held = replies.first?.string { maintenance = try await isStillHeld(held) }
            let drained = replies.count > 1 && replies[1].int == 1
            let (changed, checked) = control.withLock { ($0.state.holdChecked(maintenance: maintenance, drained: drained, at: now), $0.state.hold) }
            if changed {
                let message = switch checked {
                case .maintenance: "VM in maintenance: taking no jobs"
                case .draining: "host drained: taking no jobs"
                case .none: "maintenance or drain over: taking jobs again"
                }
                logger.info("\(message)", metadata: ["vm": "\(settings.vm)"])
                if checked == .none { await heartbeat.update(.idle) }
            }
            hold = checked
        }
        guard let hold, hold != .none else { return false }
        // Also after a resume, which set the heartbeat back to idle while the hold went on.
        await heartbeat.updateIfChanged(hold.heartbeatState)
        return true
    }

    /// Whether a maintenance hold still holds: one whose holder died (a rebuild stopped by Ctrl-C
    /// or killed) before touching the VM is lifted; after it began changing the VM, the VM stays
    /// out and the heartbeat says what to do.
    private func isStillHeld(_ value: String) async throws -> Bool {
        guard let hold = MaintenanceHold(parsing: value), hold.holderIsGone() else { return true }
        let key = keys.maintenance(vm: settings.vm)
        guard hold.changing else {
            // Only that very hold: a new rebuild may have marked the VM meanwhile.
            let lifted = try await withRedisRetry(logger: logger, what: "lift a dead maintenance hold") {
                try await redis.send(["EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                                      "1", key, value])
            }
            if lifted.int == 1 {
                logger.warning("the maintenance of this VM ended without returning it (pid \(hold.pid) is gone) before it was changed: taking jobs again",
                               metadata: ["vm": "\(settings.vm)"])
            }
            return lifted.int != 1
        }
        let note = "the maintenance of \(settings.vm) stopped while its VM was being changed (pid \(hold.pid), since \(hold.since)): run `tworker vagrant rebuild` to return it to service"
        if staleHoldReported.withLock({ seen in defer { seen = value }; return seen != value }) {
            logger.error("\(note)", metadata: ["vm": "\(settings.vm)"])
            await heartbeat.update(.maintenance, lastError: note)
        }
        return true
    }

    /// While the VM is quarantined the worker takes no jobs; it returns to service once the
    /// quarantine key is gone.
    private func isQuarantined() async throws -> Bool {
        guard control.withLock({ $0.state.isBroken }) else { return false }
        let exists = try await withRedisRetry(logger: logger, what: "check quarantine") { try await redis.send(["EXISTS", keys.broken(vm: settings.vm)]) }
        if exists.int == 1 { return true }
        control.withLock { $0.state.quarantineCleared() }
        logger.info("quarantine cleared; taking jobs again", metadata: ["vm": "\(settings.vm)"])
        await heartbeat.update(.idle, lastError: "")
        return false
    }

    private func recordInfrastructureFailure(_ message: String) async {
        guard let count = control.withLock({ $0.state.infrastructureFailed() }) else { return }
        await quarantine(after: count, lastError: message)
    }

    /// Marks the VM `broken` in Redis, where operators and the master see it.
    private func quarantine(after count: Int, lastError message: String) async {
        logger.error("VM quarantined after \(count) infrastructure errors in a row; restart the worker or rebuild the VM to clear it",
                     metadata: ["vm": "\(settings.vm)", "last_error": "\(message)"])
        _ = await persistently("quarantine \(settings.vm)") {
            _ = try await withRedisRetry(logger: logger, what: "quarantine") {
                try await redis.send(["SET", keys.broken(vm: settings.vm), message])
            }
        }
    }

    private func waitForRedis() async throws {
        _ = try await withRedisRetry(logger: logger, what: "reach Redis") { try await redis.send(["PING"]) }
    }

    // MARK: - Cancellation

    /// Listens on `tworker:cancel` for the ids of cancelled jobs (reconnecting after failures).
    private func watchCancellations() -> Task<Void, Never>? {
        guard let subscriptionRedis else { return nil }
        return Task { [self] in
            while !Task.isCancelled {
                do {
                    try await subscriptionRedis.subscribe(RedisKeys.cancelChannel) { [self] message in
                        let id = String(decoding: message, as: UTF8.self)
                        guard currentJob == id else { return }
                        Task { await self.cancelFromRedis(id) }
                    }
                } catch {
                    if Task.isCancelled { return }
                    logger.debug("cancel subscription lost; resubscribing", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    private func cancelFromRedis(_ id: String) async {
        let reason = try? await store.cancelReason(of: id)
        cancel(jobID: id, reason: reason?.isEmpty == false ? reason! : "cancelled")
    }

    /// The polling half: a missed message still cancels within half a second.
    private func pollCancellation(of id: String) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(500))
            if Task.isCancelled { return }
            if let reason = try? await store.cancelReason(of: id) {
                cancel(jobID: id, reason: reason.isEmpty ? "cancelled" : reason)
                return
            }
        }
    }

    // MARK: - Recovery

    /// Requeues what a previous run of this worker left in its processing list (it was killed
    /// mid-job), or gives the job up once it has used all its attempts.
    func recoverUnfinished() async throws {
        // The same lock another host's master takes to reap this list: one requeue, never two.
        let lock = try await ProcessingLock.wait(redis: redis, keys: keys, vm: settings.vm, logger: logger)
        defer { lock?.release() }
        defer { jobQueue.withLock { $0 = nil } }
        for raw in try await queue.unfinished().reversed() {
            jobQueue.withLock { $0 = nil }
            if let recorded = try await recordedQueue(of: raw) { jobQueue.withLock { $0 = recorded } }
            switch JobDecoder.decode(raw) {
            case .failure(let error):
                guard await persistently("file a malformed job", holding: raw, { try await fileAsFailed(raw, error: error) }) else { return }
            case .success(let job):
                let id = job.payload.id
                let log = try await LogStreamer.resuming(redis: redis, key: keys.log(id), retention: settings.retention, logger: logger)
                switch attempts.afterFailedAttempt(of: job) {
                case .giveUp(let used):
                    let reason = "The worker running this job stopped unexpectedly \(used) times; giving up after \(settings.maxAttempts) attempts."
                    await log.append("\n\(reason)\n")
                    guard await finish(job, raw: raw, result: .errored, exitCode: nil, error: reason, log: log) else { return }
                case .requeue(let used):
                    await log.append("\nThe worker running this job stopped unexpectedly; the job was requeued (attempt \(used + 1) of \(settings.maxAttempts)).\n")
                    await log.drain()
                    let now = Timestamp.now()
                    guard await persistently("requeue job \(id)", holding: raw, {
                        try await store.requeue(raw, as: job.withAttempts(used), id: id, fields: ["attempts": String(used), "error": "worker stopped unexpectedly"],
                                                event: .requeued, reason: .recovered, from: queue, at: now)
                    }) else { return }
                    logger.warning("requeued a job left by a previous run", metadata: ["job": "\(id)", "attempts": "\(used)"])
                }
            }
        }
    }

    // MARK: - One job

    /// Runs one entry of the processing list to its end: a final state, back in the queue, or
    /// the failed queue. Returns false only when the worker is stopping with the entry still
    /// in its processing list (the next start recovers it).
    @discardableResult
    func process(_ raw: [UInt8]) async -> Bool {
        if jobQueue.withLock({ $0 }) == nil, let recorded = try? await recordedQueue(of: raw) { jobQueue.withLock { $0 = recorded } }
        defer { jobQueue.withLock { $0 = nil } }
        switch JobDecoder.decode(raw) {
        case .failure(let error):
            return await persistently("file a malformed job", holding: raw) { try await fileAsFailed(raw, error: error) }
        case .success(let job):
            return await run(job, raw: raw)
        }
    }

    /// The queue job `raw` came from, as its record says (the fetch notes it); nil when unknown.
    /// Retried: at start-up it runs while a restarted Redis may still answer `LOADING`.
    private func recordedQueue(of raw: [UInt8]) async throws -> String? {
        guard case .success(let job) = JobDecoder.decode(raw) else { return nil }
        let recorded = try await withRedisRetry(logger: logger, what: "read job \(job.payload.id)") {
            try await redis.send(["HGET", keys.job(job.payload.id), "queue"])
        }.string
        return recorded.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Retries `write` after any error, with capped backoff, until it succeeds, the worker is
    /// told to stop now, or the task is cancelled. A write that removes `raw` from the
    /// processing list may have landed before its error: the list tells, so it never runs twice.
    func persistently(_ what: String, holding raw: [UInt8]? = nil, _ write: () async throws -> Void) async -> Bool {
        var delay: Duration = .milliseconds(100)
        var tries = 0
        while true {
            tries += 1
            do {
                if tries > 1, let raw, try await !queue.holds(raw) { return true }
                try await write()
                if tries > 1 { logger.info("\(what): done after \(tries) tries") }
                return true
            } catch {
                if Task.isCancelled || (stopRequest == .immediate && tries >= 3) {
                    logger.error("\(what) failed; the job stays in \(queue.processingKey) for the next start",
                                 metadata: ["error": "\(error)"])
                    return false
                }
                logger.error("\(what) failed (try \(tries)); retrying in \(delay)", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    private func fileAsFailed(_ raw: [UInt8], error: PayloadError) async throws {
        try await store.fileAsFailed(raw, rejected: error, from: queue)
        logger.error("malformed job sent to the failed queue", metadata: ["job": "\(error.jobID ?? "?")", "error": "\(error.description)"])
    }

    /// One job, from the processing list to its end. Whatever goes wrong that is not the build's
    /// own result is an infrastructure error: requeued with one attempt more, never left behind.
    private func run(_ job: QueuedJob, raw: [UInt8]) async -> Bool {
        var job = job
        job.payload.env = settings.hostSecrets + job.payload.env
        let id = job.payload.id
        // From here on a cancel for this job is honoured, even before its build starts.
        control.withLock { $0.state.jobTaken(id) }
        let poller = Task { [self] in await pollCancellation(of: id) }
        defer {
            poller.cancel()
            control.withLock { $0.state.jobLeft() }
        }
        if await stepsBack(from: job, raw: raw) { return true }

        var opening: JobStore.Opening?
        let read = await persistently("read job \(id)") { opening = try await store.opening(of: id) }
        guard read, let opening else { return false }
        let secrets: SecretMask
        var refused: SecretTooShort?
        do throws(SecretTooShort) {
            secrets = try JobSecrets.mask(for: job.payload.env, redact: settings.redact)
        } catch {
            (secrets, refused) = (SecretMask(values: []), error)
        }
        let log = LogStreamer(redis: redis, key: keys.log(id), retention: settings.retention, logger: logger, lastNumber: opening.lastLogNumber,
                              secrets: secrets)
        if let reason = opening.cancelReason {
            // Cancelled while it waited, but taken off the queue before the cancel could remove it.
            await log.append("The job was cancelled before it started: \(reason)\n")
            return await finish(job, raw: raw, state: .cancelled, exitCode: nil, error: reason, log: log)
        }
        if attempts.isUsedUp(job) {
            let reason = "The job already used its \(settings.maxAttempts) attempts."
            await log.append("\n\(reason)\n")
            return await finish(job, raw: raw, result: .errored, exitCode: nil, error: reason, log: log)
        }
        if let refused {
            await log.append("\n\(refused)\n")
            return await finish(job, raw: raw, result: .errored, exitCode: nil, error: refused.description, log: log)
        }

        let stages = StageTimes()
        let outcome: BuildOutcome
        do {
            outcome = try await attempt(job, rerun: opening.rerun, secrets: secrets, stages: stages, log: log)
        } catch {
            // A reply nobody expected while recording the job: the machine is reset and the job retried.
            logger.error("unexpected error before the build ran; treating it as an infrastructure error",
                         metadata: ["job": "\(id)", "error": "\(error)"])
            outcome = .infrastructure("\(error)")
        }
        let settled = await conclude(job, raw: raw, outcome: outcome, stages: stages, log: log)
        WorkerObservations.record(.logBytes, value: Double(await log.bytesWritten))
        // Reported first, cleaned up after: the job's result does not wait for the VM's reset.
        do {
            let releaseStarted = ContinuousClock.now
            try await machine.release()
            let reset = ContinuousClock.now - releaseStarted
            WorkerObservations.record(.stage, labels: ["stage": "release"], duration: reset)
            WorkerObservations.record(.vmReset, duration: reset)
        } catch {
            logger.error("could not reset the machine after the job; the next job resets it again",
                         metadata: ["job": "\(id)", "error": "\(error.message)"])
            await recordInfrastructureFailure(error.message)
        }
        return settled
    }

    /// Records the job as received, readies the machine and runs the build. Throws only what
    /// Redis answered unexpectedly; the machine's failures come back as `.infrastructure`.
    private func attempt(_ job: QueuedJob, rerun: Bool, secrets: SecretMask, stages: StageTimes, log: LogStreamer) async throws -> BuildOutcome {
        let id = job.payload.id
        let attempt = job.attempts + 1
        let busy = heartbeat.transition(to: .busy, job: id)
        logger.info("job received", metadata: ["job": "\(id)", "attempt": "\(attempt)"])
        // The machine gets ready while Redis records the job as received.
        async let receivedWritten: Void = store.received(job, into: queue, rerun: rerun,
                                                         alongWith: busy + StageTimes.resetCommands(key: keys.job(id)))
        let prepared: Result<Void, InfrastructureError>
        do {
            let prepareStarted = ContinuousClock.now
            try await machine.prepare()
            WorkerObservations.record(.stage, labels: ["stage": "prepare"], duration: ContinuousClock.now - prepareStarted)
            prepared = .success(())
        } catch {
            prepared = .failure(error)
        }
        try await receivedWritten
        if case .failure(let error) = prepared { return .infrastructure(error.message) }
        if let failure = await settings.hooks.run(.beforeJob, context: hookContext(job), log: log) { return .infrastructure(failure) }
        // A cancel, abort or stop that came while the machine got ready wins before the build starts.
        guard control.withLock({ $0.state.buildMayStart }) else { return .interrupted }
        try await store.started(id: id)
        return await runBuild(job, secrets: secrets, stages: stages, log: log)
    }

    /// What the hooks are told about `job`'s attempt in hand.
    private func hookContext(_ job: QueuedJob, result: String? = nil) -> JobHooks.Context {
        JobHooks.Context(jobID: job.payload.id, vm: settings.vm, worker: settings.worker, queue: queue.queue,
                         attempt: job.attempts + 1, result: result)
    }

    /// Writes how the attempt ended: a final state, or back to the queue. Every write is retried
    /// until Redis takes it, so a build that ran is never run again for want of a reply.
    private func conclude(_ job: QueuedJob, raw: [UInt8], outcome: BuildOutcome, stages: StageTimes, log: LogStreamer) async -> Bool {
        let id = job.payload.id
        let conclusion = control.withLock { $0.state.conclude(outcome) }
        if let count = conclusion.quarantineAfter, let message = conclusion.lastError {
            await quarantine(after: count, lastError: message)
        }
        if case .finished = conclusion.ending { heartbeat.countJobDone() }
        if settings.hooks.afterJob != nil {
            let result = switch conclusion.ending {
            case .finished(let result, _, _): result.rawValue
            case .retryElsewhere: if case .giveUp = attempts.afterFailedAttempt(of: job) { "errored" } else { "requeued" }
            case .cancelled: "cancelled"
            case .requeued: "requeued"
            }
            await settings.hooks.run(.afterJob, context: hookContext(job, result: result), log: log)
        }
        for stage in stages.stages {
            if let duration = stage.duration { WorkerObservations.record(.stage, labels: ["stage": stage.name], duration: duration) }
        }
        // The worker's own state and the stages' times change in the same transaction as the job's.
        let afterwards = heartbeat.transition(to: conclusion.afterwards, lastError: conclusion.lastError)
            + stages.recordCommands(key: keys.job(id))
        switch conclusion.ending {
        case .finished(let result, let exitCode, let message):
            if let message { await log.append("\n\n\(message)\n") }
            await log.append("\nDone. Your build exited with \(exitCode) (\(result.rawValue)).\n")
            return await finish(job, raw: raw, result: result, exitCode: exitCode, error: message, log: log, with: afterwards)
        case .retryElsewhere(let message):
            await log.append("\n\nThe machine \(settings.vm) failed: \(message)\n")
            return await retryElsewhere(job, raw: raw, reason: message, log: log, with: afterwards)
        case .cancelled(let reason):
            await log.append("\n\nThe job was cancelled: \(reason)\n")
            return await finish(job, raw: raw, state: .cancelled, exitCode: nil, error: reason, log: log, with: afterwards)
        case .requeued(let why):
            let message = why == .stop ? "The worker is stopping; the build was stopped and the job put back at the head of the queue."
                : "The build was aborted by the operator (USR1); the job was put back at the head of the queue."
            await log.append("\n\n\(message)\n")
            await log.drain()
            let now = Timestamp.now()
            let settled = await persistently("requeue job \(id)", holding: raw) {
                try await store.requeue(raw, id: id, fields: ["error": why == .stop ? "worker stopped" : "aborted by operator"],
                                        event: .requeued, reason: why == .stop ? .stop : .abort, from: queue, alongWith: afterwards, at: now)
            }
            if settled { logger.info("job requeued", metadata: ["job": "\(id)", "why": "\(why)"]) }
            return settled
        }
    }

    private func runBuild(_ job: QueuedJob, secrets: SecretMask, stages: StageTimes, log: LogStreamer) async -> BuildOutcome {
        var limits = settings.limits
        if let hard = job.payload.hardLimit { limits.hardLimit = min(limits.hardLimit, .seconds(hard)) }
        if let silence = job.payload.logSilence { limits.logSilence = min(limits.logSilence, .seconds(silence)) }
        let script = BuildScript.render(job.payload, secrets: secrets)
        let task = Task { [machine, limits] in
            await BuildRun.execute(machine: machine, script: script, jobID: job.payload.id, limits: limits, stages: stages) { chunk in
                await log.append(chunk)
            }
        }
        // Registered and checked in one step: a stop or cancel noted before this still stops it.
        let stopNow = control.withLock { control -> Bool in
            control.build = task
            return control.state.buildStarted()
        }
        if stopNow { task.cancel() }
        let buildStarted = ContinuousClock.now
        let outcome = await task.value
        WorkerObservations.record(.stage, labels: ["stage": "build"], duration: ContinuousClock.now - buildStarted)
        control.withLock { $0.build = nil }
        return outcome
    }

    // MARK: - Retrying elsewhere

    /// An infrastructure failure: back to the head of the queue with one attempt more, or
    /// `errored` once the attempts are used up, so a broken machine never loops a job forever.
    /// The job records the worker that failed it, so another worker takes it if one can.
    private func retryElsewhere(_ job: QueuedJob, raw: [UInt8], reason: String, log: LogStreamer, with extra: [[String]]) async -> Bool {
        let used: Int
        switch attempts.afterFailedAttempt(of: job) {
        case .giveUp(let all):
            let message = "Infrastructure error on attempt \(all) of \(settings.maxAttempts): \(reason)"
            await log.append("\(message)\nDone. The job errored.\n")
            return await finish(job, raw: raw, result: .errored, exitCode: nil, error: message, log: log, with: extra)
        case .requeue(let sofar):
            used = sofar
        }
        await log.append("The job was requeued (attempt \(used + 1) of \(settings.maxAttempts)).\n")
        await log.drain()
        let replacement = job.withInfrastructureFailure(attempts: used, worker: settings.worker)
        let now = Timestamp.now()
        let settled = await persistently("requeue job \(job.payload.id)", holding: raw) {
            try await store.requeue(raw, as: replacement, id: job.payload.id, fields: ["attempts": String(used), "error": reason],
                                    event: .requeued, reason: .infrastructure, from: queue, alongWith: extra, at: now)
        }
        if settled {
            logger.warning("job requeued after an infrastructure error", metadata: ["job": "\(job.payload.id)", "attempts": "\(used)", "error": "\(reason)"])
        }
        return settled
    }

    /// Leaves a job this worker already failed to another live worker on the same queue: put
    /// back at the head unchanged while this worker steps back for a moment. Bounded, so a job
    /// whose every other worker stays busy still runs here in the end.
    private func stepsBack(from job: QueuedJob, raw: [UInt8]) async -> Bool {
        let id = job.payload.id
        guard job.failedOn.contains(settings.worker) else { return false }
        guard control.withLock({ $0.state.mayStepBack(from: id) }), let other = try? await otherWorkerCanTake(job) else { return false }
        logger.info("this worker failed the job before; leaving it to another worker", metadata: ["job": "\(id)", "other": "\(other)"])
        let now = Timestamp.now()
        guard await persistently("put job \(id) back", holding: raw, { try await store.requeue(raw, id: id, event: nil, from: queue, at: now) })
        else { return true }
        control.withLock { $0.state.steppedBack(from: id) }
        try? await Task.sleep(for: Self.stepBackTime)
        return true
    }

    static let stepBackTime: Duration = .seconds(2)

    /// A live worker serving the same queue that has not failed this job yet, if there is one.
    private func otherWorkerCanTake(_ job: QueuedJob) async throws -> String? {
        let members = (try await redis.send(["SMEMBERS", RedisKeys.workers]).array ?? []).compactMap(\.string)
            .filter { $0 != settings.worker && !job.failedOn.contains($0) }
        guard !members.isEmpty else { return nil }
        let records = try await redis.pipeline(members.map { ["HMGET", RedisKeys.workerRecord(member: $0), "state", "queue"] })
        for (member, record) in zip(members, records) {
            let fields = record.array?.map(\.string) ?? []
            guard fields.count == 2, let state = fields[0].flatMap(WorkerState.init(rawValue:)) else { continue }
            let serves = fields[1].flatMap { try? QueueList(parsing: $0) }?.serves(queue.queue) ?? false
            if [.idle, .busy].contains(state), serves { return member }
        }
        return nil
    }

    private func putBack(_ raw: [UInt8], reason: String) async -> Bool {
        let id = if case .success(let job) = JobDecoder.decode(raw) { job.payload.id } else { String?.none }
        let now = Timestamp.now()
        return await persistently("put a job back", holding: raw) {
            try await store.requeue(raw, id: id, fields: ["error": reason], event: .requeued, reason: .handedBack, from: queue, at: now)
        }
    }

    // MARK: - Finishing

    /// Closes the log, then writes the final state and drops the job from the processing list
    /// in one transaction (retried until Redis takes it).
    private func finish(_ job: QueuedJob, raw: [UInt8], result: BuildResult, exitCode: Int32?, error: String?, log: LogStreamer,
                        with extra: [[String]] = []) async -> Bool {
        let state: JobState = switch result { case .passed: .passed; case .failed: .failed; case .errored: .errored }
        return await finish(job, raw: raw, state: state, exitCode: exitCode, error: error, log: log, with: extra)
    }

    private func finish(_ job: QueuedJob, raw: [UInt8], state: JobState, exitCode: Int32?, error: String?, log: LogStreamer,
                        with extra: [[String]] = []) async -> Bool {
        // The log's last entries and its `final` marker go in the same transaction as the state.
        let closing = await log.closingCommands()
        let id = job.payload.id
        let now = Timestamp.now()
        let settled = await persistently("record the end of job \(id)", holding: raw) {
            try await store.finish(raw, id: id, state: state, exitCode: exitCode, error: error, closingLog: closing, from: queue,
                                   alongWith: extra, at: now)
        }
        if settled {
            logger.info("job finished", metadata: ["job": "\(id)", "result": "\(state.rawValue)", "exit_code": "\(exitCode.map(String.init) ?? "-")"])
        }
        return settled
    }
}
