import Foundation
import Logging
import Synchronization

/// The VirtualBox operations the lifecycle commands are built from, each a handful of
/// VBoxManage calls through the one runner (so every call is logged, timed and prefix-checked).
public struct WorkerVMs: Sendable {
    public static let baseSnapshot = "base"
    public static let sandboxSnapshot = VirtualBoxProvider.sandboxSnapshot

    public let config: WorkerConfig
    public let runner: VBoxManageRunner
    public let logger: Logger

    public init(config: WorkerConfig, runner: VBoxManageRunner, logger: Logger) {
        self.config = config
        self.runner = runner
        self.logger = logger
    }

    public var baseName: String { config.vms.namePrefix + "base" }
    public func workerName(_ number: Int) -> String { config.vms.namePrefix + "worker-\(number)" }
    public func sshPort(_ number: Int) -> Int { config.ssh.portBase + number }

    public func exists(_ vm: String) async throws -> Bool { try await runner.info(vm) != nil }

    // MARK: - Base

    /// Imports the base VM from an `.ovf`, gives it the SSH rule on `port_base` and takes `base`.
    public func importBase(ovf: String, as name: String? = nil) async throws {
        let name = name ?? baseName
        try await runner.run(.importAppliance(ovf, name: name))
        try await runner.run(.setNATRule(name, rule: NATRule(name: "guestssh", hostIP: config.ssh.host, hostPort: config.ssh.portBase, guestPort: 22)))
        try await runner.run(.snapshotTake(name, name: Self.baseSnapshot))
    }

    /// UUID of the VM's current snapshot (what new linked clones are made from).
    public func currentSnapshotUUID(_ vm: String) async throws -> String? {
        do {
            let list = MachineReadable(try await runner.run(.snapshotList(vm)).stdout)
            return list["CurrentSnapshotUUID"]
        } catch let error as VBoxManageError where error.message.contains("does not have any snapshots") {
            return nil
        }
    }

    /// UUID of the first snapshot called `name`, depth-first (as VirtualBox resolves names).
    public func snapshotUUID(_ vm: String, named name: String) async throws -> String? {
        // A VM without snapshots makes `snapshot list` fail: then there is no such snapshot.
        guard let output = try? await runner.run(.snapshotList(vm)) else { return nil }
        let list = MachineReadable(output.stdout)
        let match = list.values.filter { ($0.key == "SnapshotName" || $0.key.hasPrefix("SnapshotName-")) && $0.value == name }
            .map(\.key).sorted().first
        return match.map { list[$0.replacingOccurrences(of: "SnapshotName", with: "SnapshotUUID")] } ?? nil
    }

    // MARK: - Workers

    /// Makes worker N: a linked clone of the base's current snapshot (one disk for all workers),
    /// its SSH rule, resources, a boot, the online `sandbox` snapshot, then power off.
    public func createWorker(_ number: Int, progress: LifecycleProgress) async throws {
        let name = workerName(number)
        guard let snapshot = try await progress.step(name, "find base snapshot", { try await currentSnapshotUUID(baseName) }) else {
            throw LifecycleStepError(vm: baseName, step: "find base snapshot", underlying: BaseBox.Problem(description: "\(baseName) has no snapshot; run `tworker vagrant import`"))
        }
        try await progress.step(name, "linked clone of \(baseName)") { try await runner.run(.linkedClone(of: baseName, snapshot: snapshot, name: name)) }
        try await progress.step(name, "NAT rule guestssh on \(sshPort(number))") {
            // A clone inherits the base's rules: its own replaces the inherited one in one call.
            let inherited = try await runner.info(name)?.forwardingRules.map(\.name) ?? []
            let rule = NATRule(name: "guestssh", hostIP: config.ssh.host, hostPort: sshPort(number), guestPort: 22)
            var arguments = ["modifyvm", name]
            for old in inherited where old == "guestssh" { arguments += ["--natpf1", "delete", old] }
            arguments += ["--natpf1", rule.specification]
            try await runner.run(VBoxManageCommand(arguments, changes: name))
        }
        try await progress.step(name, "memory \(config.vms.memory) MiB, \(config.vms.cpus) cpus") {
            try await runner.run(.setResources(name, memory: config.vms.memory, cpus: config.vms.cpus))
        }
        try await progress.step(name, "start") { try await runner.run(.startVM(name, type: config.virtualbox.startType)) }
        try await progress.step(name, "wait for SSH") { try await waitForSSH(port: sshPort(number)) }
        try await progress.step(name, "snapshot \(Self.sandboxSnapshot) (online)") { try await runner.run(.snapshotTake(name, name: Self.sandboxSnapshot, live: true)) }
        try await progress.step(name, "power off") { try await runner.run(.powerOff(name)) }
        forgetHostKey(worker: "worker-\(number)")
    }

    /// Powers a VM off if it runs and deletes it with its files.
    public func remove(_ vm: String, progress: LifecycleProgress) async throws {
        guard let info = try await runner.info(vm) else { return }
        if ["running", "paused", "starting", "stuck", "gurumeditation"].contains(info.state ?? "") {
            try await progress.step(vm, "power off") { try await runner.run(.powerOff(vm)) }
        }
        try await progress.step(vm, "unregister and delete") { try await runner.run(.unregister(vm)) }
    }

    /// Brings a VM up from a snapshot and waits for SSH.
    public func boot(_ vm: String, from snapshot: String, port: Int, progress: LifecycleProgress) async throws {
        if let info = try await runner.info(vm), ["running", "paused"].contains(info.state ?? "") {
            try await progress.step(vm, "power off") { try await runner.run(.powerOff(vm)) }
        }
        try await progress.step(vm, "restore \(snapshot)") { try await runner.run(.snapshotRestore(vm, name: snapshot)) }
        try await progress.step(vm, "start") { try await runner.run(.startVM(vm, type: config.virtualbox.startType)) }
        try await progress.step(vm, "wait for SSH") { try await waitForSSH(port: port) }
    }

    /// Runs `vms.provision` over SSH on a running VM, in order, stopping at the first failure.
    public func provision(_ vm: String, port: Int, progress: LifecycleProgress) async throws {
        let target = SSHTarget(user: config.ssh.user, host: config.ssh.host, port: port, key: config.ssh.key,
                               knownHosts: (config.stateDir as NSString).appendingPathComponent("ssh/known_hosts-provision"))
        try? FileManager.default.createDirectory(atPath: (target.knownHosts as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        // Each provision run meets a freshly booted (or re-created) VM: its key is not pinned.
        try? FileManager.default.removeItem(atPath: target.knownHosts)
        for script in config.vms.provision {
            let path = (config.vagrant.directory as NSString).appendingPathComponent("provision/\(script)")
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw LifecycleStepError(vm: vm, step: "provision \(script)", underlying: BaseBox.Problem(description: "cannot read \(path)"))
            }
            try await progress.step(vm, "provision \(script)") {
                let output = Mutex<[UInt8]>([])
                let command = try BuildCommand(.ssh(target, remoteCommand: ["bash", "-s"]), standardInput: text)
                let exit = try await ChildProcess.run(command) { chunk in
                    output.withLock { if $0.count < 1 << 20 { $0 += chunk } }
                    logger.debug("\(String(decoding: chunk, as: UTF8.self))", metadata: ["vm": "\(vm)", "script": "\(script)"])
                }
                guard exit == .exited(0) else {
                    let tail = String(decoding: output.withLock { $0.suffix(4096) }, as: UTF8.self)
                    throw BaseBox.Problem(description: "\(script) exited with \(exit) on \(vm):\n\(tail)")
                }
            }
        }
    }

    /// Renames the first snapshot called `name` to `newName`; returns its UUID.
    @discardableResult
    public func renameSnapshot(_ vm: String, _ name: String, to newName: String) async throws -> String? {
        guard let uuid = try await snapshotUUID(vm, named: name) else { return nil }
        try await runner.run(VBoxManageCommand(["snapshot", vm, "edit", uuid, "--name", newName], changes: vm))
        return uuid
    }

    public func waitForSSH(port: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(config.timeouts.vmBoot)
        while ContinuousClock.now < deadline {
            if await SSHBanner.answers(host: config.ssh.host, port: port) { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw BaseBox.Problem(description: "SSH on \(config.ssh.host):\(port) did not answer within \(config.timeouts.vmBoot) s (timeouts.vm_boot)")
    }

    /// A re-created VM has a new host key: drop the worker's pinned one.
    public func forgetHostKey(worker: String) {
        let file = (config.stateDir as NSString).appendingPathComponent("ssh/known_hosts-\(worker)")
        try? FileManager.default.removeItem(atPath: file)
        try? FileManager.default.removeItem(atPath: file + ".uuid")
    }
}
