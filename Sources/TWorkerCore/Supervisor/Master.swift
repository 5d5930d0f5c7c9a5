import Dispatch
import Foundation
import Logging
import RedisClient
import Subprocess
import UnixSignals
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// `tworker start`: the foreground master. Runs one `tworker work --vm worker-N` child per VM,
/// restarts one that dies (with backoff), forwards signals, reloads its config on HUP, grows and
/// shrinks on TTIN/TTOU, answers the control socket and watches memory and stuck jobs.
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

    /// What happens when a child exits.
    enum AfterExit: Equatable {
        /// It was not asked to: restart it, with backoff if it keeps dying.
        case restart
        /// A graceful restart (HUP, `tworker restart`, memory, stuck): start a replacement at once.
        case replace
        /// TTOU or a smaller `vms.count`: the slot goes.
        case remove
        /// `tworker stop worker-N`: not restarted until `tworker restart`.
        case hold
    }

    struct Slot {
        let number: Int
        var vm: String { "worker-\(number)" }
        var pid: pid_t?
        var generation = 0
        var spawning = false
        var startedAt = ContinuousClock.now
        var startedWall = Date()
        /// Its heartbeat shows its pid: its signal handlers are installed.
        var ready = false
        var afterExit = AfterExit.restart
        var restartAt: ContinuousClock.Instant?
        var held = false
        var paused = false
        var backoff = RestartBackoff()
        var note: String?
        var lastExit: String?
        /// The job its heartbeat last showed, kept when the heartbeat expires (a wedged worker
        /// stops beating): the stuck watchdog's subject.
        var watchedJob: String?
    }

    private var config: WorkerConfig
    private var settings: SupervisorSettings
    private var account: WorkerAccount?
    private let setup: Setup
    private let redis: RedisConnection
    private let logger: Logger
    private var slots: [Int: Slot] = [:]
    private var stopping = StopRequest.none
    private var immediateSignals = 0
    private var paused = false
    private var finished: Int32?
    private var memory: MemoryWatchdog
    private let startedAt = ContinuousClock.now
    private let startedWall = Date()
    private var lastWatchdog = ContinuousClock.now
    private var lastReap = ContinuousClock.now

    public init(config: WorkerConfig, settings: SupervisorSettings, account: WorkerAccount?, setup: Setup,
                redis: RedisConnection, logger: Logger) {
        self.config = config
        self.settings = settings
        self.account = account
        self.setup = setup
        self.redis = redis
        self.logger = logger
        memory = MemoryWatchdog(limitMiB: settings.workerMemory)
    }

    // MARK: - Running

    /// Starts the children and supervises them until stopped; returns the exit code.
    public func run() async -> Int32 {
        // Trapped (and registered) before the first child starts, so no signal finds the default action.
        let sequence = await UnixSignalsSequence(trapping: .sigquit, .sigterm, .sigint, .sigusr1, .sigusr2, .sigcont, .sighup)
        let signals = Task { for await signal in sequence { self.handle(signal: signal.rawValue) } }
        let extraSignals = Self.trapResizeSignals { signal in Task { await self.handle(signal: signal) } }
        logger.info("master started", metadata: ["pid": "\(getpid())", "workers": "\(config.vms.count)", "host": "\(config.host)"])
        await stopLeftoverWorkers()
        for number in stride(from: 1, through: config.vms.count, by: 1) {
            slots[number] = Slot(number: number)
            spawn(number)
        }
        let monitor = Task { await self.monitor() }
        defer {
            signals.cancel()
            monitor.cancel()
            extraSignals.forEach { $0.cancel() }
        }
        while finished == nil {
            restartDue()
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.info("master stopped", metadata: ["pid": "\(getpid())"])
        return finished ?? 0
    }

    /// TTIN and TTOU, which swift-service-lifecycle's `UnixSignal` does not name: the same
    /// Dispatch signal sources `UnixSignalsSequence` uses underneath.
    nonisolated static func trapResizeSignals(_ handler: @escaping @Sendable (Int32) -> Void) -> [any DispatchSourceSignal] {
        [SIGTTIN, SIGTTOU].map { number in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handler(number) }
            source.resume()
            return source
        }
    }

    func handle(signal: Int32) {
        let name = Self.signalName(signal)
        switch signal {
        case SIGQUIT:
            logger.info("\(name): stopping gracefully: the workers finish their jobs, then exit")
            stop(.graceful)
        case SIGTERM, SIGINT:
            stop(.immediate)
        case SIGUSR1:
            logger.info("\(name): the workers abort their running jobs (requeued) and go on")
            for slot in slots.values where slot.ready { send(SIGUSR1, to: slot.number) }
        case SIGUSR2:
            logger.info("\(name): pausing: the workers take no new jobs")
            pause(nil)
        case SIGCONT:
            logger.info("\(name): resuming")
            resume(nil)
        case SIGHUP:
            reload()
        case SIGTTIN:
            grow()
        case SIGTTOU:
            shrink()
        default:
            break
        }
    }

    /// Workers of a previous master that died without stopping them (they run in their own
    /// sessions): found by their heartbeats on this host, stopped now (TERM: their jobs are
    /// requeued; SIGKILL after 10 s) so no VM gets two workers.
    private func stopLeftoverWorkers() async {
        guard let members = try? await redis.send(["SMEMBERS", RedisKeys.workers]).array?.compactMap(\.string) else { return }
        let ours = members.filter { $0.hasPrefix(config.host + ":") }
        guard !ours.isEmpty, let beats = try? await StatusReport.heartbeats(ours, redis: redis) else { return }
        var leftovers: [(String, pid_t)] = []
        for (member, beat) in zip(ours, beats) {
            guard let pid = beat["pid"].flatMap(pid_t.init), pid != getpid(), ProcessProbe.isAlive(pid),
                  let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  cmdline.contains("tworker"), cmdline.split(separator: "\0").contains("work") else { continue }
            leftovers.append((member, pid))
        }
        guard !leftovers.isEmpty else { return }
        for (member, pid) in leftovers {
            logger.warning("a worker of a previous master still runs (\(member), pid \(pid)): stopping it (TERM, its job is requeued)")
            kill(pid, SIGTERM)
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, leftovers.contains(where: { ProcessProbe.isAlive($0.1) }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for (_, pid) in leftovers where ProcessProbe.isAlive(pid) { ProcessProbe.killTree(pid) }
    }

    // MARK: - Children

    private func spawn(_ number: Int) {
        guard stopping == .none, var slot = slots[number], slot.pid == nil, !slot.spawning else { return }
        slot.generation += 1
        slot.spawning = true
        slot.restartAt = nil
        slot.held = false
        slot.ready = false
        slot.note = nil
        slot.watchedJob = nil
        slot.afterExit = .restart
        slot.startedAt = .now
        slot.startedWall = Date()
        if paused { slot.paused = true }
        slots[number] = slot
        let generation = slot.generation
        let arguments = ["work"] + setup.arguments + ["--vm", slot.vm]
        var options = PlatformOptions()
        // Its own session: a Ctrl-C or a supervisor's signal to the master's group reaches the
        // master only, which forwards what it means.
        options.createSession = true
        if let account {
            options.userID = account.uid
            options.groupID = account.gid
            options.supplementaryGroups = account.groups
        }
        // TWORKER_START_PAUSED: a replacement started while the pool is paused takes no job
        // before its USR2 could arrive. TWORKER_MASTER_PID: the worker exits when orphaned.
        var variables: [Environment.Key: String?] = ["VM": nil, "TWORKER_START_PAUSED": slot.paused ? "1" : nil,
                                                     "TWORKER_MASTER_PID": String(getpid())]
        for (name, value) in setup.pinnedEnvironment { variables[Environment.Key(stringLiteral: name)] = value }
        if let account {
            // As login would set them: a build tool reading HOME must not find root's.
            variables["HOME"] = account.home
            variables["USER"] = account.user
            variables["LOGNAME"] = account.user
        }
        let environment = Environment.inherit.updating(variables)
        let executable = setup.executable
        let logger = logger
        Task.detached { [self] in
            let status: TerminationStatus
            do {
                let result = try await Subprocess.run(
                    .path(FilePath(executable)), arguments: Arguments(arguments), environment: environment,
                    platformOptions: options, input: .none,
                    output: .fileDescriptor(.standardOutput, closeAfterSpawningProcess: false),
                    error: .fileDescriptor(.standardError, closeAfterSpawningProcess: false)
                ) { execution in
                    await self.started(number, generation, pid: execution.processIdentifier.value)
                }
                status = result.terminationStatus
            } catch {
                logger.error("could not start worker-\(number): \(error)")
                await self.exited(number, generation, description: "could not start: \(error)")
                return
            }
            let description = switch status {
            case .exited(let code): "exited with status \(code)"
            case .signaled(let signal): "was killed by \(Master.signalName(signal))"
            }
            await self.exited(number, generation, description: description)
        }
    }

    private func started(_ number: Int, _ generation: Int, pid: pid_t) {
        guard var slot = slots[number], slot.generation == generation else { return }
        slot.pid = pid
        slot.spawning = false
        slots[number] = slot
        logger.info("started \(slot.vm)", metadata: ["pid": "\(pid)"])
        // A stop that came while it was being started.
        if stopping != .none || slot.afterExit != .restart { kill(pid, SIGTERM) }
    }

    private func exited(_ number: Int, _ generation: Int, description: String) {
        guard var slot = slots[number], slot.generation == generation else { return }
        let pid = slot.pid.map(String.init) ?? "-"
        if config.provider == .local,
           let machine = try? LocalProvider(workspaceRoot: config.local.workspace).machine(named: slot.vm) as? LocalMachine {
            // A killed worker's build runs on in its own session: it dies with its worker, now.
            machine.buildGroup.killRecorded()
        }
        if let exitedPID = slot.pid {
            // A killed worker leaves its heartbeat behind; its master knows it is gone.
            let forget = Heartbeat.forget(vm: slot.vm, pid: exitedPID, keys: RedisKeys(namespace: config.redis.namespace, host: config.host))
            Task { [redis] in _ = try? await redis.send(forget) }
        }
        slot.pid = nil
        slot.spawning = false
        slot.ready = false
        slot.lastExit = description
        memory.forget(worker: slot.vm)
        if stopping != .none {
            logger.info("\(slot.vm) (pid \(pid)) \(description)")
            slots[number] = nil
            finishIfDone()
            return
        }
        switch slot.afterExit {
        case .remove:
            logger.info("\(slot.vm) (pid \(pid)) \(description); removed")
            slots[number] = nil
        case .hold:
            logger.info("\(slot.vm) (pid \(pid)) \(description); stopped until `tworker restart \(slot.vm)`")
            slot.held = true
            slot.note = "stopped by an operator"
            slots[number] = slot
        case .replace:
            logger.info("\(slot.vm) (pid \(pid)) \(description); starting its replacement")
            slot.backoff.reset()
            slots[number] = slot
            spawn(number)
        case .restart:
            let delay = slot.backoff.delay(afterUptime: .now - slot.startedAt)
            if delay == .zero {
                logger.warning("\(slot.vm) (pid \(pid)) \(description) unexpectedly; restarting it")
                slots[number] = slot
                spawn(number)
            } else {
                logger.warning("\(slot.vm) (pid \(pid)) \(description) unexpectedly (\(slot.backoff.streak) times in a row); restarting it in \(delay)")
                slot.restartAt = .now + delay
                slot.note = "exited \(slot.backoff.streak) times in a row"
                slots[number] = slot
            }
        }
    }

    private func restartDue() {
        let now = ContinuousClock.now
        for slot in slots.values where slot.pid == nil && !slot.spawning {
            if let at = slot.restartAt, at <= now { spawn(slot.number) }
        }
    }

    private func send(_ signal: Int32, to number: Int) {
        guard let pid = slots[number]?.pid else { return }
        kill(pid, signal)
    }

    /// QUIT to a ready child; a child whose handlers may not be installed yet has no job and
    /// gets TERM (QUIT's default action would dump core).
    private func quit(_ number: Int, immediate: Bool = false) {
        guard let slot = slots[number], let pid = slot.pid else { return }
        kill(pid, immediate || !slot.ready ? SIGTERM : SIGQUIT)
    }

    // MARK: - Stopping

    private func stop(_ request: StopRequest) {
        if request == .immediate {
            immediateSignals += 1
            if immediateSignals > 1 {
                logger.warning("second TERM/INT: killing the workers and exiting at once; their jobs stay in the processing lists for recovery")
                for slot in slots.values { if let pid = slot.pid { ProcessProbe.killTree(pid) } }
                finished = 1
                return
            }
            logger.info("stopping now: the workers stop their builds and requeue the jobs")
        }
        guard request > stopping else { return }
        stopping = request
        for slot in slots.values {
            if slot.pid != nil {
                quit(slot.number, immediate: request == .immediate)
            } else if !slot.spawning {
                slots[slot.number] = nil
            }
        }
        finishIfDone()
    }

    private func finishIfDone() {
        guard stopping != .none, finished == nil else { return }
        if slots.values.allSatisfy({ $0.pid == nil && !$0.spawning }) { finished = 0 }
    }

    // MARK: - Pause, resize, reload

    private func pause(_ number: Int?) {
        if number == nil { paused = true }
        for slot in slots.values where number == nil || slot.number == number {
            slots[slot.number]?.paused = true
            if slot.ready { send(SIGUSR2, to: slot.number) }
        }
    }

    private func resume(_ number: Int?) {
        if number == nil { paused = false }
        for slot in slots.values where number == nil || slot.number == number {
            slots[slot.number]?.paused = false
            send(SIGCONT, to: slot.number)
        }
    }

    private func grow() {
        guard stopping == .none else { return }
        let number = (slots.keys.max() ?? 0) + 1
        guard number <= 64 else {
            logger.warning("TTIN: already 64 workers")
            return
        }
        logger.info("TTIN: adding worker-\(number)")
        slots[number] = Slot(number: number)
        spawn(number)
    }

    private func shrink() {
        guard stopping == .none else { return }
        guard let slot = slots.values.filter({ $0.afterExit != .remove }).max(by: { $0.number < $1.number }) else {
            logger.warning("TTOU: no worker left to stop")
            return
        }
        logger.info("TTOU: stopping \(slot.vm) after its job")
        retire(slot.number)
    }

    private func retire(_ number: Int) {
        guard let slot = slots[number] else { return }
        if slot.pid == nil && !slot.spawning {
            slots[number] = nil
            return
        }
        slots[number]?.afterExit = .remove
        slots[number]?.note = "retiring after its job"
        quit(number)
    }

    private func reload() {
        guard stopping == .none else { return }
        let fresh: WorkerConfig
        do {
            fresh = try setup.loadConfig()
        } catch {
            logger.error("HUP: the config is invalid; keeping the old one:")
            for line in "\(error)".split(separator: "\n") { logger.error("  \(line)") }
            return
        }
        let freshSettings = setup.settings(fresh)
        let freshAccount: WorkerAccount?
        do {
            freshAccount = try WorkerAccount.resolve(freshSettings)
        } catch {
            logger.error("HUP: \(error.description); keeping the old config")
            return
        }
        if let change = Self.restartOnlyChange(from: config, to: fresh) {
            // Workers on another Redis or state_dir than their master's would be beyond its
            // reaper, its status and its embedded server: refuse rather than split the pool.
            logger.error("HUP: \(change) changed: that needs a restart of the master (tworker stop, then tworker start); keeping the old config")
            return
        }
        if let freshAccount, freshAccount != account, geteuid() == 0 {
            do {
                try WorkerFileAccess.prepare(fresh, for: freshAccount)
            } catch {
                logger.error("HUP: \(error.description); keeping the old config")
                return
            }
        }
        config = fresh
        settings = freshSettings
        account = freshAccount
        memory.limitKiB = freshSettings.workerMemory.map { $0 * 1024 }
        let count = fresh.vms.count
        logger.info("HUP: config reloaded; restarting the workers gracefully", metadata: ["workers": "\(count)"])
        for slot in slots.values.sorted(by: { $0.number < $1.number }) {
            if slot.number > count {
                retire(slot.number)
            } else if slot.pid != nil || slot.spawning {
                slots[slot.number]?.afterExit = .replace
                slots[slot.number]?.note = "restarting after its job"
                quit(slot.number)
            } else if !slot.held {
                spawn(slot.number)
            }
        }
        for number in stride(from: 1, through: count, by: 1) where slots[number] == nil {
            slots[number] = Slot(number: number)
            spawn(number)
        }
    }

    /// The keys only a restart may change, named as in the config file; nil when none changed.
    static func restartOnlyChange(from old: WorkerConfig, to new: WorkerConfig) -> String? {
        var changed: [String] = []
        if old.redis.url != new.redis.url { changed.append("redis.url") }
        if old.redis.namespace != new.redis.namespace { changed.append("redis.namespace") }
        if old.stateDir != new.stateDir { changed.append("state_dir") }
        return changed.isEmpty ? nil : changed.joined(separator: ", ")
    }

    // MARK: - Control socket

    public func control(_ request: ControlRequest) async -> ControlResponse {
        if request.command == .status { return ControlResponse(ok: true, status: await status()) }
        guard stopping == .none else {
            return .failure("the master (pid \(getpid())) is stopping")
        }
        var target: Int?
        if let worker = request.worker {
            guard let number = Self.workerNumber(worker), slots[number] != nil else {
                let known = slots.keys.sorted().map { "worker-\($0)" }.joined(separator: ", ")
                return .failure("no worker \(worker) in this master (workers: \(known.isEmpty ? "none" : known))")
            }
            target = number
        }
        switch (request.command, target) {
        case (.stop, nil):
            stop(request.now == true ? .immediate : .graceful)
            return ControlResponse(ok: true, message: request.now == true
                ? "master \(getpid()): stopping now (TERM): builds are stopped and their jobs requeued"
                : "master \(getpid()): stopping gracefully (QUIT): running jobs finish, then everything exits")
        case (.stop, let number?):
            let vm = "worker-\(number)"
            guard let slot = slots[number], !slot.held else { return ControlResponse(ok: true, message: "\(vm) is already stopped") }
            if slot.pid == nil && !slot.spawning {
                slots[number]?.held = true
                slots[number]?.restartAt = nil
                slots[number]?.note = "stopped by an operator"
            } else {
                slots[number]?.afterExit = .hold
                slots[number]?.note = "stopping"
                quit(number, immediate: request.now == true)
            }
            return ControlResponse(ok: true, message: "\(vm): stopping\(request.now == true ? " now" : " after its job"); `tworker restart \(vm)` starts it again")
        case (.restart, _):
            let numbers = target.map { [$0] } ?? slots.keys.sorted()
            for number in numbers {
                guard let slot = slots[number] else { continue }
                if slot.pid != nil || slot.spawning {
                    slots[number]?.afterExit = .replace
                    slots[number]?.note = "restarting after its job"
                    quit(number)
                } else {
                    slots[number]?.backoff.reset()
                    spawn(number)
                }
            }
            return ControlResponse(ok: true, message: "restarting \(target.map { "worker-\($0)" } ?? "every worker") gracefully (each after its current job)")
        case (.pause, _):
            pause(target)
            return ControlResponse(ok: true, message: "paused \(target.map { "worker-\($0)" } ?? "every worker"): no new jobs are taken")
        case (.resume, _):
            resume(target)
            return ControlResponse(ok: true, message: "resumed \(target.map { "worker-\($0)" } ?? "every worker")")
        case (.status, _):
            return ControlResponse(ok: true, status: await status())
        }
    }

    static func workerNumber(_ name: String) -> Int? {
        guard name.hasPrefix("worker-"), let number = Int(name.dropFirst("worker-".count)), number > 0 else { return nil }
        return number
    }

    /// The master's view of its children with their heartbeats, plus queue depths.
    public func status() async -> StatusReport {
        let now = Date()
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        let snapshot = slots.values.sorted { $0.number < $1.number }
        let beats = (try? await StatusReport.heartbeats(snapshot.map { keys.workerMember(vm: $0.vm) }, redis: redis))
            ?? Array(repeating: [:], count: snapshot.count)
        var workers: [StatusReport.Worker] = []
        let clock = ContinuousClock.now
        for (slot, beat) in zip(snapshot, beats) {
            var worker = StatusReport.Worker(host: config.host, vm: slot.vm, state: "starting")
            if let pid = slot.pid {
                worker.pid = pid
                if beat["pid"].flatMap(Int32.init) == pid { worker.apply(heartbeat: beat, now: now) }
                worker.rssKiB = ProcessProbe.rssKiB(pid)
            } else if slot.held {
                worker.state = "stopped"
            } else if let at = slot.restartAt {
                worker.state = "restarting"
                let left = at - clock
                worker.note = "restarts in \(StatusReport.duration(Double(left.components.seconds) + 1))"
            }
            if let note = slot.note { worker.note = [worker.note, note].compactMap { $0 }.joined(separator: "; ") }
            if slot.paused && worker.state != "paused" && slot.pid != nil {
                worker.note = [worker.note, "pause requested"].compactMap { $0 }.joined(separator: "; ")
            }
            workers.append(worker)
        }
        let (queues, failed) = (try? await StatusReport.queues(keys: keys, redis: redis)) ?? ([], 0)
        let uptime = clock - startedAt
        let master = StatusReport.Master(pid: getpid(), startedAt: Timestamp.format(startedWall),
                                         uptime: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18,
                                         env: config.env, configDir: setup.configDir)
        let allPaused = paused || (!slots.isEmpty && slots.values.allSatisfy(\.paused))
        return StatusReport(source: .master, host: config.host, master: master, paused: allPaused,
                            workers: workers, queues: queues, failed: failed)
    }

    // MARK: - Monitoring (Redis and /proc)

    private func monitor() async {
        while !Task.isCancelled && finished == nil {
            await checkReadiness()
            let now = ContinuousClock.now
            if now - lastWatchdog >= settings.watchdogInterval {
                lastWatchdog = now
                checkMemory()
                await checkStuck()
            }
            if now - lastReap >= .seconds(max(1, config.heartbeat.interval)) {
                lastReap = now
                if let reaper = setup.reaper { await reaper(config, redis, logger) }
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    /// A child is ready once its heartbeat carries its pid; a pause asked for before then is delivered now.
    private func checkReadiness() async {
        let waiting = slots.values.filter { $0.pid != nil && !$0.ready }
        guard !waiting.isEmpty else { return }
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        guard let replies = try? await redis.pipeline(waiting.map { ["HGET", keys.worker(vm: $0.vm), "pid"] }) else { return }
        for (slot, reply) in zip(waiting, replies) {
            guard let pid = slots[slot.number]?.pid, pid == slot.pid, reply.int == Int64(pid) else { continue }
            slots[slot.number]?.ready = true
            logger.debug("\(slot.vm) is ready", metadata: ["pid": "\(pid)"])
            if slots[slot.number]?.paused == true { kill(pid, SIGUSR2) }
        }
    }

    private func checkMemory() {
        guard memory.limitKiB != nil else { return }
        for slot in slots.values {
            guard let pid = slot.pid, slot.afterExit == .restart else { continue }
            let rss = ProcessProbe.rssKiB(pid)
            if memory.check(worker: slot.vm, rssKiB: rss) {
                logger.warning("\(slot.vm) (pid \(pid)) uses \(rss.map { $0 / 1024 } ?? 0) MiB, above limits.worker_memory (\(settings.workerMemory ?? 0) MiB) twice in a row: replacing it after its current job")
                slots[slot.number]?.afterExit = .replace
                slots[slot.number]?.note = "replaced after its job: memory"
                memory.forget(worker: slot.vm)
                quit(slot.number)
            }
        }
    }

    /// Enforces `timeouts.hard_limit` + grace on each worker's running job, for a worker too
    /// wedged to do it itself: SIGKILL (its builds too); the replacement recovers the job.
    private func checkStuck() async {
        let watched = slots.values.filter { $0.pid != nil && $0.ready }
        guard !watched.isEmpty else { return }
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        let watchdog = StuckWatchdog(hardLimit: .seconds(config.timeouts.hardLimit), grace: settings.stuckGrace)
        guard let beats = try? await redis.pipeline(watched.map { ["HMGET", keys.worker(vm: $0.vm), "pid", "job"] }) else { return }
        var jobs: [(Slot, String)] = []
        for (slot, reply) in zip(watched, beats) {
            let fields = reply.array ?? []
            var job = slot.watchedJob
            if fields.count == 2, fields[0].int == Int64(slot.pid ?? -1) {
                // A live heartbeat of this very process says what it runs (nothing: "").
                job = fields[1].string.flatMap { $0.isEmpty ? nil : $0 }
                if slots[slot.number]?.pid == slot.pid { slots[slot.number]?.watchedJob = job }
            }
            if let job { jobs.append((slot, job)) }
        }
        guard !jobs.isEmpty,
              let started = try? await redis.pipeline(jobs.map { ["HGET", keys.job($0.1), "started_at"] }) else { return }
        let now = Date()
        for ((slot, job), reply) in zip(jobs, started) {
            guard case .kill(let elapsed) = watchdog.check(startedAt: reply.string.flatMap(Timestamp.parse), now: now),
                  let pid = slots[slot.number]?.pid, pid == slot.pid, slots[slot.number]?.afterExit != .replace || slots[slot.number]?.note?.hasPrefix("killed") != true
            else { continue }
            logger.error("\(slot.vm) (pid \(pid)): job \(job) has run \(Self.seconds(elapsed)), past timeouts.hard_limit (\(config.timeouts.hardLimit) s) + \(Self.seconds(settings.stuckGrace)) grace: killing the worker; its replacement recovers the job")
            slots[slot.number]?.afterExit = .replace
            slots[slot.number]?.note = "killed: job \(job) overran its hard limit"
            ProcessProbe.killTree(pid)
        }
    }

    nonisolated static func seconds(_ duration: Duration) -> String {
        let value = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return String(format: "%.1f s", value)
    }

    nonisolated static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGQUIT: "SIGQUIT"
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGKILL: "SIGKILL"
        case SIGHUP: "SIGHUP"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGCONT: "SIGCONT"
        case SIGTTIN: "SIGTTIN"
        case SIGTTOU: "SIGTTOU"
        case SIGSEGV: "SIGSEGV"
        case SIGABRT: "SIGABRT"
        default: "signal \(signal)"
        }
    }
}
