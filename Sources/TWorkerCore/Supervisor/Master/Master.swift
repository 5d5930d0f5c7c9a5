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

        public init(executable: String, arguments: [String], loadConfig: @escaping @Sendable () throws -> WorkerConfig,
                    settings: @escaping @Sendable (WorkerConfig) -> SupervisorSettings = { SupervisorSettings(config: $0) },
                    configDir: String? = nil, pinnedEnvironment: [String: String] = [:],
                    reaper: (@Sendable (WorkerConfig, RedisConnection, Logger) async -> Void)? = nil) {
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
        let reaper = ProcessingReaper(redis: redis, namespace: config.redis.namespace, defaultQueue: config.queue,
                                      maxAttempts: config.limits.maxAttempts, retention: config.reporting.retention, logger: logger)
        do {
            let handled = try await reaper.reap()
            if handled > 0 { logger.info("reaper: recovered \(handled) job(s) of dead workers") }
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
    let startedAt = ContinuousClock.now
    let startedWall = Date()
    /// Signals, child starts and exits, timers: everything that happens outside the actor.
    nonisolated let events: AsyncStream<MasterEvent>
    nonisolated let eventSink: AsyncStream<MasterEvent>.Continuation

    public init(config: WorkerConfig, settings: SupervisorSettings, account: WorkerAccount?, setup: Setup,
                redis: RedisConnection, logger: Logger) {
        self.config = config
        self.settings = settings
        self.account = account
        self.setup = setup
        self.redis = redis
        self.logger = logger
        state = MasterState(masterPID: getpid(), limits: Self.limits(config, settings))
        (events, eventSink) = AsyncStream.makeStream(of: MasterEvent.self)
    }

    static func limits(_ config: WorkerConfig, _ settings: SupervisorSettings) -> MasterState.Limits {
        MasterState.Limits(workerMemoryMiB: settings.workerMemory, hardLimitSeconds: config.timeouts.hardLimit,
                           stuckGrace: settings.stuckGrace)
    }

    // MARK: - Running

    /// Starts the children and supervises them until stopped; returns the exit code.
    public func run() async -> Int32 {
        // Trapped (and registered) before the first child starts, so no signal finds the default action.
        let signals = await trapSignals()
        logger.info("master started", metadata: ["pid": "\(getpid())", "workers": "\(config.vms.count)", "host": "\(config.host)"])
        await stopLeftoverWorkers()
        apply(.boot(count: config.vms.count))
        let monitor = Task { await self.monitor() }
        defer {
            signals.cancel()
            monitor.cancel()
        }
        if state.finished == nil {
            for await event in events {
                apply(event)
                if state.finished != nil { break }
            }
        }
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
                let forget = Heartbeat.forget(vm: vm, pid: pid, keys: RedisKeys(namespace: config.redis.namespace, host: config.host))
                Task { [redis] in _ = try? await redis.send(forget) }
            case .killBuildGroup(let vm):
                killBuildGroup(vm)
            case .log(let level, let message, let metadata):
                logger.log(level: level, "\(message)", metadata: metadata.isEmpty ? nil : metadata.mapValues { .string($0) })
            case .scheduleTimer(let at):
                Task { [eventSink] in
                    try? await Task.sleep(until: at, clock: .continuous)
                    eventSink.yield(.tick)
                }
            case .reloadConfig:
                reload()
            case .reply(let response):
                reply = response
            case .finish:
                // Ends `run()`'s loop even when the last event came from the control socket or the monitor.
                eventSink.finish()
            }
        }
        return reply
    }

    private func killBuildGroup(_ vm: String) {
        guard config.provider == .local,
              let machine = try? LocalProvider(workspaceRoot: config.local.workspace).machine(named: vm) as? LocalMachine else { return }
        machine.buildGroup.killRecorded()
    }

    /// Starts `worker-N` and reports its start and exit as events.
    private func launch(_ number: Int, generation: Int, paused: Bool) {
        let launch = WorkerLaunch(executable: setup.executable, number: number, arguments: setup.arguments,
                                  account: account, paused: paused, pinnedEnvironment: setup.pinnedEnvironment)
        let sink = eventSink
        let logger = logger
        Task.detached {
            let description = await launch.run(logger: logger) { pid in
                sink.yield(.started(number: number, generation: generation, pid: pid))
            }
            sink.yield(.exited(number: number, generation: generation, description: description))
        }
    }

    nonisolated static func seconds(_ duration: Duration) -> String {
        let value = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return String(format: "%.1f s", value)
    }
}
