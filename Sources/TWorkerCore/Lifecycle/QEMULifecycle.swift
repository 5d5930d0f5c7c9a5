import Foundation
import RedisClient

/// The lifecycle commands for `provider: qemu`: a worker VM is a qcow2 overlay on
/// `vms.base_image` holding the online snapshot `sandbox`, under `<state_dir>/qemu/worker-N/`.
extension Lifecycle {
    var qemuProvider: QEMUProvider { QEMUProvider(config: config, logger: logger) }

    /// For each worker without a sandbox: an overlay on the base, a first boot, the provision
    /// scripts over SSH, `savevm sandbox`, then the VM is stopped. Running it twice changes nothing.
    func importQEMU() async throws {
        let provider = qemuProvider
        for number in workers {
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            if try await machine.hasSandbox() {
                progress.note("\(machine.vmName)  has its \(QEMUProvider.sandboxSnapshot) snapshot, skipped")
                continue
            }
            try await makeSandbox(machine)
        }
    }

    /// `rebuild` and `reprovision --strategy each` for qemu: worker by worker, out of service
    /// (`vms.max_unavailable` at a time), its qemu stopped, a new overlay on the base, the
    /// provision scripts and a new `sandbox`. The worker's next job starts the new VM.
    func recreateQEMU() async throws {
        let provider = qemuProvider
        try await rolling { number in
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            try await progress.step(machine.vmName, "stop") { await machine.shutdown() }
            try await makeSandbox(machine)
        }
    }

    /// Overlay, first boot, provision scripts, `savevm sandbox`, stop.
    private func makeSandbox(_ machine: QEMUMachine) async throws {
        let started = ContinuousClock.now
        do {
            try await machine.createSandbox(step: { name, body in try await progress.step(machine.vmName, name, body) },
                                            provision: { target in
                                                try await vms.provision(machine.vmName, port: target.port, progress: progress)
                                            })
        } catch {
            await machine.shutdown()
            throw error
        }
        try await progress.step(machine.vmName, "stop") { await machine.shutdown() }
        record("create_worker", since: started)
    }

    /// One row per worker VM: whether its qemu runs (pid, RSS, accel), its SSH port, its sandbox.
    func statusQEMU(redis: RedisConnection?, keys: RedisKeys) async throws -> [Row] {
        let provider = qemuProvider
        var rows: [Row] = []
        for number in workers {
            let machine = try provider.qemuMachine(named: "worker-\(number)")
            var state = FileManager.default.fileExists(atPath: machine.overlay) ? "stopped" : "missing"
            if let pid = machine.pid {
                let rss = QEMUProcess.residentKiB(pid).map { ", RSS \($0 / 1024) MB" } ?? ""
                state = "running (pid \(pid)\(rss), \(provider.settings.accel))"
            }
            let (worker, job) = try await workerState(number, redis: redis, keys: keys)
            rows.append(Row(name: machine.vmName, state: state, sshPort: machine.sshPort, snapshot: try await machine.hasSandbox(),
                            worker: worker, job: job))
        }
        return rows
    }

    /// Stops the named workers' VMs (every worker's when none is named) and deletes their
    /// overlays; the base image is the operator's and stays.
    func removeQEMU(workers names: [String]) async throws {
        let provider = qemuProvider
        for name in names.isEmpty ? workers.map({ "worker-\($0)" }) : names {
            let machine = try provider.qemuMachine(named: name)
            try await progress.step(machine.vmName, "stop and delete \(machine.directory)") {
                await machine.shutdown()
                if FileManager.default.fileExists(atPath: machine.directory) {
                    try FileManager.default.removeItem(atPath: machine.directory)
                }
            }
        }
    }
}
