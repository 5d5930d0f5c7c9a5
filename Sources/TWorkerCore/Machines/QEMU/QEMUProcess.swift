import Foundation

/// A qemu process of tworker's: found by its pid file, and signalled only when its command line
/// carries tworker's `-name` for that VM (a pid file can outlive its process, and the pid be reused).
public struct QEMUProcess: Sendable {
    let pidFile: String
    let name: String

    /// The pid in the pid file when that process is alive and is the qemu started as `name`.
    func runningPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { return nil }
        guard Self.isAlive(pid), let arguments = Self.commandLine(of: pid), Self.isNamed(name, arguments) else { return nil }
        return pid
    }

    /// True when `arguments` hold `-name NAME` (or `-name guest=NAME,...`).
    static func isNamed(_ name: String, _ arguments: [String]) -> Bool {
        zip(arguments, arguments.dropFirst()).contains { flag, value in
            flag == "-name" && (value == name || value.hasPrefix("guest=\(name),") || value == "guest=\(name)")
        }
    }

    /// A zombie counts as gone: with `-daemonize` qemu's parent is init, which may be slow to reap.
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    static func commandLine(of pid: pid_t) -> [String]? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { return nil }
        return data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The accelerator on `pid`'s command line (`-accel tcg` or `-accel kvm,...`).
    static func accel(of pid: pid_t) -> String? {
        guard let arguments = commandLine(of: pid) else { return nil }
        return zip(arguments, arguments.dropFirst()).first { $0.0 == "-accel" }
            .map { String($0.1.split(separator: ",").first ?? "") }
    }

    /// Resident memory of `pid` in KiB (`VmRSS`).
    static func residentKiB(_ pid: pid_t) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    /// Stops our qemu if it runs: SIGTERM (qemu exits in ~20 ms), SIGKILL after `grace`.
    /// Returns the pid it stopped, if any.
    @discardableResult
    func stop(grace: Duration = .seconds(5)) async -> pid_t? {
        guard let pid = runningPID() else {
            try? FileManager.default.removeItem(atPath: pidFile)
            return nil
        }
        kill(pid, SIGTERM)
        if await Self.waitForExit(pid, within: grace) == false {
            kill(pid, SIGKILL)
            _ = await Self.waitForExit(pid, within: .seconds(5))
        }
        try? FileManager.default.removeItem(atPath: pidFile)
        return pid
    }

    /// Polls (the process is not our child: no waitpid) until `pid` is gone.
    static func waitForExit(_ pid: pid_t, within timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !isAlive(pid) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return !isAlive(pid)
    }
}

/// Whether `-accel kvm` can work here.
enum KVMProbe {
    /// `/dev/kvm` opens, speaks API 12 and creates a VM, and the CPU advertises vmx or svm.
    ///
    /// The last check is not redundant: some sandboxes offer a software `/dev/kvm` that passes
    /// the ioctls, yet qemu aborts on it (`failed to set MSR`); without vmx/svm it is not real.
    static func hardwareKVMWorks() -> Bool {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard ioctl(fd, UInt(0xAE00)) == 12 else { return false }  // KVM_GET_API_VERSION
        let vm = ioctl(fd, UInt(0xAE01), 0)  // KVM_CREATE_VM
        guard vm >= 0 else { return false }
        close(vm)
        guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
        return cpuinfo.split(separator: "\n").contains { line in
            line.hasPrefix("flags") && line.split(separator: " ").contains { $0 == "vmx" || $0 == "svm" }
        }
    }
}
