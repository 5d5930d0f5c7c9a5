import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fault for the fake `vagrant` (written to `$VAGRANT_HOME/faults.json` under a subcommand key:
/// `"up"`, `"provision"`, `"halt"`, `"destroy"`, `"status"`, `"package"`, `"box add"`, `"box"`, ...).
public struct FakeVagrantFault: Codable, Sendable, Equatable {
    /// Fail the next N calls (exit 1) with `message` and error class `errorClass`
    /// (default `Vagrant::Errors::VagrantError`).
    public var fail: Int?
    public var message: String?
    public var errorClass: String?
    /// Every call hangs until the fault is cleared: the caller's timeout must kill it.
    public var hang: Bool?

    enum CodingKeys: String, CodingKey {
        case fail, message, hang
        case errorClass = "class"
    }

    public init(fail: Int? = nil, message: String? = nil, errorClass: String? = nil, hang: Bool? = nil) {
        self.fail = fail
        self.message = message
        self.errorClass = errorClass
        self.hang = hang
    }

    public static func fail(_ count: Int = 1, message: String? = nil, errorClass: String? = nil) -> Self {
        FakeVagrantFault(fail: count, message: message, errorClass: errorClass)
    }
    public static let hang = FakeVagrantFault(hang: true)
}

/// One line of `$VAGRANT_HOME/calls.jsonl`.
public struct FakeVagrantCall: Codable, Sendable {
    public let argv: [String]
    public let exit: Int32
    public let durationMs: Double
    public let start: Double
    public let pid: Int32
    public let cwd: String

    enum CodingKeys: String, CodingKey {
        case argv, exit, start, pid, cwd
        case durationMs = "duration_ms"
    }
}

/// A fake `vagrant` (`Tests/Fixtures/fakes/vagrant`) over a `FakeVirtualBox`: every VM it makes is one of
/// the fake VirtualBox's VMs. Its state is in `home` (`VAGRANT_HOME`). The Vagrantfile is not parsed:
/// the machine is configured by `TWORKER_BASE_BOX`, `TWORKER_VM_NAME`, `TWORKER_SSH_PORT` and
/// `TWORKER_PROVISION` (see the script's header). Prefer `withFakeVagrant`.
public final class FakeVagrant: Sendable {
    public let virtualBox: FakeVirtualBox
    /// `VAGRANT_HOME`: boxes, locks, faults.json and calls.jsonl.
    public let home: String
    /// Absolute path of the fake `vagrant` (an executable python3 script next to the fake `VBoxManage`).
    public let vagrantPath: String

    /// Creates `directory` as `VAGRANT_HOME`.
    public init(fake: FakeVirtualBox, directory: String) throws {
        virtualBox = fake
        home = URL(fileURLWithPath: directory).standardizedFileURL.path
        vagrantPath = fake.binDirectory + "/vagrant"
        guard FileManager.default.isExecutableFile(atPath: vagrantPath) else {
            throw TestSupportError("the fake vagrant is missing or not executable at \(vagrantPath)")
        }
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    }

    /// What a process running the fake needs: `VAGRANT_HOME` and `FAKE_VBOX_HOME`.
    public var environment: [String: String] { ["VAGRANT_HOME": home, "FAKE_VBOX_HOME": virtualBox.home] }

    /// A directory beside `home` holding `VBoxManage` and `vagrant` under their real names, needing
    /// no environment: first on a PATH, they stand where an operator's installs put them.
    public func installOnPath() throws -> String {
        let directory = URL(fileURLWithPath: home).deletingLastPathComponent().path + "/bin"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FakeVirtualBox.writeWrapper(directory + "/VBoxManage", environment: virtualBox.environment, executing: virtualBox.vboxmanagePath)
        try FakeVirtualBox.writeWrapper(directory + "/vagrant", environment: environment, executing: vagrantPath)
        return directory
    }

    /// The directory where `box add --name name` unpacks a box (as real vagrant lays it out).
    public func boxDirectory(_ name: String) -> String {
        home + "/boxes/" + name.replacingOccurrences(of: "/", with: "-VAGRANTSLASH-") + "/0/virtualbox"
    }

    /// Runs `vagrant args...` in `cwd` (default: the test's cwd) with this process's environment plus
    /// `environment` plus `extra`; kills its process group and throws `FakeVBoxTimeout` after `timeout`.
    @discardableResult
    public func run(_ args: [String], cwd: String? = nil, environment extra: [String: String] = [:],
                    timeout: Duration = .seconds(180)) async throws -> (status: Int32, stdout: String, stderr: String) {
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        env.merge(extra) { $1 }
        return try await Self.run(vagrantPath, args, cwd: cwd, environment: env, scratch: home, timeout: timeout)
    }

    /// Runs any `vagrant` executable (the real one too) with exactly `environment`, in `cwd`.
    public static func run(_ executable: String, _ args: [String], cwd: String?, environment: [String: String],
                           scratch: String, timeout: Duration) async throws -> (status: Int32, stdout: String, stderr: String) {
        if let cwd {
            // coreutils `env -C` changes directory and execs in place: the process group is the same.
            return try await FakeVirtualBox.capture("/usr/bin/env", ["-C", cwd, executable] + args, environment: environment,
                                                    scratch: scratch, timeout: timeout)
        }
        return try await FakeVirtualBox.capture(executable, args, environment: environment, scratch: scratch, timeout: timeout)
    }

    /// `--machine-readable` output as rows of fields (`timestamp`, `target`, `type`, data...), unescaped.
    public static func machineReadable(_ stdout: String) -> [[String]] {
        stdout.split(separator: "\n").map { line in
            line.split(separator: ",", omittingEmptySubsequences: false).map {
                $0.replacingOccurrences(of: "%!(VAGRANT_COMMA)", with: ",").replacingOccurrences(of: "\\n", with: "\n")
                    .replacingOccurrences(of: "\\r", with: "\r")
            }
        }
    }

    // MARK: - Bookkeeping

    /// Every logged call in start order (failed ones too).
    public func callRecords() throws -> [FakeVagrantCall] {
        guard let text = try? String(contentsOfFile: home + "/calls.jsonl", encoding: .utf8) else { return [] }
        let decoder = JSONDecoder()
        return try text.split(separator: "\n").map { try decoder.decode(FakeVagrantCall.self, from: Data($0.utf8)) }
            .sorted { $0.start < $1.start }
    }

    /// The argv (without `vagrant`) of every logged call, in start order.
    public func calls() throws -> [[String]] {
        try callRecords().map(\.argv)
    }

    /// Sets the fault for `subcommand` (`"up"`, `"box add"`, ...).
    public func inject(_ subcommand: String, fault: FakeVagrantFault) throws {
        try withFaults { $0[subcommand] = fault }
    }

    /// Removes the fault for `subcommand`, or every fault.
    public func clearFaults(_ subcommand: String? = nil) throws {
        try withFaults { faults in
            if let subcommand { faults[subcommand] = nil } else { faults.removeAll() }
        }
    }

    /// The faults still pending (counters decrease as calls consume them).
    public func faults() throws -> [String: FakeVagrantFault] {
        var result: [String: FakeVagrantFault] = [:]
        try withFaults { result = $0 }
        return result
    }

    private func withFaults(_ change: (inout [String: FakeVagrantFault]) -> Void) throws {
        let fd = open(home + "/.lock", O_CREAT | O_RDWR, 0o644)
        guard fd >= 0 else { throw TestSupportError("open \(home)/.lock failed: errno \(errno)") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw TestSupportError("flock failed: errno \(errno)") }
        defer { flock(fd, LOCK_UN) }
        let path = home + "/faults.json"
        var faults: [String: FakeVagrantFault] = [:]
        if let data = FileManager.default.contents(atPath: path), !data.isEmpty {
            faults = try JSONDecoder().decode([String: FakeVagrantFault].self, from: data)
        }
        change(&faults)
        try JSONEncoder().encode(faults).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    // MARK: - The real vagrant

    /// The real `vagrant` on PATH (not this fake), if one is installed.
    public static var realVagrant: String? {
        let fake = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/fakes/vagrant").resolvingSymlinksInPath().path
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") where !directory.isEmpty {
            let candidate = "\(directory)/vagrant"
            guard FileManager.default.isExecutableFile(atPath: candidate) else { continue }
            if URL(fileURLWithPath: candidate).resolvingSymlinksInPath().path != fake { return candidate }
        }
        return nil
    }
}

/// Runs `body` with a fake VirtualBox and a fake vagrant over it (`VAGRANT_HOME` in the same temp
/// directory); always powers every VM off and removes the directory.
public func withFakeVagrant<T>(_ body: (FakeVirtualBox, FakeVagrant) async throws -> T) async throws -> T {
    try await withFakeVirtualBox { fake in
        let home = URL(fileURLWithPath: fake.home).deletingLastPathComponent().path + "/vagrant.d"
        let vagrant = try FakeVagrant(fake: fake, directory: home)
        return try await body(fake, vagrant)
    }
}
