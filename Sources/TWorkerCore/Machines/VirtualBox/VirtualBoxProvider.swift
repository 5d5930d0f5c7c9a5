import Foundation
import Logging
import Synchronization

/// `provider: virtualbox`: worker `worker-N` drives the VM `<vms.name_prefix>worker-N`, reached
/// over SSH on `ssh.port_base + N`; every job starts from the VM's `sandbox` snapshot.
public struct VirtualBoxProvider: MachineProvider {
    public static let sandboxSnapshot = "sandbox"

    public var runner: VBoxManageRunner
    public var ssh: WorkerConfig.SSH
    public var startType: String
    public var bootTimeout: Duration
    public var stateDir: String
    public var logger: Logger

    public init(config: WorkerConfig, logger: Logger) {
        runner = VBoxManageRunner(executable: config.virtualbox.vboxmanage, namePrefix: config.vms.namePrefix,
                                  timeout: .seconds(config.timeouts.vboxmanage), logger: logger)
        ssh = config.ssh
        startType = config.virtualbox.startType
        bootTimeout = .seconds(config.timeouts.vmBoot)
        stateDir = config.stateDir
        self.logger = logger
    }

    public struct BadWorkerName: Error, CustomStringConvertible {
        public var name: String
        public var description: String { "VM name '\(name)' is not worker-N: the virtualbox provider maps worker-N to its SSH port" }
    }

    /// N in `worker-N`.
    public static func workerNumber(_ name: String) -> Int? {
        guard name.hasPrefix("worker-"), let number = Int(name.dropFirst("worker-".count)), number >= 1 else { return nil }
        return number
    }

    public func machine(named name: String) throws -> any Machine {
        guard let number = Self.workerNumber(name) else { throw BadWorkerName(name: name) }
        let sshDir = (stateDir as NSString).appendingPathComponent("ssh")
        let target = SSHTarget(user: ssh.user, host: ssh.host, port: ssh.portBase + number, key: ssh.key,
                               knownHosts: (sshDir as NSString).appendingPathComponent("known_hosts-\(name)"))
        return VirtualBoxMachine(name: name, vmName: runner.namePrefix + name, runner: runner, target: target,
                                 startType: startType, bootTimeout: bootTimeout,
                                 buildGroup: .ofRemoteBuild(stateDir: stateDir, vm: name), logger: logger)
    }
}

/// One worker VM and the per-job cycle: ready it from `sandbox`, run the build over SSH,
/// power it off and restore it right away so the next job only needs `startvm`.
public final class VirtualBoxMachine: Machine {
    public let name: String
    public let vmName: String
    let runner: VBoxManageRunner
    let target: SSHTarget
    let startType: String
    let bootTimeout: Duration
    /// The ssh client of the build running here, while it runs.
    let buildGroup: BuildGroupRecord
    let logger: Logger
    /// True while the VM is known to sit restored from `sandbox` (set by `release`).
    private let restored = Mutex<Bool>(false)

    init(name: String, vmName: String, runner: VBoxManageRunner, target: SSHTarget, startType: String, bootTimeout: Duration,
         buildGroup: BuildGroupRecord, logger: Logger) {
        self.name = name
        self.vmName = vmName
        self.runner = runner
        self.target = target
        self.startType = startType
        self.bootTimeout = bootTimeout
        self.buildGroup = buildGroup
        self.logger = logger
    }

    /// A worker killed mid-build leaves its ssh client and the build in the guest running (a
    /// session without a terminal is not hung up): kill the client, then power the VM off, so
    /// the build is gone before its job is requeued for another worker. Only when a build was
    /// on record: a VM the worker was not running a build on is left to the next `prepare`
    /// (or to the lifecycle command that holds it).
    public func killLeftovers() async {
        guard buildGroup.hasRecord else { return }
        buildGroup.killRecorded()
        do {
            logger.warning("powering off the VM a killed worker left running a build", metadata: ["vm": "\(vmName)"])
            try await powerOffIfRunning(state: try await runner.info(vmName)?.state)
        } catch {
            // The next prepare powers it off and restores it anyway, before any build runs there.
            logger.error("could not power off the VM a killed worker left running a build", metadata: ["vm": "\(vmName)", "error": "\(error)"])
        }
    }

    // MARK: - The provider's edge: whatever is thrown inside leaves as an InfrastructureError

    public func prepare() async throws(InfrastructureError) {
        try await InfrastructureError.mapping("preparing VM \(vmName)") { try await readyFromSandbox() }
    }

    public func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        try await InfrastructureError.mapping("running the build on VM \(vmName)") { try await runOverSSH(script: script, output: output) }
    }

    public func release() async throws(InfrastructureError) {
        try await InfrastructureError.mapping("resetting VM \(vmName) after the job") { try await resetToSandbox() }
    }

    // MARK: - Steps

    private func readyFromSandbox() async throws {
        guard let info = try await runner.info(vmName) else {
            throw InfrastructureError("VM \(vmName) does not exist (create it with `tworker vagrant import`)")
        }
        try resetKnownHostsIfRecreated(uuid: info.uuid)
        let alreadyRestored = restored.withLock { value in defer { value = false }; return value }
        if !(alreadyRestored && (info.state == "saved" || info.state == "poweroff")) {
            try await powerOffIfRunning(state: info.state)
            try await restoreSandbox()
        }
        try await runner.run(.startVM(vmName, type: startType))
        try await waitForSSH()
    }

    private func runOverSSH(script: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit {
        try await target.runBuild(script: script, record: buildGroup, output: output)
    }

    private func resetToSandbox() async throws {
        let info = try await runner.info(vmName)
        try await powerOffIfRunning(state: info?.state)
        try await restoreSandbox()
        restored.withLock { $0 = true }
    }

    private func powerOffIfRunning(state: String?) async throws {
        guard let state, ["running", "paused", "starting", "stuck", "restoring", "gurumeditation"].contains(state) else { return }
        do {
            try await runner.run(.powerOff(vmName))
        } catch let error as VBoxManageError where error.isNotRunning {
            return
        }
    }

    private func restoreSandbox() async throws {
        do {
            try await runner.run(.snapshotRestore(vmName, name: VirtualBoxProvider.sandboxSnapshot))
        } catch let error as VBoxManageError where error.isRunningState {
            // The VM came up between our read and the restore: power it off, then restore.
            try await runner.run(.powerOff(vmName))
            try await runner.run(.snapshotRestore(vmName, name: VirtualBoxProvider.sandboxSnapshot))
        }
    }

    private func waitForSSH() async throws {
        try await target.waitForBanner(timeout: bootTimeout)
    }

    /// A VM re-created under the same name has a new host key: forget the old one.
    private func resetKnownHostsIfRecreated(uuid: String?) throws {
        guard let uuid else { return }
        let files = FileManager.default
        let directory = (target.knownHosts as NSString).deletingLastPathComponent
        try files.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let marker = target.knownHosts + ".uuid"
        let previous = try? String(contentsOfFile: marker, encoding: .utf8)
        if previous != uuid {
            try? files.removeItem(atPath: target.knownHosts)
            try uuid.write(toFile: marker, atomically: true, encoding: .utf8)
        }
    }
}
