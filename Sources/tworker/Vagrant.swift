import ArgumentParser
import Foundation
import Logging
import RedisClient
import TWorkerCore

struct Vagrant: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build and maintain the worker VMs: import, rebuild, reprovision, status, remove.",
        discussion: """
        VMs are named <vms.name_prefix>worker-N (and <vms.name_prefix>base); tworker never touches \
        a VM outside its prefix. Lifecycle commands hold a host-wide lock: a second one says which \
        pid runs. Exit codes: 0 success; 1 a step failed (the step, the VM and the tool's stderr are \
        printed), or confirmation was refused; 64 usage error; 78 configuration error.
        """,
        subcommands: [Import.self, Rebuild.self, Reprovision.self, Status.self, Remove.self]
    )
}

/// `tworker vms ...`: the same command group under a provider-neutral name (virtualbox and qemu).
struct VMs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vms",
        abstract: "Build and maintain the worker VMs (virtualbox or qemu): import, rebuild, reprovision, status, remove.",
        discussion: Vagrant.configuration.discussion + " `tworker vagrant ...` is the same group.",
        subcommands: Vagrant.configuration.subcommands
    )
}

/// Shared set-up of the lifecycle commands.
struct LifecycleContext {
    let config: WorkerConfig
    let logger: Logger
    let redis: RedisSetup
    let connection: RedisConnection
    let lifecycle: Lifecycle
    let lock: LifecycleLock?
    let signals: ExitOnSignals

    /// `needs` names the programs the command runs: a missing one stops it before it touches anything.
    static func make(_ global: GlobalOptions, locking: Bool = true,
                     needs: (WorkerConfig) -> [Program] = { Program.forLifecycle($0) }) async throws -> LifecycleContext {
        // INT/TERM/HUP end what runs (programs sit in process groups of their own, out of a
        // terminal's reach) and leave the embedded Redis as a normal end does.
        let signals = await ExitOnSignals.trap()
        let config = try global.load().config
        try ProgramLocator().check(needs(config))
        let logger = global.logger(config)
        let lock = locking ? try LifecycleLock(stateDir: config.stateDir) : nil
        let redis = try await RedisSetup.resolve(config, logger: logger)
        let connection = redis.connect()
        let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
        let runner = VBoxManageRunner(executable: config.virtualbox.vboxmanage, namePrefix: config.vms.namePrefix,
                                      timeout: .seconds(config.timeouts.vboxmanage), logger: logger)
        // A worker finishes its running job before its VM is touched: at most a hard limit.
        let maintenance = Maintenance(redis: connection, keys: keys, drainTimeout: .seconds(config.timeouts.hardLimit + 60), logger: logger)
        let lifecycle = Lifecycle(config: config, runner: runner, maintenance: maintenance, progress: LifecycleProgress(), logger: logger)
        let context = LifecycleContext(config: config, logger: logger, redis: redis, connection: connection,
                                       lifecycle: lifecycle, lock: lock, signals: signals)
        signals.cleanUp {
            ProgramGroups.terminateAll()
            context.lifecycle.progress.close()
            redis.shutdown()  // not the connection: the command's own task may be using it
        }
        return context
    }

    func finish() {
        signals.cancel()
        lifecycle.progress.close()
        connection.close()
        redis.shutdown()
    }
}

/// Asks on a terminal; refuses (saying why) without one unless `--yes` was given.
func confirm(_ question: String, yes: Bool) throws {
    if yes { return }
    guard isatty(STDIN_FILENO) == 1 else {
        printError("refusing without confirmation: standard input is not a terminal; pass --yes to \(question)")
        throw ExitCode.failure
    }
    FileHandle.standardOutput.write(Data("This will \(question). Type 'yes' to continue: ".utf8))
    guard readLine()?.trimmingCharacters(in: .whitespaces).lowercased() == "yes" else {
        printError("not confirmed; nothing was changed")
        throw ExitCode.failure
    }
}

extension Vagrant {
    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the base VM from vms.base_box (once) and every worker VM that does not exist yet.",
            discussion: """
            Workers are linked clones of the base's snapshot: N workers cost one disk. Running it twice changes nothing. \
            provider: qemu: each worker gets a qcow2 overlay on vms.base_image, boots, runs the provision scripts and \
            takes its online snapshot sandbox; on a base provisioned by reprovision --strategy base the scripts already ran there.
            """
        )
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await reportingFailures {
                let context = try await LifecycleContext.make(global) { Program.forLifecycle($0, importingBase: true) }
                defer { context.finish() }
                try await context.lifecycle.importAll()
            }
        }
    }

    struct Rebuild: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rebuild every VM from the base box, one worker at a time while the others keep working.",
            discussion: """
            With --provision the base is first brought up with vagrant, provisioned and packaged to a new box. \
            provider: qemu: every worker is re-created on vms.base_image and provisioned; with --provision the scripts \
            run once in a VM on vms.base_image, which becomes a new base under <state_dir>/qemu/images/ that the workers \
            are re-created on.
            """
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Do not ask for confirmation.") var yes = false
        @Flag(help: "vagrant up the base with provisioning and package it to a new box first (qemu: provision a new base image once).") var provision = false

        func run() async throws {
            try await reportingFailures {
                let context = try await LifecycleContext.make(global) { Program.forLifecycle($0, buildingBox: provision, importingBase: true) }
                defer { context.finish() }
                try confirm("delete and re-create every VM named \(context.config.vms.namePrefix)*", yes: yes)
                try await context.lifecycle.rebuild(provisionWithVagrant: provision)
            }
        }
    }

    struct Reprovision: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the provision scripts again, one worker at a time while the others keep working.",
            discussion: """
            each: provision every worker VM and retake its sandbox. base: provision the base once, retake base, re-create \
            the workers as linked clones. provider: qemu: each re-creates every worker's overlay and provisions it; base \
            provisions a VM on the current base once, flattens it to a new base file under <state_dir>/qemu/images/ \
            (the one running workers use is never written), re-creates the workers' overlays on it, and deletes bases \
            no overlay uses any more.
            """
        )
        @OptionGroup var global: GlobalOptions
        @Option(help: "each or base.") var strategy: String

        func validate() throws {
            guard Lifecycle.Strategy(rawValue: strategy) != nil else {
                throw ValidationError("--strategy must be each or base, got '\(strategy)'")
            }
        }

        func run() async throws {
            try await reportingFailures {
                let context = try await LifecycleContext.make(global) {
                    // --strategy base imports the base first when it is missing.
                    Program.forLifecycle($0, provisioning: true, importingBase: strategy == Lifecycle.Strategy.base.rawValue)
                }
                defer { context.finish() }
                print(context.lifecycle.estimateLine())
                try await context.lifecycle.reprovision(Lifecycle.Strategy(rawValue: strategy)!)
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One row per worker VM: its state (qemu: pid, RSS, accel), SSH port, sandbox snapshot, worker state, current job."
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await reportingFailures {
                let context = try await LifecycleContext.make(global, locking: false)
                defer { context.finish() }
                let rows = try await context.lifecycle.status(
                    redis: context.connection, keys: RedisKeys(namespace: context.config.redis.namespace, host: context.config.host))
                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    encoder.keyEncodingStrategy = .convertToSnakeCase
                    print(String(decoding: try encoder.encode(rows), as: UTF8.self))
                } else {
                    let header = ["VM", "STATE", "SSH", "SANDBOX", "WORKER", "JOB"]
                    let table = [header] + rows.map { [$0.name, $0.state, String($0.sshPort), $0.snapshot ? "yes" : "no", $0.worker, $0.job] }
                    let widths = header.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
                    for line in table {
                        print(line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                            .trimmingCharacters(in: .whitespaces))
                    }
                }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Power off and delete worker VMs (all of them and the base when none is named; qemu: the overlays, never vms.base_image)."
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Do not ask for confirmation.") var yes = false
        @Argument(help: "worker-N names.") var workers: [String] = []

        func validate() throws {
            for name in workers where VirtualBoxProvider.workerNumber(name) == nil {
                throw ValidationError("'\(name)' is not a worker name (worker-N)")
            }
        }

        func run() async throws {
            try await reportingFailures {
                let context = try await LifecycleContext.make(global)
                defer { context.finish() }
                let what = workers.isEmpty ? "every VM named \(context.config.vms.namePrefix)*" : workers.joined(separator: ", ")
                try confirm("power off and delete \(what)", yes: yes)
                try await context.lifecycle.remove(workers: workers)
            }
        }
    }
}
