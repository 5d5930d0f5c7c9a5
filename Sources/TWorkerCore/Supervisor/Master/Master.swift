import Foundation
import Logging
import RedisClient

/// `tworker start`: the foreground master. Runs one `tworker work --vm worker-N` child per VM,
/// restarts one that dies (with backoff), forwards signals, reloads its config on HUP, grows and
/// shrinks on TTIN/TTOU, answers the control socket and watches memory and stuck jobs.
///
/// The decisions are `MasterState.reduce`'s; this actor feeds it events and carries out its effects.
public actor Master {
    /// How the master starts its children and reloads its config.
    public struct Setup: Sendable {
        /// The tworker binary the children run (the master's own).
        public var executable: String
        /// `--env`, `--config-dir`, `--verbose` as the master got them: put after `work`.
        public var arguments: [String]
        /// Loads the config again (HUP).
        public var loadConfig: @Sendable () throws -> WorkerConfig
        /// The supervisor's own settings for a config (temporarily from the environment).
        public var settings: @Sendable (WorkerConfig) -> SupervisorSettings
        /// For `status`.
        public var configDir: String?
        /// What the children must use as the master does whatever their config files say by
        /// then (`REDIS_URL` of the very server the master talks to, `TWORKER_STATE_DIR`,
        /// `TWORKER_REDIS_NAMESPACE`): only a restart of the master changes them.
        public var pinnedEnvironment: [String: String]
        /// Called every `heartbeat.interval`: `processingReaper` (requeues the jobs of
        /// `tworker:processing:*` lists whose worker's heartbeat expired, on any host).
        public var reaper: (@Sendable (WorkerConfig, RedisConnection, Logger) async -> Void)?
        /// The pool's metrics, when the HTTP listener serves them: the master counts restarts.
        public var metrics: PoolMetrics?

        public init(executable: String, arguments: [String], loadConfig: @escaping @Sendable () throws -> WorkerConfig,
                    settings: @escaping @Sendable (WorkerConfig) -> SupervisorSettings = { SupervisorSettings(config: $0) },
                    configDir: String? = nil, pinnedEnvironment: [String: String] = [:],
                    reaper: (@Sendable (WorkerConfig, RedisConnection, Logger) async -> Void)? = nil, metrics: PoolMetrics? = nil) {
            self.metrics = metrics
            self.executable = executable
            self.arguments = arguments
            self.loadConfig = loadConfig
            self.settings = settings
            self.configDir = configDir
            self.pinnedEnvironment = pinnedEnvironment
            self.reaper = reaper
        }
    }

    /// One pass of `ProcessingReaper` over every host's processing lists.
    public static let processingReaper: @Sendable (WorkerConfig, RedisConnection, Logger) async -> Void = { config, redis, logger in
        let reaper = ProcessingReaper(redis: redis, namespace: config.redis.namespace, defaultQueue: config.queueList.fallback ?? "builds",
                                      maxAttempts: config.limits.maxAttempts, retention: config.reporting.retention, logger: logger)
        do {
            let handled = try await reaper.reap()
            if handled > 0 { logger.info("reaper: recovered \(handled) job(s) of dead workers") }
            // Resque's registry, pruned of dead workers once their heartbeat is gone.
            try await ResqueWorkerRegistry.prune(redis: redis, namespace: config.redis.namespace, logger: logger)
        } catch {
            logger.debug("reaper pass failed", metadata: ["error": "\(error)"])
        }
    }

    var config: WorkerConfig
    var settings: SupervisorSettings
    var account: WorkerAccount?
    let setup: Setup
    let redis: RedisConnection
    let logger: Logger
    var state: MasterState
    /// Workers killed on the second TERM: their qemu processes are stopped before the master exits.
    private var machinesToStop: [String] = []
    /// Dead workers' heartbeats being removed (`forgetHeartbeat`), by a serial number: awaited before `run()` returns.
    private var forgetting: [Int: Task<Void, Never>] = [:]
    private var forgetCount = 0
    /// The master is stopping (QUIT, TERM, `tworker stop`): `/health` says draining.
    public var isStopping: Bool { state.isStopping }
    /// `tworker:drain:<host>`'s value as of the last host beat: who drained this host, and when.
    var drainedBy: String?
    /// The host is drained (`tworker drain`): status, `/health` and `tworker hosts` say so.
    public var isDrained: Bool { drainedBy != nil }
    let startedAt = ContinuousClock.now
    let startedWall = Date()
    let machineName = HostRecord.machineName()
    /// What `run()` takes in, in order: events from outside the actor (signals, child starts
    /// and exits, timers) and the tasks the effects ask for, which it starts in its task group.
    enum Input: Sendable {
        case event(MasterEvent)
        case launch(WorkerLaunch, generation: Int)
        case timer(at: ContinuousClock.Instant)
    }

    nonisolated let inputs: AsyncStream<Input>
    nonisolated let inputSink: AsyncStream<Input>.Continuation

    public init(config: WorkerConfig, settings: SupervisorSettings, account: WorkerAccount?, setup: Setup,
                redis: RedisConnection, logger: Logger) {
        self.config = config
        self.settings = settings
        self.account = account
        self.setup = setup
        self.redis = redis
        self.logger = logger
        state = MasterState(masterPID: getpid(), limits: Self.limits(config, settings))
        (inputs, inputSink) = AsyncStream.makeStream(of: Input.self)
    }

    static func limits(_ config: WorkerConfig, _ settings: SupervisorSettings) -> MasterState.Limits {
        MasterState.Limits(workerMemoryMiB: settings.workerMemory, hardLimitSeconds: config.timeouts.hardLimit,
                           stuckGrace: settings.stuckGrace)
    }

    // MARK: - Running

    /// Starts the children and supervises them until stopped; returns the exit code.
    public func run() async -> Int32 {
        await run(trappingQuit: true)
    }

    /// The exit code once `run()` has returned.
    public var exitCode: Int32? { state.finished }

    /// `trappingQuit`: false when a `ServiceGroup` owns QUIT and reports it as its graceful shutdown.
    func run(trappingQuit: Bool) async -> Int32 {
        // Trapped (and registered) before the first child starts, so no signal finds the default action.
        let untrapSignals = await trapSignals(quit: trappingQuit)
        logger.info("master started", metadata: ["pid": "\(getpid())", "workers": "\(config.vms.count)", "host": "\(config.host)"])
        await stopLeftoverWorkers()
        defer { untrapSignals() }
        apply(.boot(count: config.vms.count))
        // The children, their backoff timers and the monitor: all done or cancelled when `run()` returns.
        await withDiscardingTaskGroup { group in
            group.addTask { await self.monitor() }
            if state.finished == nil {
                for await input in inputs {
                    switch input {
                    case .event(let event):
                        if case .signal(let signal) = event, [SIGQUIT, SIGTERM, SIGINT].contains(signal) { await checkReadiness() }
                        apply(event)
                    case .launch(let launch, let generation):
                        group.addTask { [inputSink, logger] in
                            let description = await launch.run(logger: logger) { pid in
                                inputSink.yield(.event(.started(number: launch.number, generation: generation, pid: pid)))
                            }
                            inputSink.yield(.event(.exited(number: launch.number, generation: generation, description: description)))
                        }
                    case .timer(let at):
                        group.addTask { [inputSink] in
                            try? await Task.sleep(until: at, clock: .continuous)
                            inputSink.yield(.event(.tick))
                        }
                    }
                    if state.finished != nil { break }
                }
            }
            // Every child has exited or was killed (second TERM); what is left are timers and the monitor.
            group.cancelAll()
        }
        await stopMachinesLeftByKilledWorkers()
        await finishForgetting()
        await removeHostRecord()
        logger.info("master stopped", metadata: ["pid": "\(getpid())"])
        return state.finished ?? 0
    }

    /// Feeds one event to the state and carries out its effects; returns its control reply, if any.
    @discardableResult
    func apply(_ event: MasterEvent) -> ControlResponse? {
        var reply: ControlResponse?
        for effect in state.reduce(event, now: .now) {
            switch effect {
            case .spawn(let number, let generation, let paused):
                launch(number, generation: generation, paused: paused)
            case .signal(let pid, let signal):
                kill(pid, signal)
            case .killTree(let pid):
                ProcessProbe.killTree(pid)
            case .forgetHeartbeat(let vm, let pid):
                forgetHeartbeat(vm: vm, pid: pid)
            case .killBuildGroup(let vm):
                killBuildGroup(vm)
            case .stopMachine(let vm):
                machinesToStop.append(vm)
            case .countRestart(let vm, let reason):
                setup.metrics?.workerRestarted(reason: reason, vm: vm)
            case .log(let level, let message, let metadata):
                logger.log(level: level, "\(message)", metadata: metadata.isEmpty ? nil : metadata.mapValues { .string($0) })
            case .scheduleTimer(let at):
                inputSink.yield(.timer(at: at))
            case .reloadConfig:
                reload()
            case .reply(let response):
                reply = response
            case .finish:
                // Ends `run()`'s loop even when the last event came from the control socket or the monitor.
                inputSink.finish()
            }
        }
        return reply
    }

    /// A worker that died mid-build leaves its build's group running (a session of its own):
    /// the local build itself, or the ssh client feeding a VM (whose VM the next worker powers off).
    private func killBuildGroup(_ vm: String) {
        if config.provider == .local {
            guard let machine = try? LocalProvider(workspaceRoot: config.local.workspace).machine(named: vm) as? LocalMachine else { return }
            machine.buildGroup.killRecorded()
        } else {
            BuildGroupRecord.ofRemoteBuild(stateDir: config.stateDir, vm: vm).killRecorded()
        }
    }

    /// Asks `run()` to start `worker-N` in its task group; its start and exit come back as events.
    private func launch(_ number: Int, generation: Int, paused: Bool) {
        // A `workload` entry is worker N's queue list; a worker beyond the workload serves `queue`.
        let queues = config.workload.isEmpty ? nil : config.queueList(forWorker: number).description
        let launch = WorkerLaunch(executable: setup.executable, number: number, arguments: setup.arguments,
                                  account: account, paused: paused, pinnedEnvironment: setup.pinnedEnvironment, queues: queues)
        inputSink.yield(.launch(launch, generation: generation))
    }

    nonisolated static func seconds(_ duration: Duration) -> String {
        let value = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return String(format: "%.1f s", value)
    }
}

extension Master {
    /// How long a stopping master waits for Redis to take the removal of dead workers' heartbeats.
    static let forgetGrace: Duration = .seconds(5)

    /// Removes a dead worker's heartbeat record and its `tworker:workers` entry: checked and
    /// retried (a `LOADING` or lost connection is not the end of it), in the background so the
    /// master goes on supervising, and awaited by `finishForgetting` before the master exits.
    func forgetHeartbeat(vm: String, pid: pid_t) {
        let forget = Heartbeat.forget(vm: vm, pid: pid, keys: RedisKeys(namespace: config.redis.namespace, host: config.host))
        let number = forgetCount
        forgetCount += 1
        forgetting[number] = Task { [redis, logger] in
            do {
                _ = try await withRedisRetry(logger: logger, what: "forget \(vm)'s heartbeat") { try await redis.checkedPipeline([forget]) }
            } catch {
                logger.warning("could not remove the heartbeat of \(vm) (pid \(pid)); it expires by itself", metadata: ["error": "\(error)"])
            }
            self.forgot(number)
        }
    }

    private func forgot(_ number: Int) { forgetting[number] = nil }

    /// Waits for the removals still under way, up to `forgetGrace` (Redis may stay away).
    func finishForgetting() async {
        let pending = Array(forgetting.values)
        guard !pending.isEmpty else { return }
        let deadline = Task {
            try? await Task.sleep(for: Self.forgetGrace)
            for task in pending { task.cancel() }
        }
        for task in pending { await task.value }
        deadline.cancel()
    }

    /// `tworker stop` leaves nothing of tworker's running: a worker that stops cleanly stops its
    /// VM itself; one killed on a second TERM leaves its qemu, found here by pid file and `-name`.
    func stopMachinesLeftByKilledWorkers() async {
        guard config.provider == .qemu, !machinesToStop.isEmpty else { return }
        for vm in machinesToStop {
            let directory = (config.stateDir as NSString).appendingPathComponent("qemu/\(vm)")
            if let pid = await QEMUProcess(pidFile: directory + "/qemu.pid", name: config.vms.namePrefix + vm).stop(grace: .seconds(2)) {
                logger.info("stopped \(vm)'s qemu (pid \(pid)) its killed worker left")
            }
        }
        machinesToStop.removeAll()
    }
}
