import Foundation
import Logging
import RedisClient

/// `tworker vagrant import | rebuild | reprovision | status | remove`: building the worker VMs
/// from a base box, keeping them provisioned, and rolling changes through them while the other
/// workers keep taking jobs.
public struct Lifecycle: Sendable {
    public let config: WorkerConfig
    public let vms: WorkerVMs
    public let maintenance: Maintenance?
    public let progress: LifecycleProgress
    public let logger: Logger

    public init(config: WorkerConfig, runner: VBoxManageRunner, maintenance: Maintenance?, progress: LifecycleProgress, logger: Logger) {
        self.config = config
        self.vms = WorkerVMs(config: config, runner: runner, logger: logger)
        self.maintenance = maintenance
        self.progress = progress
        self.logger = logger
    }

    var workers: [Int] { Array(1...config.vms.count) }

    // MARK: - import

    /// Creates the base VM if missing, then every worker that does not exist yet.
    public func importAll() async throws {
        if config.provider == .qemu { return try await importQEMU() }
        try await ensureBase()
        for number in workers {
            let name = vms.workerName(number)
            if try await vms.exists(name) {
                progress.note("\(name)  exists, skipped")
                continue
            }
            let started = ContinuousClock.now
            try await vms.createWorker(number, progress: progress)
            record("create_worker", since: started)
        }
    }

    /// The base VM, imported from `vms.base_box` when it does not exist yet.
    func ensureBase() async throws {
        let base = vms.baseName
        if try await vms.exists(base) {
            if try await vms.currentSnapshotUUID(base) == nil {
                try await progress.step(base, "snapshot \(WorkerVMs.baseSnapshot)") {
                    try await vms.runner.run(.snapshotTake(base, name: WorkerVMs.baseSnapshot))
                }
            }
            return
        }
        try await importBase(from: config.vms.baseBox, as: base)
    }

    func importBase(from box: String, as name: String) async throws {
        let started = ContinuousClock.now
        let ovf = try await progress.step(name, "unpack \((box as NSString).lastPathComponent)") {
            try await BaseBox.ovf(for: box, stateDir: config.stateDir)
        }
        try await progress.step(name, "import") { try await vms.runner.run(.importAppliance(ovf, name: name)) }
        try await progress.step(name, "NAT rule guestssh on \(config.ssh.portBase)") {
            try await vms.runner.run(.setNATRule(name, rule: NATRule(name: "guestssh", hostIP: config.ssh.host, hostPort: config.ssh.portBase, guestPort: 22)))
        }
        try await progress.step(name, "snapshot \(WorkerVMs.baseSnapshot)") { try await vms.runner.run(.snapshotTake(name, name: WorkerVMs.baseSnapshot)) }
        record("import_base", since: started)
    }

    // MARK: - rebuild

    /// Rebuilds everything from the box: a new base (optionally provisioned with vagrant and
    /// packaged to a new box first), then each worker in turn while the others keep working,
    /// then the old base goes. Stops at the first failed step.
    public func rebuild(provisionWithVagrant: Bool) async throws {
        if config.provider == .qemu {
            // No box to bake with vagrant: the provisioned base is made from vms.base_image itself.
            return provisionWithVagrant ? try await provisionQEMUBase(from: qemuProvider.settings.baseImage) : try await rebuildQEMU()
        }
        var box = config.vms.baseBox
        if provisionWithVagrant { box = try await buildBoxWithVagrant() }
        let base = vms.baseName
        try await removeRetiredBases()
        // The old base still backs the running workers' disks: set it aside, delete it last.
        if let info = try await vms.runner.info(base) {
            if ["running", "paused"].contains(info.state ?? "") {
                try await progress.step(base, "power off") { try await vms.runner.run(.powerOff(base)) }
            }
            let retired = "\(base)-retired-\(Self.retiredStamp())"
            try await progress.step(base, "rename to \(retired)") {
                try await vms.runner.run(VBoxManageCommand(["modifyvm", base, "--name", retired], changes: base))
            }
        }
        try await importBase(from: box, as: base)
        try await rolling { number in
            try await vms.remove(vms.workerName(number), progress: progress)
            let started = ContinuousClock.now
            try await vms.createWorker(number, progress: progress)
            record("create_worker", since: started)
        }
        try await removeRetiredBases()
    }

    /// Deletes the bases earlier rebuilds set aside (`<base>-retired[-<time>]`) that no worker
    /// disk is a linked clone of any more, and keeps the others: a rebuild stopped part-way
    /// (Ctrl-C) leaves workers on two bases, and the next rebuild must neither fail on nor
    /// delete a base that a worker still runs on.
    func removeRetiredBases() async throws {
        let retired = vms.baseName + "-retired"
        for name in try await vms.runner.listVMs() where name == retired || name.hasPrefix(retired + "-") {
            if let info = try await vms.runner.info(name), ["running", "paused"].contains(info.state ?? "") {
                try await progress.step(name, "power off") { try await vms.runner.run(.powerOff(name)) }
            }
            do {
                try await vms.runner.run(.unregister(name))
                progress.note("\(name)  deleted (no worker used it any more)")
            } catch let failure as ProgramFailure where failure.code == "VBOX_E_OBJECT_IN_USE" {
                progress.note("\(name)  kept: worker VMs are still linked clones of it")
            }
        }
    }

    /// A retired base's suffix: UTC time, so names sort by age and never repeat within a host.
    static func retiredStamp(_ date: Date = Date()) -> String {
        String(Timestamp.format(date).filter { $0.isNumber }.prefix(14))
    }

    /// `vagrant up --provision` of a throwaway base VM, `vagrant package` of it to a new box that
    /// replaces `vms.base_box`, then `vagrant destroy`.
    func buildBoxWithVagrant() async throws -> String {
        let machine = config.vms.namePrefix + "base-build"
        let output = config.vms.baseBox.hasSuffix(".box") ? config.vms.baseBox
            : (config.vagrant.directory as NSString).appendingPathComponent("base.box")
        let staging = output + ".new"
        try? FileManager.default.removeItem(atPath: staging)
        let scripts = config.vms.provision.map { (config.vagrant.directory as NSString).appendingPathComponent("provision/\($0)") }
        // The Vagrantfile reads the base VM's name, port and provision scripts from these.
        let variables = [
            "TWORKER_BASE_BOX": config.vms.baseBox,
            "TWORKER_VM_NAME": machine,
            "TWORKER_SSH_PORT": String(config.ssh.portBase),
            "TWORKER_PROVISION": scripts.joined(separator: ":"),
            "VAGRANT_CWD": config.vagrant.directory,
        ]
        let runner = ProgramRunner(logger: logger)
        @Sendable func vagrant(_ arguments: [String]) async throws {
            try await runner.run(.vagrant(arguments, executable: config.vagrant.vagrant, directory: config.vagrant.directory, variables: variables))
        }
        let started = ContinuousClock.now
        try await progress.step(machine, "vagrant up --provision") { try await vagrant(["up", "--provision"]) }
        record("provision_base", since: started)
        try await progress.step(machine, "vagrant package") { try await vagrant(["package", "--base", machine, "--output", staging]) }
        try await progress.step(machine, "vagrant destroy") { try await vagrant(["destroy", "-f"]) }
        if FileManager.default.fileExists(atPath: output) { try FileManager.default.removeItem(atPath: output) }
        try FileManager.default.moveItem(atPath: staging, toPath: output)
        progress.note("\(machine)  packaged to \(output)")
        return output
    }

    // MARK: - reprovision

    public enum Strategy: String, Sendable, CaseIterable {
        /// Provision every worker VM in turn and retake its `sandbox`.
        case each
        /// Provision the base once, retake `base`, re-create the workers as linked clones.
        case base
    }

    /// What earlier runs say each strategy will take, as a line for the operator.
    public func estimateLine() -> String {
        let durations = StepDurations(stateDir: config.stateDir)
        let (each, base) = durations.estimates(workers: config.vms.count)
        func text(_ value: Double?) -> String { value.map { Self.format($0) } ?? "unknown (no earlier run measured it)" }
        return "Estimated time for \(config.vms.count) worker VMs: --strategy each \(text(each)), --strategy base \(text(base))"
    }

    public func reprovision(_ strategy: Strategy) async throws {
        if config.provider == .qemu {
            switch strategy {
            // A qemu worker is its base plus the provision scripts: re-creating it is provisioning it again.
            case .each: return try await recreateQEMU()
            // Provisioned again on top of what earlier runs provisioned, as virtualbox's base VM is.
            case .base: return try await provisionQEMUBase(from: qemuProvider.settings.base.current)
            }
        }
        switch strategy {
        case .each:
            try await rolling { number in
                let name = vms.workerName(number)
                let started = ContinuousClock.now
                try await vms.boot(name, from: WorkerVMs.sandboxSnapshot, port: vms.sshPort(number), progress: progress)
                try await vms.provision(name, port: vms.sshPort(number), progress: progress)
                // Names can repeat in VirtualBox: the old sandbox steps aside before the new one
                // is taken, so `restore sandbox` can only mean the new one.
                let old = try await progress.step(name, "set old \(WorkerVMs.sandboxSnapshot) aside") {
                    try await vms.renameSnapshot(name, WorkerVMs.sandboxSnapshot, to: "\(WorkerVMs.sandboxSnapshot)-old")
                }
                try await progress.step(name, "snapshot \(WorkerVMs.sandboxSnapshot) (online)") {
                    try await vms.runner.run(.snapshotTake(name, name: WorkerVMs.sandboxSnapshot, live: true))
                }
                try await progress.step(name, "power off") { try await vms.runner.run(.powerOff(name)) }
                if let old {
                    do {
                        try await progress.step(name, "delete old \(WorkerVMs.sandboxSnapshot)") { try await vms.runner.run(.snapshotDelete(name, name: old)) }
                    } catch {
                        progress.note("\(name)  keeping the old snapshot (renamed): \(error)")
                    }
                }
                vms.forgetHostKey(worker: "worker-\(number)")
                record("provision_worker", since: started)
            }
        case .base:
            let base = vms.baseName
            try await ensureBase()
            let started = ContinuousClock.now
            try await vms.boot(base, from: WorkerVMs.baseSnapshot, port: config.ssh.portBase, progress: progress)
            try await vms.provision(base, port: config.ssh.portBase, progress: progress)
            try await progress.step(base, "power off") { try await vms.runner.run(.powerOff(base)) }
            let old = try await progress.step(base, "set old \(WorkerVMs.baseSnapshot) aside") {
                try await vms.renameSnapshot(base, WorkerVMs.baseSnapshot, to: "\(WorkerVMs.baseSnapshot)-old")
            }
            try await progress.step(base, "snapshot \(WorkerVMs.baseSnapshot)") { try await vms.runner.run(.snapshotTake(base, name: WorkerVMs.baseSnapshot)) }
            record("provision_base", since: started)
            try await rolling { number in
                try await vms.remove(vms.workerName(number), progress: progress)
                let created = ContinuousClock.now
                try await vms.createWorker(number, progress: progress)
                record("create_worker", since: created)
            }
            if let old {
                do {
                    try await progress.step(base, "delete old \(WorkerVMs.baseSnapshot)") { try await vms.runner.run(.snapshotDelete(base, name: old)) }
                } catch {
                    progress.note("\(base)  keeping the old snapshot (renamed): \(error)")
                }
            }
        }
    }

    // MARK: - rolling

    /// Works through the workers `vms.max_unavailable` at a time: each is taken out of service
    /// (its worker finishes its job first), changed, and returned; the others keep working.
    /// VirtualBox writes stay one at a time.
    func rolling(_ change: (Int) async throws -> Void) async throws {
        let size = max(1, config.vms.maxUnavailable)
        var start = 0
        while start < workers.count {
            let group = Array(workers[start..<min(workers.count, start + size)])
            for number in group {
                let name = "worker-\(number)"
                try await progress.step(vms.workerName(number), "take out of service") { try await maintenance?.begin(name) }
            }
            for number in group {
                try await maintenance?.changing("worker-\(number)")
                try await change(number)
                try await progress.step(vms.workerName(number), "return to service") { try await maintenance?.end("worker-\(number)") }
            }
            start += size
        }
    }

    // MARK: - status and remove

    public struct Row: Sendable, Codable, Equatable {
        public var name: String
        public var state: String
        public var sshPort: Int
        public var snapshot: Bool
        public var worker: String
        public var job: String
        /// qemu only (left out of the JSON elsewhere): the accelerator the running qemu uses (or
        /// the next start will), its pid and resident memory, and the base image of its overlay.
        public var accel: String?
        public var pid: Int?
        public var rssMB: Int?
        public var base: String?
    }

    /// One row per worker VM.
    public func status(redis: RedisConnection?, keys: RedisKeys) async throws -> [Row] {
        if config.provider == .qemu { return try await statusQEMU(redis: redis, keys: keys) }
        var rows: [Row] = []
        for number in workers {
            let name = vms.workerName(number)
            let info = try await vms.runner.info(name)
            let (worker, job) = try await workerState(number, redis: redis, keys: keys)
            rows.append(Row(name: name, state: info?.state ?? "missing", sshPort: vms.sshPort(number),
                            snapshot: info.map { $0.snapshotNames.contains(WorkerVMs.sandboxSnapshot) } ?? false,
                            worker: worker, job: job))
        }
        return rows
    }

    /// Worker `worker-N`'s state and job as its heartbeat says ("none" without a worker).
    func workerState(_ number: Int, redis: RedisConnection?, keys: RedisKeys) async throws -> (worker: String, job: String) {
        guard let redis else { return ("none", "") }
        let replies = try await redis.pipeline([
            ["HMGET", keys.worker(vm: "worker-\(number)"), "state", "job"],
            ["EXISTS", keys.maintenance(vm: "worker-\(number)")],
        ])
        let fields = replies.first?.array ?? []
        var worker = fields.first?.string ?? "none"
        let job = fields.dropFirst().first?.string ?? ""
        if replies.last?.int == 1, worker == "none" { worker = WorkerState.maintenance.rawValue }
        return (worker, job)
    }

    /// Powers off and deletes the named workers (or every worker and then the base).
    public func remove(workers names: [String]) async throws {
        if config.provider == .qemu { return try await removeQEMU(workers: names) }
        let targets = names.isEmpty ? workers.map { vms.workerName($0) } + [vms.baseName + "-retired", vms.baseName]
            : names.map { config.vms.namePrefix + $0 }
        for vm in targets { try await vms.remove(vm, progress: progress) }
    }

    // MARK: -

    func record(_ step: String, since start: ContinuousClock.Instant) {
        var durations = StepDurations(stateDir: config.stateDir)
        durations.record(step, seconds: seconds(since: start))
        do { try durations.save() } catch { logger.warning("could not save step durations: \(error)") }
    }

    static func format(_ seconds: Double) -> String {
        seconds < 60 ? String(format: "%.1f s", seconds) : String(format: "%dm %02ds", Int(seconds) / 60, Int(seconds) % 60)
    }
}
