import Foundation
import Logging

/// `provider: qemu`: worker `worker-N` drives a qemu VM named `<vms.name_prefix>worker-N` whose
/// disk is a qcow2 overlay on `vms.base_image`, reached over SSH on `ssh.port_base + N`; every
/// job starts from the VM's online snapshot `sandbox` (RAM and disk).
public struct QEMUProvider: MachineProvider {
    public static let sandboxSnapshot = "sandbox"

    /// What every worker VM of this host shares.
    public struct Settings: Sendable {
        public var binary: String
        public var img: String
        /// `kvm` or `tcg`.
        public var accel: String
        public var memory: Int
        public var cpus: Int
        public var baseImage: String
        public var kernel: String?
        public var initrd: String?
        public var append: String?
        public var extraArguments: [String]
        public var namePrefix: String
        public var ssh: WorkerConfig.SSH
        public var stateDir: String
        /// `timeouts.qemu`: one qemu-img run, a qemu start, one QMP command.
        public var qemuTimeout: Duration
        /// `timeouts.vm_boot`: until SSH answers.
        public var bootTimeout: Duration

        /// `vms.base_image`, or the provisioned base made from it.
        public var base: QEMUBaseImage { QEMUBaseImage(configured: baseImage, stateDir: stateDir) }
    }

    public var settings: Settings
    public var runner: any ProgramRunning
    public var logger: Logger

    public init(config: WorkerConfig, logger: Logger, runner: any ProgramRunning = ProgramRunner()) {
        let accel: String = switch config.qemu.accel {
        case .auto: KVMProbe.hardwareKVMWorks() ? "kvm" : "tcg"
        case .kvm: "kvm"
        case .tcg: "tcg"
        }
        settings = Settings(binary: config.qemu.binary, img: config.qemu.img, accel: accel,
                            memory: config.vms.memory, cpus: config.vms.cpus,
                            baseImage: config.vms.baseImage ?? "", kernel: config.qemu.kernel, initrd: config.qemu.initrd,
                            append: config.qemu.append, extraArguments: config.qemu.extraArgs, namePrefix: config.vms.namePrefix,
                            ssh: config.ssh, stateDir: config.stateDir,
                            qemuTimeout: .seconds(config.timeouts.qemu), bootTimeout: .seconds(config.timeouts.vmBoot))
        self.runner = runner
        self.logger = logger
    }

    public func machine(named name: String) throws -> any Machine {
        try qemuMachine(named: name)
    }

    public func qemuMachine(named name: String) throws -> QEMUMachine {
        guard let number = VirtualBoxProvider.workerNumber(name) else {
            throw InfrastructureError("VM name '\(name)' is not worker-N: the qemu provider maps worker-N to its SSH port and directory")
        }
        return QEMUMachine(name: name, number: number, settings: settings, runner: runner, logger: logger)
    }

    /// The VM `reprovision --strategy base` provisions a new base in: `<vms.name_prefix>base`,
    /// SSH on `ssh.port_base` (workers use `port_base + N`), files under `<state_dir>/qemu/base/`.
    public func baseMachine() -> QEMUMachine {
        QEMUMachine(name: "base", number: 0, settings: settings, runner: runner, logger: logger)
    }
}
