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
        }

        public var worker: String { "\(host):\(vm)" }
    }

    let settings: Settings
    let machine: any Machine
    let redis: RedisConnection
    let queue: WorkQueue
    let reporter: JobReporter
    let heartbeat: Heartbeat
    let keys: RedisKeys
    let logger: Logger
    private let stop = Mutex<StopRequest>(.none)
    private let currentBuild = Mutex<Task<BuildOutcome, Never>?>(nil)
    private let currentJob = Mutex<String?>(nil)
    private let interruption = Mutex<Interruption?>(nil)
    private let paused = Mutex<Bool>(false)
    let subscriptionRedis: RedisConnection?

    /// Why a running build was stopped from outside.
    enum Interruption: Sendable, Equatable {
        /// TERM/INT: the worker is stopping; the job goes back to the head of the queue.
        case stop
        /// USR1: the operator aborts the running job; it goes back to the head of the queue.
        case abort
        /// `tworker cancel`: the job ends `cancelled` and is never requeued.
        case cancel(String)
    }
    private let consecutiveFailures = Mutex<Int>(0)
    private let maintenanceCheck = Mutex<(at: ContinuousClock.Instant?, held: Bool)>((nil, false))

    public init(settings: Settings, machine: any Machine, redis: RedisConnection, blockingRedis: RedisConnection,
                subscriptionRedis: RedisConnection? = nil, logger: Logger) {
        self.settings = settings
        self.subscriptionRedis = subscriptionRedis
        self.machine = machine
        self.redis = redis
        self.logger = logger
        keys = RedisKeys(namespace: settings.namespace, host: settings.host)
        queue = WorkQueue(redis: redis, blockingRedis: blockingRedis, keys: keys, queue: settings.queue, vm: settings.vm, logger: logger)
        reporter = JobReporter(redis: redis, keys: keys, retention: settings.retention, worker: settings.worker, logger: logger)
        heartbeat = Heartbeat(redis: redis, keys: keys, vm: settings.vm, interval: settings.heartbeatInterval, logger: logger)
    }

    /// Asks the worker to stop; a stronger request overrides a weaker one.
    public func requestStop(_ request: StopRequest) {
        let build = stop.withLock { current -> Task<BuildOutcome, Never>? in
            current = max(current, request)
            return current == .immediate ? currentBuild.withLock { $0 } : nil
        }
        if build != nil { interrupt(.stop) }
    }

    /// USR1: stops the running build and puts its job back at the head of the queue; the worker goes on.
    public func abortCurrentJob() {
        interrupt(.abort)
    }

    /// USR2 / CONT: take no new jobs until resumed (a running job finishes).
    public func pause() {
        paused.withLock { $0 = true }
    }

    public func resume() {
        paused.withLock { $0 = false }
    }

    var isPaused: Bool { paused.withLock { $0 } }

    /// Cancels job `id` if this worker runs it.
    public func cancel(jobID id: String, reason: String) {
        guard currentJob.withLock({ $0 }) == id else { return }
        interrupt(.cancel(reason))
    }

    private func interrupt(_ why: Interruption) {
        let build = currentBuild.withLock { $0 }
        guard let build else { return }
        interruption.withLock { current in
            // A stop outranks an abort or a cancel that arrives with it.
            if current != .stop { current = why }
        }
        build.cancel()
    }

    var stopRequest: StopRequest { stop.withLock { $0 } }

    /// Serves the queue until stopped (or, in burst mode, until it is empty).
    public func run() async throws {
        if settings.startPaused { pause() }
        heartbeat.start()
        defer { logger.info("worker stopped", metadata: ["vm": "\(settings.vm)"]) }
        // A restart is the operator's way to clear a quarantine.
        _ = try await withRedisRetry(logger: logger, what: "clear quarantine") { try await redis.send(["DEL", keys.broken(vm: settings.vm)]) }
        try await recoverUnfinished()
        let cancellations = watchCancellations()
        defer { cancellations?.cancel() }
        logger.info("worker ready", metadata: ["vm": "\(settings.vm)", "queue": "\(queue.queueKey)", "host": "\(settings.host)"])
        await heartbeat.update(.idle)
        while stopRequest == .none {
            if let master = settings.masterPID, getppid() != master {
                logger.warning("the master (pid \(master)) is gone; finishing and exiting")
                requestStop(.graceful)
                break
            }
            if isPaused {
                await heartbeat.updateIfChanged(.paused)
                if settings.burst { break }
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            await heartbeat.leave(.paused)
            let heldBack = try await isInMaintenance() ? true : try await isQuarantined()
            if heldBack {
                if settings.burst { break }
                try? await Task.sleep(for: settings.fetchBlock)
                continue
            }
            let raw: [UInt8]?
            do {
                raw = try await queue.fetch(block: settings.burst ? nil : settings.fetchBlock)
            } catch let error as RedisError where error.isConnectionError {
                // The move may have happened with its reply lost: the processing list tells.
                try await waitForRedis()
                if let taken = try await queue.unfinished().first { await process(taken) }
                continue
            }
            guard let raw else {
                if settings.burst { break }
                continue
            }
            if stopRequest == .immediate {
                try await putBack(raw, reason: "The worker is stopping; the job was put back at the head of the queue.")
                break
            }
            await process(raw)
        }
        await heartbeat.update(.stopping)
        await heartbeat.stop()
    }

    /// While an operator holds the VM (rebuild, reprovision) the worker takes no jobs and says
    /// so in its heartbeat. Checked at most every 250 ms, so a busy queue pays almost nothing.
    private func isInMaintenance() async throws -> Bool {
        let now = ContinuousClock.now
        let cached = maintenanceCheck.withLock { check -> Bool? in
            if let last = check.at, now - last < .milliseconds(250) { return check.held }
            return nil
        }
        if let cached { return cached }
        let reply = try await withRedisRetry(logger: logger, what: "check maintenance") {
            try await redis.send(["EXISTS", keys.maintenance(vm: settings.vm)])
        }
        let held = reply.int == 1
        let was = maintenanceCheck.withLock { check -> Bool in
            defer { check = (now, held) }
            return check.held
        }
        if held != was {
            logger.info(held ? "VM in maintenance: taking no jobs" : "maintenance over: taking jobs again", metadata: ["vm": "\(settings.vm)"])
            await heartbeat.update(held ? .maintenance : .idle)
        }
        return held
    }

    /// While the VM is quarantined the worker takes no jobs; it returns to service once the
    /// quarantine key is gone.
    private func isQuarantined() async throws -> Bool {
        guard consecutiveFailures.withLock({ $0 }) >= settings.maxConsecutiveFailures else { return false }
        let exists = try await withRedisRetry(logger: logger, what: "check quarantine") { try await redis.send(["EXISTS", keys.broken(vm: settings.vm)]) }
        if exists.int == 1 { return true }
        consecutiveFailures.withLock { $0 = 0 }
        logger.info("quarantine cleared; taking jobs again", metadata: ["vm": "\(settings.vm)"])
        await heartbeat.update(.idle, lastError: "")
        return false
    }

    private func recordInfrastructureFailure(_ message: String) async throws {
        let count = consecutiveFailures.withLock { value in value += 1; return value }
        guard count >= settings.maxConsecutiveFailures else { return }
        logger.error("VM quarantined after \(count) infrastructure errors in a row; restart the worker or rebuild the VM to clear it",
                     metadata: ["vm": "\(settings.vm)", "last_error": "\(message)"])
        _ = try await withRedisRetry(logger: logger, what: "quarantine") {
            try await redis.send(["SET", keys.broken(vm: settings.vm), message])
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
                        guard currentJob.withLock({ $0 }) == id else { return }
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
        let reason = (try? await redis.send(["GET", keys.cancel(id)]))?.string
        cancel(jobID: id, reason: reason?.isEmpty == false ? reason! : "cancelled")
    }

    /// The polling half: a missed message still cancels within a second.
    private func pollCancellation(of id: String) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { return }
            if let reason = (try? await redis.send(["GET", keys.cancel(id)]))?.string {
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
        let lock = ProcessingReaper.lockKey(host: settings.host, vm: settings.vm)
        let token = UUID().uuidString
        let deadline = ContinuousClock.now + ProcessingReaper.lockTime
        while ContinuousClock.now < deadline {
            let taken = try await withRedisRetry(logger: logger, what: "lock \(queue.processingKey)") {
                try await redis.send(["SET", lock, token, "NX", "PX", String(ProcessingReaper.lockTime.components.seconds * 1000)])
            }
            if taken.string == "OK" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        defer {
            Task { [redis] in
                _ = try? await redis.send(["EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0", "1", lock, token])
            }
        }
        for raw in try await queue.unfinished().reversed() {
            switch JobDecoder.decode(raw) {
            case .failure(let error):
                try await fileAsFailed(raw, error: error)
            case .success(let job):
                let attempts = job.attempts + 1
                let id = job.payload.id
                let log = try await LogStreamer.resuming(redis: redis, key: keys.log(id), retention: settings.retention, logger: logger)
                if attempts >= settings.maxAttempts {
                    let reason = "The worker running this job stopped unexpectedly \(attempts) times; giving up after \(settings.maxAttempts) attempts."
                    await log.append("\n\(reason)\n")
                    await finish(job, raw: raw, result: .errored, exitCode: nil, error: reason, log: log)
                } else {
                    await log.append("\nThe worker running this job stopped unexpectedly; the job was requeued (attempt \(attempts + 1) of \(settings.maxAttempts)).\n")
                    await log.drain()
                    try await queue.requeue(raw, as: job.withAttempts(attempts), with: reporter.stateCommands(
                        id: id, state: .requeued, fields: ["attempts": String(attempts), "error": "worker stopped unexpectedly"],
                        event: .requeued, at: Timestamp.now()))
                    logger.warning("requeued a job left by a previous run", metadata: ["job": "\(id)", "attempts": "\(attempts)"])
                }
            }
        }
    }

    // MARK: - One job

    func process(_ raw: [UInt8]) async {
        do {
            switch JobDecoder.decode(raw) {
            case .failure(let error): try await fileAsFailed(raw, error: error)
            case .success(let job): try await run(job, raw: raw)
            }
        } catch {
            // Only cancellation of the whole worker gets here; the job stays in the processing list.
            logger.error("job processing abandoned", metadata: ["error": "\(error)"])
        }
    }

    private func fileAsFailed(_ raw: [UInt8], error: PayloadError) async throws {
        let failure = ResqueFailure(rejected: error, raw: raw, worker: settings.worker, queue: settings.queue)
        var commands: [[String]] = []
        let now = Timestamp.now()
        if let id = error.jobID {
            commands = reporter.stateCommands(id: id, state: .errored, fields: ["error": error.description, "finished_at": now,
                                                                               "worker": settings.worker, "vm": settings.vm, "host": settings.host],
                                              event: .failed, at: now)
        } else {
            commands = [["XADD", RedisKeys.events, "MAXLEN", "~", JobReporter.eventsMaxLength, "*",
                         "type", JobEvent.failed.rawValue, "id", "", "state", JobState.errored.rawValue, "worker", settings.worker, "at", now]]
        }
        try await queue.fail(raw, failure: failure.json(), with: commands)
        logger.error("malformed job sent to the failed queue", metadata: ["job": "\(error.jobID ?? "?")", "error": "\(error.description)"])
    }

    private func run(_ job: QueuedJob, raw: [UInt8]) async throws {
        let id = job.payload.id
        let attempt = job.attempts + 1
        // One round trip for what this attempt needs to know: a job id that already finished
        // (a rerun) starts a fresh log; otherwise the log continues where the last attempt ended.
        let known = try await withRedisRetry(logger: logger, what: "read job \(id)") {
            try await redis.pipeline([["HGET", keys.job(id), "state"], ["XREVRANGE", keys.log(id), "+", "-", "COUNT", "1"],
                                      ["GET", keys.cancel(id)]])
        }
        let rerun = known.first?.string.flatMap(JobState.init(rawValue:))?.isFinal ?? false
        let log = LogStreamer(redis: redis, key: keys.log(id), retention: settings.retention, logger: logger,
                              lastNumber: rerun ? 0 : LogStreamer.lastNumber(in: known.count > 1 ? known[1] : .null))
        if let reason = known.count > 2 ? known[2].string : nil {
            // Cancelled while it waited, but taken off the queue before the cancel could remove it.
            await log.append("The job was cancelled before it started: \(reason)\n")
            await finish(job, raw: raw, state: .cancelled, exitCode: nil, error: reason, log: log)
            return
        }
        if attempt > settings.maxAttempts {
            let reason = "The job already used its \(settings.maxAttempts) attempts."
            await log.append("\n\(reason)\n")
            await finish(job, raw: raw, result: .errored, exitCode: nil, error: reason, log: log)
            return
        }
        var received = ["attempts": String(attempt), "worker": settings.worker, "vm": settings.vm, "host": settings.host,
                        "received_at": Timestamp.now(), "error": "", "exit_code": "", "finished_at": "", "queue": settings.queue]
        if let queuedAt = job.queuedAt { received["queued_at"] = queuedAt }
        var commands = rerun ? [["DEL", keys.log(id)]] : []
        commands += reporter.stateCommands(id: id, state: .received, fields: received, event: .received, at: Timestamp.now())
        commands += heartbeat.transition(to: .busy, job: id)
        logger.info("job received", metadata: ["job": "\(id)", "attempt": "\(attempt)"])
        // The machine gets ready while Redis records the job as received.
        async let receivedWritten = withRedisRetry(logger: logger, what: "record job \(id) received") { [redis, commands] in
            try await redis.pipeline(commands)
        }
        let prepared: Result<Void, InfrastructureError>
        do {
            try await machine.prepare()
            prepared = .success(())
        } catch let error as InfrastructureError {
            prepared = .failure(error)
        }
        _ = try await receivedWritten

        let outcome: BuildOutcome
        switch prepared {
        case .success:
            try await reporter.record(id: id, state: .started, fields: ["started_at": Timestamp.now()], event: .started)
            outcome = await runBuild(job, log: log)
        case .failure(let error):
            outcome = .infrastructure(error.message)
        }

        if case .infrastructure(let message) = outcome {
            try await recordInfrastructureFailure(message)
        } else if case .finished = outcome {
            consecutiveFailures.withLock { $0 = 0 }
        }
        let broken = consecutiveFailures.withLock { $0 } >= settings.maxConsecutiveFailures
        let lastError: String? = if case .infrastructure(let message) = outcome { message } else { nil }
        // The worker's own state changes in the same transaction as the job's.
        let afterwards = heartbeat.transition(to: broken ? .broken : .idle, lastError: lastError)
        switch outcome {
        case .finished(let result, let exitCode, let message):
            if let message { await log.append("\n\n\(message)\n") }
            await log.append("\nDone. Your build exited with \(exitCode) (\(result.rawValue)).\n")
            await finish(job, raw: raw, result: result, exitCode: exitCode, error: message, log: log, with: afterwards)
        case .infrastructure(let message):
            await log.append("\n\nThe machine \(settings.vm) failed: \(message)\n")
            try await retryElsewhere(job, raw: raw, reason: message, log: log, with: afterwards)
        case .interrupted:
            let why = interruption.withLock { value in defer { value = nil }; return value } ?? .stop
            switch why {
            case .cancel(let reason):
                await log.append("\n\nThe job was cancelled: \(reason)\n")
                await finish(job, raw: raw, state: .cancelled, exitCode: nil, error: reason, log: log, with: afterwards)
            case .stop, .abort:
                let message = why == .stop ? "The worker is stopping; the build was stopped and the job put back at the head of the queue."
                    : "The build was aborted by the operator (USR1); the job was put back at the head of the queue."
                await log.append("\n\n\(message)\n")
                await log.drain()
                try await queue.requeue(raw, as: raw, with: reporter.stateCommands(
                    id: id, state: .requeued, fields: ["error": why == .stop ? "worker stopped" : "aborted by operator"],
                    event: .requeued, at: Timestamp.now()) + afterwards)
                logger.info("job requeued", metadata: ["job": "\(id)", "why": "\(why)"])
            }
        }
        // Reported first, cleaned up after: the job's result does not wait for the VM's reset.
        await machine.release()
    }

    private func runBuild(_ job: QueuedJob, log: LogStreamer) async -> BuildOutcome {
        var limits = settings.limits
        if let hard = job.payload.hardLimit { limits.hardLimit = min(limits.hardLimit, .seconds(hard)) }
        if let silence = job.payload.logSilence { limits.logSilence = min(limits.logSilence, .seconds(silence)) }
        let script = BuildScript.render(job.payload)
        let task = Task { [machine, limits] in
            await BuildRun.execute(machine: machine, script: script, jobID: job.payload.id, limits: limits) { chunk in
                await log.append(chunk)
            }
        }
        currentJob.withLock { $0 = job.payload.id }
        let stopNow = stop.withLock { request -> Bool in
            currentBuild.withLock { $0 = task }
            return request == .immediate
        }
        if stopNow { interrupt(.stop) }
        let poller = Task { [self] in await pollCancellation(of: job.payload.id) }
        let outcome = await task.value
        poller.cancel()
        currentBuild.withLock { $0 = nil }
        currentJob.withLock { $0 = nil }
        return outcome
    }

    /// An infrastructure failure: back to the head of the queue with one attempt more, or
    /// `errored` once the attempts are used up, so a broken machine never loops a job forever.
    private func retryElsewhere(_ job: QueuedJob, raw: [UInt8], reason: String, log: LogStreamer, with extra: [[String]]) async throws {
        let attempts = job.attempts + 1
        if attempts >= settings.maxAttempts {
            let message = "Infrastructure error on attempt \(attempts) of \(settings.maxAttempts): \(reason)"
            await log.append("\(message)\nDone. The job errored.\n")
            await finish(job, raw: raw, result: .errored, exitCode: nil, error: message, log: log, with: extra)
            return
        }
        await log.append("The job was requeued (attempt \(attempts + 1) of \(settings.maxAttempts)).\n")
        await log.drain()
        try await queue.requeue(raw, as: job.withAttempts(attempts), with: reporter.stateCommands(
            id: job.payload.id, state: .requeued, fields: ["attempts": String(attempts), "error": reason], event: .requeued, at: Timestamp.now()) + extra)
        logger.warning("job requeued after an infrastructure error", metadata: ["job": "\(job.payload.id)", "attempts": "\(attempts)", "error": "\(reason)"])
    }

    private func putBack(_ raw: [UInt8], reason: String) async throws {
        var commands: [[String]] = []
        if case .success(let job) = JobDecoder.decode(raw) {
            commands = reporter.stateCommands(id: job.payload.id, state: .requeued, fields: ["error": reason], event: .requeued, at: Timestamp.now())
        }
        try await queue.requeue(raw, as: raw, with: commands)
    }

    /// Closes the log, then writes the final state and drops the job from the processing list
    /// in one transaction (retried until Redis takes it).
    private func finish(_ job: QueuedJob, raw: [UInt8], result: BuildResult, exitCode: Int32?, error: String?, log: LogStreamer,
                        with extra: [[String]] = []) async {
        let state: JobState = switch result { case .passed: .passed; case .failed: .failed; case .errored: .errored }
        await finish(job, raw: raw, state: state, exitCode: exitCode, error: error, log: log, with: extra)
    }

    private func finish(_ job: QueuedJob, raw: [UInt8], state: JobState, exitCode: Int32?, error: String?, log: LogStreamer,
                        with extra: [[String]] = []) async {
        // The log's last entries and its `final` marker go in the same transaction as the state.
        let closing = await log.closingCommands()
        let id = job.payload.id
        var commands = reporter.stateCommands(
            id: id, state: state,
            fields: ["finished_at": Timestamp.now(), "exit_code": exitCode.map(String.init) ?? "", "error": error ?? ""],
            event: .finished, at: Timestamp.now())
        if state != .cancelled { commands.append(["INCR", keys.processedCount]) }
        commands.append(["HINCRBY", keys.worker(vm: settings.vm), "jobs_done", "1"])
        commands += extra
        do {
            try await queue.complete(raw, with: closing + commands.map(WorkQueue.bytes))
            logger.info("job finished", metadata: ["job": "\(id)", "result": "\(state.rawValue)", "exit_code": "\(exitCode.map(String.init) ?? "-")"])
        } catch {
            logger.error("could not record the end of job \(id); it stays in the processing list", metadata: ["error": "\(error)"])
        }
    }
}
