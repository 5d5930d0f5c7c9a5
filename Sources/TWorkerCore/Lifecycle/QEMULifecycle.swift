import Foundation
import RedisClient

/// The lifecycle commands for `provider: qemu`: a worker VM is a qcow2 overlay on
/// `vms.base_image` (or on a provisioned copy of it, `QEMUBaseImage`) holding the online
/// snapshot `sandbox`, under `<state_dir>/qemu/worker-N/`.
extension Lifecycle {
    var qemuProvider: QEMUProvider { QEMUProvider(config: config, logger: logger) }

    /// For each worker without a sandbox: an overlay on the base, a first boot, the provision
    /// scripts over SSH, `savevm sandbox`, then the VM is stopped. Running it twice changes nothing.
    /// On a provisioned base (`reprovision --strategy base`) the scripts already ran there, once.
    func importQEMU() async throws {
        let provider = qemuProvider
        let provisioning = provider.settings.base.provisioned == nil
        for number in workers {
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            if try await machine.hasSandbox() {
                progress.note("\(machine.vmName)  has its \(QEMUProvider.sandboxSnapshot) snapshot, skipped")
                continue
            }
            try await makeSandbox(machine, provisioning: provisioning)
        }
    }

    /// `rebuild`: every worker re-created from `vms.base_image` itself (a provisioned base is
    /// dropped, as virtualbox's rebuild imports the box again), provision scripts on each.
    func rebuildQEMU() async throws {
        let provider = qemuProvider
        let base = provider.settings.base
        if let provisioned = base.provisioned {
            try await progress.step(provider.baseMachine().vmName, "stop using \((provisioned as NSString).lastPathComponent)") {
                try base.use(nil)
            }
        }
        try await recreateQEMU()
        try await deleteUnusedQEMUBases()
    }

    /// `reprovision --strategy each`: worker by worker, out of service (`vms.max_unavailable` at
    /// a time), its qemu stopped, a new overlay on the current base, the provision scripts and a
    /// new `sandbox`. The worker's next job starts the new VM.
    func recreateQEMU() async throws {
        let provider = qemuProvider
        try await rolling { number in
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            try await progress.step(machine.vmName, "stop") { await machine.shutdown() }
            try await makeSandbox(machine, provisioning: true)
        }
    }

    /// `reprovision --strategy base` (from the current base) and `rebuild --provision` (from
    /// `vms.base_image`): the provision scripts run once, in a VM on a throwaway overlay of
    /// `source`, which is then flattened into a new base file; the workers are rolled onto it
    /// (`vms.max_unavailable` at a time, each finishing its job first) with a first boot and a
    /// new `sandbox`, and no provision scripts of their own. Bases no overlay uses any more go last.
    ///
    /// The base the running workers' overlays read from is never written: the new one is a new file.
    func provisionQEMUBase(from source: String) async throws {
        let provider = qemuProvider
        let base = provider.settings.base
        let machine = provider.baseMachine()
        let image = base.nextImage()
        let started = ContinuousClock.now
        do {
            try await machine.bootOnNewOverlay(base: source, step: { name, body in try await progress.step(machine.vmName, name, body) })
            try await vms.provision(machine.vmName, port: machine.sshPort, progress: progress)
            try await progress.step(machine.vmName, "sync and stop") {
                // The guest's own writes reach the disk before qemu quits (quit flushes qemu's side).
                var sync = ProgramCommand.ssh(machine.target, remoteCommand: ["sync"])
                sync.timeout = provider.settings.qemuTimeout
                try await provider.runner.run(sync)
                await machine.shutdown()
            }
        } catch {
            await machine.shutdown()
            throw error
        }
        try await progress.step(machine.vmName, "flatten to \((image as NSString).lastPathComponent)") {
            try FileManager.default.createDirectory(atPath: base.directory, withIntermediateDirectories: true)
            // Written aside and renamed: a half-written base is never named `base-*.qcow2`.
            let partial = image + ".partial"
            try? FileManager.default.removeItem(atPath: partial)
            do {
                try await provider.runner.run(.qemuImg(.flatten(source: machine.overlay, destination: partial),
                                                       executable: provider.settings.img, timeout: Self.flattenTimeout))
                try FileManager.default.moveItem(atPath: partial, toPath: image)
            } catch {
                try? FileManager.default.removeItem(atPath: partial)
                throw error
            }
            try? FileManager.default.removeItem(atPath: machine.overlay)
            try base.use(image)
        }
        record("provision_base", since: started)
        try await rolling { number in
            let worker = try provider.qemuMachine(named: "worker-\(number)")
            try await progress.step(worker.vmName, "stop") { await worker.shutdown() }
            try await makeSandbox(worker, provisioning: false)
        }
        try await deleteUnusedQEMUBases()
    }

    /// Flattening copies the whole disk: minutes for a large base, far beyond `timeouts.qemu`.
    static let flattenTimeout: Duration = .seconds(3600)

    /// Deletes provisioned bases that are not current and that no overlay under
    /// `<state_dir>/qemu/` is made on. Any overlay qemu-img cannot read keeps them all.
    func deleteUnusedQEMUBases() async throws {
        let provider = qemuProvider
        let base = provider.settings.base
        let current = base.current
        let old = base.images.filter { $0 != current }
        guard !old.isEmpty else { return }
        let root = (config.stateDir as NSString).appendingPathComponent("qemu")
        var used: Set<String> = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
            let overlay = "\(root)/\(entry)/disk.qcow2"
            guard FileManager.default.fileExists(atPath: overlay) else { continue }
            do {
                let info = try await provider.runner.run(.qemuImg(.info(image: overlay), executable: provider.settings.img,
                                                                  timeout: provider.settings.qemuTimeout))
                if let backing = QEMUImgCommand.backingFile(infoJSON: info.stdout) { used.insert(backing) }
            } catch {
                progress.note("\(provider.baseMachine().vmName)  keeping the old bases: cannot read \(overlay): \(error)")
                return
            }
        }
        for image in old where !used.contains(image) {
            try await progress.step(provider.baseMachine().vmName, "delete old \((image as NSString).lastPathComponent)") {
                try FileManager.default.removeItem(atPath: image)
            }
        }
    }

    /// Overlay, first boot, provision scripts (when `provisioning`), `savevm sandbox`, stop.
    private func makeSandbox(_ machine: QEMUMachine, provisioning: Bool) async throws {
        let started = ContinuousClock.now
        do {
            try await machine.createSandbox(step: { name, body in try await progress.step(machine.vmName, name, body) },
                                            provision: { target in
                                                guard provisioning else { return }
                                                try await vms.provision(machine.vmName, port: target.port, progress: progress)
                                            })
        } catch {
            await machine.shutdown()
            throw error
        }
        try await progress.step(machine.vmName, "stop") { await machine.shutdown() }
        // What `estimateLine` reads: a worker provisioned on its own, or one made on a provisioned base.
        record(provisioning ? "provision_worker" : "create_worker", since: started)
    }

    /// One row per worker VM: whether its qemu runs (pid, RSS, accel), its SSH port, its sandbox,
    /// the base its overlay is on.
    func statusQEMU(redis: RedisConnection?, keys: RedisKeys) async throws -> [Row] {
        let provider = qemuProvider
        var rows: [Row] = []
        for number in workers {
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            let (worker, job) = try await workerState(number, redis: redis, keys: keys)
            var row = Row(name: machine.vmName, state: "missing", sshPort: machine.sshPort, snapshot: try await machine.hasSandbox(),
                          worker: worker, job: job, accel: provider.settings.accel, base: try await machine.backingFile())
            if let pid = machine.pid {
                // The running qemu's own -accel: `auto` may have resolved otherwise when it started.
                row.accel = QEMUProcess.accel(of: pid) ?? provider.settings.accel
                row.pid = Int(pid)
                row.rssMB = QEMUProcess.residentKiB(pid).map { $0 / 1024 }
                row.state = "running (pid \(pid)\(row.rssMB.map { ", RSS \($0) MB" } ?? ""), \(row.accel ?? "?"))"
            } else if FileManager.default.fileExists(atPath: machine.overlay) {
                row.state = "stopped (\(provider.settings.accel))"
            }
            rows.append(row)
        }
        return rows
    }

    /// Stops the named workers' VMs (every worker's when none is named) and deletes their
    /// overlays; the base image is the operator's and stays.
    func removeQEMU(workers names: [String]) async throws {
        let provider = qemuProvider
        for name in names.isEmpty ? workers.map({ "worker-\($0)" }) : names {
            let machine = try provider.qemuMachine(named: name)
            try await deleteVM(machine)
        }
        guard names.isEmpty else { return }
        // Everything goes, as virtualbox's base VM does: the base VM's files and the provisioned
        // bases (tworker's own copies; vms.base_image stays).
        let base = provider.baseMachine()
        try await deleteVM(base)
        let images = provider.settings.base.directory
        if FileManager.default.fileExists(atPath: images) {
            try await progress.step(base.vmName, "delete \(images)") { try FileManager.default.removeItem(atPath: images) }
        }
    }

    private func deleteVM(_ machine: QEMUMachine) async throws {
        guard FileManager.default.fileExists(atPath: machine.directory) || machine.pid != nil else { return }
        try await progress.step(machine.vmName, "stop and delete \(machine.directory)") {
            await machine.shutdown()
            if FileManager.default.fileExists(atPath: machine.directory) {
                try FileManager.default.removeItem(atPath: machine.directory)
            }
        }
    }
}
