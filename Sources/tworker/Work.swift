import ArgumentParser
import Foundation
import TWorkerCore

struct Work: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one worker serving one VM (for debugging a single worker by hand).",
        discussion: """
        Takes jobs off the queue one at a time and runs each on the VM's machine.
        Signals: TERM/INT stop the build and put its job back at the head of the queue; \
        QUIT finishes the current job, then exits.
        Queues are taken in priority order: a job in an earlier queue always goes first; `*` is \
        every queue in <namespace>:queues, sorted.
        Environment: VM, QUEUE or QUEUES (a,b), VERBOSE=true, REDIS_URL work like the flags.
        """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "The VM this worker serves, e.g. worker-1 (default: $VM, else worker-1).")
    var vm: String?

    @Option(help: "The queues to take jobs from, highest priority first: a,b or * (default: $QUEUES, $QUEUE, else the config's queue).")
    var queue: String?

    @Flag(help: "Exit once the queue is empty.")
    var burst = false

    func validate() throws {
        if let queue {
            do { _ = try QueueList(parsing: queue) } catch { throw ValidationError("--queue '\(queue)': \(error)") }
        }
    }

    func run() async throws {
        MemoryTuning.apply()
        let config = try global.load(vm: vm, secrets: true).config
        let vmName = config.vm ?? "worker-1"
        guard vmName.range(of: "^[A-Za-z0-9_.-]{1,64}$", options: .regularExpression) != nil else {
            throw ValidationError("--vm '\(vmName)': a VM name is 1-64 characters of A-Z a-z 0-9 _ . -")
        }
        var logger = global.logger(config)
        // A master's log interleaves its workers' lines: each names its VM.
        logger[metadataKey: "vm"] = "\(vmName)"
        try await reportingFailures {
            let redis = try await RedisSetup.resolve(config, logger: logger)
            defer { redis.shutdown() }
            let provider: any MachineProvider
            switch config.provider {
            case .local: provider = LocalProvider(workspaceRoot: config.local.workspace)
            case .virtualbox: provider = VirtualBoxProvider(config: config, logger: logger)
            case .qemu: provider = QEMUProvider(config: config, logger: logger)
            }
            var settings = Worker.Settings(config: config, vm: vmName, queue: queue)
            settings.burst = burst
            settings.startPaused = ProcessInfo.processInfo.environment["TWORKER_START_PAUSED"] == "1"
            settings.masterPID = ProcessInfo.processInfo.environment["TWORKER_MASTER_PID"].flatMap { pid_t($0) }
            let machine = try provider.machine(named: vmName)
            let worker = Worker(settings: settings, machine: machine,
                                redis: redis.connect(), blockingRedis: redis.connect(),
                                subscriptionRedis: redis.connect(), logger: logger)
            let signals = await worker.handleSignals()
            defer { signals.cancel() }
            // A worker that exits stops its VM, whichever way it exits.
            do {
                try await worker.run()
            } catch {
                await machine.shutdown()
                throw error
            }
            await machine.shutdown()
        }
    }
}
