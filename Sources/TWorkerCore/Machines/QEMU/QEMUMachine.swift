import Foundation
import Logging
import Synchronization

/// One worker's qemu VM and the per-job cycle: `cont` the guest paused at `sandbox`, run the
/// build over SSH in a session that first sets the guest's clock, then `loadvm sandbox` and `stop` right away, so the next job
/// starts about half a second after it arrives and a waiting VM costs no CPU.
///
/// Its files live in `<state_dir>/qemu/worker-N/`: the overlay, the QMP socket, the pid file
/// and the guest's console log.
public final class QEMUMachine: Machine {
    public let name: String
    /// qemu's `-name`: `<vms.name_prefix>worker-N`.
    public let vmName: String
    public let directory: String
    public let overlay: String
    let settings: QEMUProvider.Settings
    public let target: SSHTarget
    let process: QEMUProcess
    let runner: any ProgramRunning
    let logger: Logger

    private struct State {
        /// The connection to the running qemu; nil when it must be (re)started.
        var qmp: QMPClient?
        /// True while the guest sits paused, restored from `sandbox` (set by `release`).
        var restored = false
    }
    private let state = Mutex(State())

    init(name: String, number: Int, settings: QEMUProvider.Settings, runner: any ProgramRunning, logger: Logger) {
        self.name = name
        self.vmName = settings.namePrefix + name
        self.settings = settings
        self.runner = runner
        self.logger = logger
        directory = (settings.stateDir as NSString).appendingPathComponent("qemu/\(name)")
        overlay = directory + "/disk.qcow2"
        process = QEMUProcess(pidFile: directory + "/qemu.pid", name: vmName)
        let sshDir = (settings.stateDir as NSString).appendingPathComponent("ssh")
        target = SSHTarget(user: settings.ssh.user, host: settings.ssh.host, port: settings.ssh.portBase + number, key: settings.ssh.key,
                           knownHosts: (sshDir as NSString).appendingPathComponent("known_hosts-\(name)"),
                           controlPath: directory + "/ssh.sock")
    }

    var qmpSocket: String { directory + "/qmp.sock" }
    /// The control socket of the SSH connection opened before the guest is paused.
    var controlPath: String { directory + "/ssh.sock" }
    var consoleLog: String { directory + "/console.log" }
    /// The ssh client of the build running here, while it runs.
    var buildGroup: BuildGroupRecord { .ofRemoteBuild(stateDir: settings.stateDir, vm: name) }
    public var sshPort: Int { target.port }
    /// The running qemu's pid, when it runs.
    public var pid: pid_t? { process.runningPID() }

    // MARK: - The provider's edge: whatever is thrown inside leaves as an InfrastructureError

    public func prepare() async throws(InfrastructureError) {
        try await resettingOnFailure("preparing VM \(vmName)") { try await readyForJob() }
    }

    public func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        do {
            return try await InfrastructureError.mapping("running the build on VM \(vmName)") {
                try await target.runBuild(script: script, settingClock: true, whenRefused: sessionRefused(), record: buildGroup, output: output)
            }
        } catch {
            throw InfrastructureError(describe(error))
        }
    }

    public func release() async throws(InfrastructureError) {
        try await resettingOnFailure("resetting VM \(vmName) after the job") { try await restoreAndPause() }
    }

    /// A failed prepare or reset leaves the VM in an unknown state: drop the QMP connection so
    /// the next prepare starts from the pid file and `sandbox`.
    private func resettingOnFailure(_ context: String, _ body: () async throws -> Void) async throws(InfrastructureError) {
        do {
            try await InfrastructureError.mapping(context, body)
        } catch {
            let message = describe(error)
            await dropConnection()
            throw InfrastructureError(message)
        }
    }

    /// A qemu a killed worker left behind is stopped (its build with it); the next `prepare`
    /// starts the VM again from `sandbox`.
    public func killLeftovers() async {
        // The VM this process started and still talks to is no leftover.
        if state.withLock({ $0.qmp != nil }), process.runningPID() != nil { return }
        buildGroup.killRecorded()
        if let pid = await stopQEMU() {
            logger.warning("stopped the qemu a previous worker left running", metadata: ["vm": "\(vmName)", "pid": "\(pid)"])
        }
    }

    /// Stops our qemu, whoever started it.
    @discardableResult
    private func stopQEMU() async -> pid_t? {
        await dropConnection()
        await closeWarmConnection()
        return await process.stop()
    }

    /// Stops the VM: a worker that exits leaves no qemu behind.
    public func shutdown() async {
        let qmp = state.withLock { state in defer { state.qmp = nil; state.restored = false }; return state.qmp }
        await closeWarmConnection()
        if let qmp {
            try? await qmp.quit(timeout: .seconds(5))
            await qmp.close()
        }
        await process.stop()
    }

    /// Names the cause when the VM died under us: "qemu died" says more than "ssh exit 255".
    /// qemu removes its pid file when it exits on its own; a killed one leaves it behind.
    private func describe(_ error: InfrastructureError) -> String {
        let died = FileManager.default.fileExists(atPath: process.pidFile) && process.runningPID() == nil
        return died ? "qemu for VM \(vmName) died (\(error.message))" : error.message
    }

    // MARK: - Steps

    private func readyForJob() async throws {
        let (qmp, restored) = state.withLock { state in defer { state.restored = false }; return (state.qmp, state.restored) }
        if let qmp, process.runningPID() != nil {
            if restored {
                // `release` left it paused: one QMP round trip, no status query.
                try await qmp.cont(timeout: settings.qemuTimeout)
            } else {
                try await qmp.humanMonitor("loadvm \(QEMUProvider.sandboxSnapshot)", timeout: settings.qemuTimeout)
                if try await !qmp.status(timeout: settings.qemuTimeout).running { try await qmp.cont(timeout: settings.qemuTimeout) }
            }
            // No banner polling: sshd was listening when `sandbox` was taken, so the build's ssh
            // (`run`) connects at once and starts while the guest wakes (its banner comes
            // ~0.14 s after `cont`); a session refused meanwhile is retried.
            return
        }
        try await startFromSandbox()
        // A new qemu takes a second or more to answer: polling the banner costs no ssh process.
        // The clock is set by the build's own session (`run`): one SSH session per job, not two.
        try await waitForSSH()
    }

    /// What the build's session does when ssh failed before anything ran on the guest:
    /// dropbear refuses a 6th unauthenticated connection from one address, and under TCG the
    /// children of the banner probes can take a moment to exit. Tried again every 100 ms until
    /// `timeouts.vm_boot`, unless qemu is gone.
    private func sessionRefused() -> @Sendable (String) async throws -> Void {
        let deadline = ContinuousClock.now + settings.bootTimeout
        return { [process, vmName, logger, bootTimeout = settings.bootTimeout] detail in
            guard process.runningPID() != nil else { throw InfrastructureError("qemu for VM \(vmName) exited before SSH answered") }
            guard ContinuousClock.now < deadline else {
                throw InfrastructureError("SSH on VM \(vmName) refused the build's session for \(bootTimeout.components.seconds) s (timeouts.vm_boot): \(detail)")
            }
            logger.debug("ssh refused, retrying", metadata: ["vm": "\(vmName)", "error": "\(detail)"])
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// `loadvm` while the guest runs, open the SSH connection the next build will use, then
    /// `stop`: the restored guest waits paused, costing no CPU, and the next build's session
    /// needs no handshake (~0.13 s after `cont` instead of ~0.4-0.6 s under TCG). A `loadvm`
    /// issued while paused would cost ~0.4 s more at `cont`.
    private func restoreAndPause() async throws {
        guard let qmp = state.withLock({ $0.qmp }), process.runningPID() != nil else {
            throw InfrastructureError("qemu for VM \(vmName) is not running; the next job starts it again")
        }
        try await qmp.humanMonitor("loadvm \(QEMUProvider.sandboxSnapshot)", timeout: settings.qemuTimeout)
        await openWarmConnection()
        try await qmp.stop(timeout: settings.qemuTimeout)
        state.withLock { $0.restored = true }
    }

    /// An ssh master connection to the freshly restored guest (`ssh.sock`), kept across the
    /// pause: the guest's side of it is frozen with the guest, so it neither times out nor
    /// notices. Without it the build's session connects on its own, so failing here only costs
    /// the next job that handshake.
    ///
    /// Now and then (4 times in about 230 resets here) a guest just restored answers no SSH
    /// for seconds, new connections included, yet answers at once after the `stop`/`cont` of
    /// the next job: one short attempt, then the pause, rather than a long wait here.
    private func openWarmConnection() async {
        await closeWarmConnection()
        var command = ProgramCommand.sshControlMaster(target, controlPath: controlPath, connectTimeout: 3)
        command.timeout = settings.qemuTimeout
        do {
            try await runner.run(command)
        } catch {
            try? FileManager.default.removeItem(atPath: controlPath)
            logger.warning("could not open the SSH connection the next job would use; it will connect on its own",
                           metadata: ["vm": "\(vmName)", "error": "\(error)"])
        }
    }

    /// Ends the master connection: after `loadvm` its guest side is gone, and nothing of
    /// tworker's may outlive the VM.
    private func closeWarmConnection() async {
        guard FileManager.default.fileExists(atPath: controlPath) else { return }
        var command = ProgramCommand.sshControlExit(target, controlPath: controlPath)
        command.timeout = .seconds(10)
        _ = try? await runner.run(command)
        // A master that died leaves its socket behind, and a new master will not replace one.
        try? FileManager.default.removeItem(atPath: controlPath)
    }

    /// Starts qemu from the overlay's `sandbox` (`-loadvm`), making the overlay and the
    /// snapshot first when they are missing. A qemu of ours still running is stopped first.
    private func startFromSandbox() async throws {
        if let pid = await stopQEMU() {
            logger.warning("stopped this VM's qemu to start it again from its sandbox", metadata: ["vm": "\(vmName)", "pid": "\(pid)"])
        }
        if try await hasSandbox() {
            try await launch(loadSnapshot: QEMUProvider.sandboxSnapshot)
            // A guest started from a snapshot runs unless qemu was told otherwise.
            if let qmp = state.withLock({ $0.qmp }), try await !qmp.status(timeout: settings.qemuTimeout).running {
                try await qmp.cont(timeout: settings.qemuTimeout)
            }
        } else {
            try await createSandbox()
        }
    }

    /// True when the overlay exists and holds the `sandbox` snapshot.
    public func hasSandbox() async throws -> Bool {
        guard FileManager.default.fileExists(atPath: overlay) else { return false }
        let info = try await runner.run(.qemuImg(.info(image: overlay), executable: settings.img, timeout: settings.qemuTimeout))
        return QEMUImgCommand.snapshotNames(infoJSON: info.stdout).contains(QEMUProvider.sandboxSnapshot)
    }

    /// A fresh overlay on the current base, a first boot, and `savevm sandbox` once SSH answers;
    /// the VM is left running at the snapshot. `step` names each step (import prints them).
    /// `provision` runs once SSH answers, before the snapshot (import runs the provision scripts there).
    public func createSandbox(step: (String, () async throws -> Void) async throws -> Void = { _, body in try await body() },
                              provision: (SSHTarget) async throws -> Void = { _ in }) async throws {
        // Read at each use, not at start: `reprovision --strategy base` moves it while workers run.
        try await bootOnNewOverlay(base: settings.base.current, step: step)
        try await provision(target)
        try await step("savevm \(QEMUProvider.sandboxSnapshot)") {
            guard let qmp = state.withLock({ $0.qmp }) else { throw InfrastructureError("no QMP connection to \(vmName)") }
            try await qmp.humanMonitor("savevm \(QEMUProvider.sandboxSnapshot)", timeout: settings.qemuTimeout)
        }
    }

    /// A fresh overlay on `base` and a first boot; returns once SSH answers and the guest's clock
    /// is set, the VM running.
    public func bootOnNewOverlay(base: String, step: (String, () async throws -> Void) async throws -> Void = { _, body in try await body() }) async throws {
        await stopQEMU()
        guard FileManager.default.fileExists(atPath: base) else {
            throw InfrastructureError(base == settings.baseImage
                ? "vms.base_image \(base) does not exist (boxes/qemu/build-test-image DIR makes a small one)"
                : "the provisioned base \(base) does not exist (tworker vms reprovision --strategy base makes a new one)")
        }
        try await step("overlay on \((base as NSString).lastPathComponent)") {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try? FileManager.default.removeItem(atPath: overlay)
            try await runner.run(.qemuImg(.createOverlay(base: base, overlay: overlay), executable: settings.img, timeout: settings.qemuTimeout))
            // A new disk may carry a new host key.
            try? FileManager.default.removeItem(atPath: target.knownHosts)
        }
        try await step("boot (\(settings.accel))") { try await launch(loadSnapshot: nil) }
        try await step("wait for SSH") {
            try await waitForSSH()
            try await setGuestClock()
        }
    }

    /// The image this VM's overlay is on, as qemu-img reads it; nil without an overlay.
    public func backingFile() async throws -> String? {
        guard FileManager.default.fileExists(atPath: overlay) else { return nil }
        let info = try await runner.run(.qemuImg(.info(image: overlay), executable: settings.img, timeout: settings.qemuTimeout))
        return QEMUImgCommand.backingFile(infoJSON: info.stdout)
    }

    /// Runs qemu (it daemonizes once the VM is set up) and connects to its QMP socket.
    private func launch(loadSnapshot: String?) async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: qmpSocket)
        let launch = QEMULaunch(name: vmName, accel: settings.accel, memory: settings.memory, cpus: settings.cpus,
                                kernel: settings.kernel, initrd: settings.initrd, append: settings.append, overlay: overlay,
                                sshHost: settings.ssh.host, sshPort: target.port, qmpSocket: qmpSocket, pidFile: process.pidFile,
                                consoleLog: consoleLog, loadSnapshot: loadSnapshot, extraArguments: settings.extraArguments)
        do {
            try await runner.run(.qemuSystem(launch, executable: settings.binary, timeout: settings.qemuTimeout))
        } catch let failure as ProgramFailure {
            // qemu's own words (`-drive ...: Could not open ...`), not its whole command line.
            let said = failure.timedOut ? "did not start within \(settings.qemuTimeout.components.seconds) s (timeouts.qemu)"
                : failure.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            await process.stop()
            throw InfrastructureError("qemu for VM \(vmName) failed to start: \(said)")
        }
        let qmp = try await QMPClient.connect(path: qmpSocket, timeout: settings.qemuTimeout)
        state.withLock { $0.qmp = qmp; $0.restored = false }
        logger.info("qemu started", metadata: ["vm": "\(vmName)", "pid": "\(process.runningPID().map(String.init) ?? "?")",
                                               "accel": "\(settings.accel)", "from": "\(loadSnapshot ?? "boot")"])
    }

    private func waitForSSH() async throws {
        try await target.waitForBanner(timeout: settings.bootTimeout) { [process, vmName] in
            guard process.runningPID() != nil else { throw InfrastructureError("qemu for VM \(vmName) exited before SSH answered") }
        }
    }

    /// A guest loses the time it was paused, and one started from a snapshot wakes at the
    /// snapshot's time: TLS, make and git all need the host's clock. Here for the first boot
    /// (import, before the provision scripts); a job's clock is set by its build's session.
    ///
    /// Also the first full SSH session after the banner: dropbear refuses a 6th unauthenticated
    /// connection from one address, and under TCG the children of the banner probes can take a
    /// moment to exit, so a refused session (ssh's 255) is retried until `timeouts.vm_boot`.
    private func setGuestClock() async throws {
        let deadline = ContinuousClock.now + settings.bootTimeout
        while true {
            // busybox `date` takes whole seconds; rounding after the ~0.3 s an ssh session takes
            // to open lands within about half a second.
            let epoch = Int((Date().timeIntervalSince1970 + 0.3).rounded())
            var command = ProgramCommand.ssh(target, remoteCommand: ["date -s @\(epoch) >/dev/null"])
            command.timeout = settings.qemuTimeout
            do {
                try await runner.run(command)
                return
            } catch let failure as ProgramFailure where failure.exitCode == 255 && ContinuousClock.now < deadline {
                logger.debug("ssh refused, retrying", metadata: ["vm": "\(vmName)", "error": "\(failure.stderr)"])
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    private func dropConnection() async {
        let qmp = state.withLock { state in defer { state.qmp = nil; state.restored = false }; return state.qmp }
        await qmp?.close()
    }
}
