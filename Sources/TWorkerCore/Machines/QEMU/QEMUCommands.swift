import Foundation

/// One qemu-img call as a value; `ProgramCommand.qemuImg` runs it.
public enum QEMUImgCommand: Sendable, Equatable {
    /// A qcow2 overlay whose unwritten clusters read from `base`: N workers cost one base disk.
    case createOverlay(base: String, overlay: String)
    /// The image's metadata, snapshots included, as JSON. `-U` reads it while a qemu holds the
    /// image's lock (the worker's VM runs all the time).
    case info(image: String)
    /// A standalone qcow2 copy of `source` with its backing chain folded in: a provisioned base
    /// that depends on no other file, so the image it was made from can be deleted.
    case flatten(source: String, destination: String)

    public var arguments: [String] {
        switch self {
        case .createOverlay(let base, let overlay): ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay]
        case .info(let image): ["info", "-U", "--output=json", image]
        case .flatten(let source, let destination): ["convert", "-q", "-f", "qcow2", "-O", "qcow2", source, destination]
        }
    }

    /// The backing file an overlay names, as `qemu-img info --output=json` reports it
    /// (absolute: tworker creates overlays with absolute paths); nil for a standalone image.
    public static func backingFile(infoJSON: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(infoJSON.utf8)) as? [String: Any] else { return nil }
        return (object["full-backing-filename"] as? String) ?? (object["backing-filename"] as? String)
    }

    /// The internal snapshots' names in `qemu-img info --output=json` text.
    public static func snapshotNames(infoJSON: String) -> [String] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(infoJSON.utf8)) as? [String: Any],
              let snapshots = object["snapshots"] as? [[String: Any]] else { return [] }
        return snapshots.compactMap { $0["name"] as? String }
    }
}

/// The qemu command line of one worker VM.
///
/// The same devices every time: a `savevm` snapshot loads only into a VM built the same way.
public struct QEMULaunch: Sendable, Equatable {
    /// `-name`: `<vms.name_prefix>worker-N`; tworker signals a qemu only when its pid file
    /// names it and its command line carries this name.
    public var name: String
    /// `kvm` or `tcg` (auto already resolved).
    public var accel: String
    /// MiB.
    public var memory: Int
    public var cpus: Int
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    public var overlay: String
    public var sshHost: String
    public var sshPort: Int
    public var qmpSocket: String
    public var pidFile: String
    public var consoleLog: String
    /// `-loadvm`: start from this snapshot instead of booting.
    public var loadSnapshot: String?
    /// `qemu.extra_args`, appended.
    public var extraArguments: [String]

    public var arguments: [String] {
        var arguments = [
            "-name", name,
            "-accel", accel,
            // `max` gives the guest RDRAND: without it dropbear waits seconds for entropy.
            "-cpu", "max",
            "-m", String(memory),
            "-smp", String(cpus),
            "-display", "none",
            "-monitor", "none",
            "-serial", "file:" + consoleLog,
            "-no-reboot",
        ]
        if let kernel { arguments += ["-kernel", kernel] }
        if let initrd { arguments += ["-initrd", initrd] }
        if let append { arguments += ["-append", append] }
        arguments += [
            // User-mode networking, the guest's sshd forwarded from the host's loopback only;
            // `romfile=` skips the iPXE ROM nobody boots from.
            "-netdev", "user,id=n0,hostfwd=tcp:\(sshHost):\(sshPort)-:22",
            "-device", "virtio-net-pci,romfile=,netdev=n0",
            "-drive", "file=\(overlay),if=virtio,format=qcow2",
            "-qmp", "unix:\(qmpSocket),server=on,wait=off",
            "-pidfile", pidFile,
            "-daemonize",
        ]
        if let loadSnapshot { arguments += ["-loadvm", loadSnapshot] }
        return arguments + extraArguments
    }
}
