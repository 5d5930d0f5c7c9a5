/// One VBoxManage invocation as a value: tests assert the argv without running anything,
/// and the runner executes, times, logs and retries any of them the same way.
public struct VBoxManageCommand: Sendable, Equatable, CustomStringConvertible {
    public var arguments: [String]
    /// The VM this command changes, checked against the name prefix before it runs.
    public var changes: String?

    public init(_ arguments: [String], changes: String? = nil) {
        self.arguments = arguments
        self.changes = changes
    }

    public var description: String { (["VBoxManage"] + arguments).joined(separator: " ") }

    // MARK: - Reads

    public static func showVMInfo(_ vm: String) -> Self { Self(["showvminfo", vm, "--machinereadable"]) }
    public static func listVMs() -> Self { Self(["list", "vms"]) }
    public static func listRunningVMs() -> Self { Self(["list", "runningvms"]) }
    public static func snapshotList(_ vm: String) -> Self { Self(["snapshot", vm, "list", "--machinereadable"]) }
    public static func version() -> Self { Self(["--version"]) }

    // MARK: - Changes

    public static func startVM(_ vm: String, type: String) -> Self { Self(["startvm", vm, "--type", type], changes: vm) }
    public static func powerOff(_ vm: String) -> Self { Self(["controlvm", vm, "poweroff"], changes: vm) }
    public static func snapshotRestore(_ vm: String, name: String) -> Self { Self(["snapshot", vm, "restore", name], changes: vm) }
    public static func snapshotTake(_ vm: String, name: String, live: Bool = false) -> Self {
        Self(["snapshot", vm, "take", name] + (live ? ["--live"] : []), changes: vm)
    }
    public static func snapshotDelete(_ vm: String, name: String) -> Self { Self(["snapshot", vm, "delete", name], changes: vm) }
    public static func importAppliance(_ ovf: String, name: String) -> Self {
        Self(["import", ovf, "--vsys", "0", "--vmname", name], changes: name)
    }
    public static func linkedClone(of source: String, snapshot: String, name: String) -> Self {
        Self(["clonevm", source, "--snapshot", snapshot, "--options", "link", "--name", name, "--register"], changes: name)
    }
    public static func setNATRule(_ vm: String, rule: NATRule) -> Self { Self(["modifyvm", vm, "--natpf1", rule.specification], changes: vm) }
    public static func deleteNATRule(_ vm: String, name: String) -> Self { Self(["modifyvm", vm, "--natpf1", "delete", name], changes: vm) }
    public static func setResources(_ vm: String, memory: Int, cpus: Int) -> Self {
        Self(["modifyvm", vm, "--memory", String(memory), "--cpus", String(cpus)], changes: vm)
    }
    public static func unregister(_ vm: String) -> Self { Self(["unregistervm", vm, "--delete"], changes: vm) }
}

/// A NAT port-forwarding rule, as `--natpf1` takes it.
public struct NATRule: Sendable, Equatable {
    public var name: String
    public var hostIP: String
    public var hostPort: Int
    public var guestPort: Int

    public init(name: String, hostIP: String, hostPort: Int, guestPort: Int) {
        self.name = name
        self.hostIP = hostIP
        self.hostPort = hostPort
        self.guestPort = guestPort
    }

    /// `guestssh,tcp,127.0.0.1,2222,,22`
    public var specification: String { "\(name),tcp,\(hostIP),\(hostPort),,\(guestPort)" }

    /// Parses a `Forwarding(n)="..."` value.
    public init?(specification: String) {
        let fields = specification.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 6, let host = Int(fields[3]), let guest = Int(fields[5]) else { return nil }
        self.init(name: fields[0], hostIP: fields[2], hostPort: host, guestPort: guest)
    }
}
