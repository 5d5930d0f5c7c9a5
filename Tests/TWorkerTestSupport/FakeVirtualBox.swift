import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fault for the fake `VBoxManage` to inject (written to `$FAKE_VBOX_HOME/faults.json` under a
/// subcommand key such as `"startvm"`, `"snapshot"` or `"snapshot restore"`).
public struct FakeVBoxFault: Codable, Sendable, Equatable {
    /// Fail the next N calls with `message` / `code` / `hex` (default: a generic E_FAIL 0x80004005).
    public var fail: Int?
    public var message: String?
    public var code: String?
    public var hex: String?
    /// Every call hangs (sleeps forever) until the fault is cleared: the caller's timeout must kill it.
    public var hang: Bool?
    /// Fail the next N calls with the session lock error (VBOX_E_INVALID_OBJECT_STATE 0x80bb0007).
    public var lock: Int?
    /// `startvm` reports success but the guest's sshd never starts (until the fault is cleared).
    public var neverBoots: Bool?

    enum CodingKeys: String, CodingKey {
        case fail, message, code, hex, hang, lock
        case neverBoots = "never_boots"
    }

    public init(fail: Int? = nil, message: String? = nil, code: String? = nil, hex: String? = nil,
                hang: Bool? = nil, lock: Int? = nil, neverBoots: Bool? = nil) {
        self.fail = fail
        self.message = message
        self.code = code
        self.hex = hex
        self.hang = hang
        self.lock = lock
        self.neverBoots = neverBoots
    }

    public static func fail(_ count: Int = 1, message: String? = nil, code: String? = nil, hex: String? = nil) -> Self {
        FakeVBoxFault(fail: count, message: message, code: code, hex: hex)
    }
    public static let hang = FakeVBoxFault(hang: true)
    public static func lock(_ count: Int = 1) -> Self { FakeVBoxFault(lock: count) }
    public static let neverBoots = FakeVBoxFault(neverBoots: true)
}

/// One line of `$FAKE_VBOX_HOME/calls.jsonl`.
public struct FakeVBoxCall: Codable, Sendable {
    public let argv: [String]
    public let exit: Int32
    public let durationMs: Double
    /// Seconds since the epoch when the call started.
    public let start: Double
    public let pid: Int32

    enum CodingKeys: String, CodingKey {
        case argv, exit, start, pid
        case durationMs = "duration_ms"
    }
}

/// A `VBoxManage` call that did not finish within its timeout; its process group was SIGKILLed and reaped.
public struct FakeVBoxTimeout: Error, CustomStringConvertible {
    public let pid: pid_t
    public let arguments: [String]
    public var description: String { "VBoxManage \(arguments.joined(separator: " ")) (pid \(pid)) timed out and was killed" }
}

/// A fake VirtualBox for the `virtualbox` provider's tests: `Tests/Fixtures/fakes/VBoxManage` with its
/// state in `home` (`FAKE_VBOX_HOME`). Running VMs are real sshd processes on 127.0.0.1 that accept
/// `privateKeyPath`. Prefer `withFakeVirtualBox`, which always powers every VM off.
public final class FakeVirtualBox: Sendable {
    /// `FAKE_VBOX_HOME`: all of the fake's state.
    public let home: String
    /// Absolute path of the fake `VBoxManage` (an executable python3 script).
    public let vboxmanagePath: String
    /// The directory holding the fake `VBoxManage`, to put first on a PATH.
    public let binDirectory: String
    /// ed25519 key the guests accept (its public half is in `home/authorized_keys`).
    public var privateKeyPath: String { home + "/id_ed25519" }
    public var publicKeyPath: String { home + "/id_ed25519.pub" }

    private let settings = Mutex(Settings())

    struct Settings: Codable {
        var bootDelay = 0.5
        var resumeDelay = 0.1
        var lockWindow = 0.2
        var importDelay = 0.3
        var acpiDelay = 0.3
        enum CodingKeys: String, CodingKey {
            case bootDelay = "boot_delay", resumeDelay = "resume_delay", lockWindow = "lock_window"
            case importDelay = "import_delay", acpiDelay = "acpi_delay"
        }
    }

    /// Creates `directory` (the fake's home), a client key pair and `authorized_keys`.
    public init(directory: String) throws {
        home = URL(fileURLWithPath: directory).standardizedFileURL.path
        binDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/fakes").path
        vboxmanagePath = binDirectory + "/VBoxManage"
        guard FileManager.default.isExecutableFile(atPath: vboxmanagePath) else {
            throw TestSupportError("the fake VBoxManage is missing or not executable at \(vboxmanagePath)")
        }
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: home + "/id_ed25519") {
            let status = try Self.runSync("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "tworker-test",
                                                                  "-f", home + "/id_ed25519"])
            guard status == 0 else { throw TestSupportError("ssh-keygen failed with status \(status)") }
        }
        let publicKey = try String(contentsOfFile: home + "/id_ed25519.pub", encoding: .utf8)
        try publicKey.write(toFile: home + "/authorized_keys", atomically: true, encoding: .utf8)
        try writeSettings(settings.withLock { $0 })
    }

    // MARK: - Knobs (settings.json; FAKE_VBOX_* environment variables override them)

    /// Seconds from `startvm` of a powered-off/aborted VM until its sshd listens (default 0.5).
    public var bootDelay: Double {
        get { settings.withLock { $0.bootDelay } }
        set { update { $0.bootDelay = newValue } }
    }
    /// Seconds from `startvm` of a saved VM until its sshd listens (default 0.1).
    public var resumeDelay: Double {
        get { settings.withLock { $0.resumeDelay } }
        set { update { $0.resumeDelay = newValue } }
    }
    /// Seconds a VM stays session-locked after `controlvm poweroff` (default 0.2).
    public var lockWindow: Double {
        get { settings.withLock { $0.lockWindow } }
        set { update { $0.lockWindow = newValue } }
    }
    /// Seconds an `import` takes (default 0.3; the import lock is held meanwhile).
    public var importDelay: Double {
        get { settings.withLock { $0.importDelay } }
        set { update { $0.importDelay = newValue } }
    }
    /// Seconds from `controlvm acpipowerbutton` until the VM is powered off (default 0.3).
    public var acpiDelay: Double {
        get { settings.withLock { $0.acpiDelay } }
        set { update { $0.acpiDelay = newValue } }
    }

    private func update(_ change: (inout Settings) -> Void) {
        let new = settings.withLock { value in
            change(&value)
            return value
        }
        try? writeSettings(new)
    }

    private func writeSettings(_ value: Settings) throws {
        let data = try JSONEncoder().encode(value)
        try data.write(to: URL(fileURLWithPath: home + "/settings.json"), options: .atomic)
    }

    /// What to add to the environment of a process that runs the fake (e.g. tworker): `FAKE_VBOX_HOME`.
    /// The knobs live in `settings.json`, so changing them affects processes already running; the
    /// environment variables `FAKE_VBOX_BOOT_DELAY`, `_RESUME_DELAY`, `_LOCK_WINDOW`, `_IMPORT_DELAY`,
    /// `_ACPI_DELAY` would override them (see `knobEnvironment`).
    public var environment: [String: String] { ["FAKE_VBOX_HOME": home] }

    /// A `VBoxManage` that needs no FAKE_VBOX_HOME: for workers running inside the test process,
    /// whose environment a test cannot change safely.
    public func selfContainedVBoxManage() throws -> String {
        let wrapper = home + "/VBoxManage-wrapper"
        try "#!/bin/sh\nFAKE_VBOX_HOME='\(home)' exec '\(vboxmanagePath)' \"$@\"\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        return wrapper
    }

    /// A directory beside `home` holding only `VBoxManage`, under its real name and needing no
    /// FAKE_VBOX_HOME: first on a PATH, it stands where an operator's VirtualBox install puts it.
    public func installOnPath() throws -> String {
        let directory = URL(fileURLWithPath: home).deletingLastPathComponent().path + "/bin-vboxmanage"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.writeWrapper(directory + "/VBoxManage", environment: environment, executing: vboxmanagePath)
        return directory
    }

    /// A `#!/bin/sh` script that execs `executable` with `environment` added.
    static func writeWrapper(_ path: String, environment: [String: String], executing executable: String) throws {
        let assignments = environment.sorted { $0.key < $1.key }.map { "\($0.key)='\($0.value)'" }.joined(separator: " ")
        try "#!/bin/sh\n\(assignments) exec '\(executable)' \"$@\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
    }

    /// The user the tests run as: the fake guests log in as that user.
    public static var currentUser: String { String(cString: getpwuid(getuid())!.pointee.pw_name) }

    /// The current knobs as environment variables (they override settings.json for that process).
    public var knobEnvironment: [String: String] {
        let value = settings.withLock { $0 }
        return [
            "FAKE_VBOX_BOOT_DELAY": String(value.bootDelay), "FAKE_VBOX_RESUME_DELAY": String(value.resumeDelay),
            "FAKE_VBOX_LOCK_WINDOW": String(value.lockWindow), "FAKE_VBOX_IMPORT_DELAY": String(value.importDelay),
            "FAKE_VBOX_ACPI_DELAY": String(value.acpiDelay),
        ]
    }

    // MARK: - Running the fake

    /// Runs `VBoxManage args...` (in its own process group); kills the group and throws
    /// `FakeVBoxTimeout` if it has not exited within `timeout`.
    @discardableResult
    public func run(_ args: [String], timeout: Duration = .seconds(120)) async throws
        -> (status: Int32, stdout: String, stderr: String) {
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        return try await Self.capture(vboxmanagePath, args, environment: env, scratch: home, timeout: timeout)
    }

    /// Runs `command` in the guest listening on 127.0.0.1:`port`, as tworker would over ssh.
    @discardableResult
    public func ssh(port: Int, _ command: String, timeout: Duration = .seconds(60)) async throws
        -> (status: Int32, stdout: String, stderr: String) {
        let args = ["-i", privateKeyPath, "-p", String(port), "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                    "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "127.0.0.1", command]
        return try await Self.capture("/usr/bin/ssh", args, environment: ProcessInfo.processInfo.environment,
                                      scratch: home, timeout: timeout)
    }

    /// Polls until `ssh ... true` succeeds on `port`; false on timeout.
    public func waitForSSH(port: Int, timeout: Duration = .seconds(20)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await ssh(port: port, "true", timeout: .seconds(10)).status == 0 { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// `VBoxManage` output on failure, for `#expect` messages.
    public static func describe(_ result: (status: Int32, stdout: String, stderr: String)) -> String {
        "exit \(result.status)\nstdout: \(result.stdout)\nstderr: \(result.stderr)"
    }

    private func runChecked(_ args: [String]) async throws -> String {
        let result = try await run(args)
        guard result.status == 0 else {
            throw TestSupportError("VBoxManage \(args.joined(separator: " ")) failed: \(Self.describe(result))")
        }
        return result.stdout
    }

    // MARK: - Test shortcuts (`VBoxManage __fake ...`, not in `calls()`)

    /// Registers a powered-off VM `name` with a `guestssh` rule 127.0.0.1:`port` -> 22, its disk a copy
    /// of `diskFrom` (or empty) and, with `snapshot`, a snapshot of it (`online`: the VM is left
    /// `saved`, and restoring the snapshot leaves it `saved`). Returns the VM's UUID.
    @discardableResult
    public func createVM(name: String, port: Int, snapshot: String? = nil, online: Bool = false,
                         diskFrom: String? = nil) async throws -> String {
        var args = ["__fake", "create", name, "--port", String(port)]
        if let snapshot { args += ["--snapshot", snapshot] }
        if online { args.append("--online") }
        if let diskFrom { args += ["--disk-from", diskFrom] }
        return try await runChecked(args).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `VMState` of a VM (registered or not): poweroff, running, saved, paused, aborted.
    public func state(of vm: String) async throws -> String {
        try await runChecked(["__fake", "state", vm]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The VM's disk directory: the guest's filesystem and the cwd/HOME of its ssh sessions.
    public func diskDirectory(of vm: String) async throws -> String {
        try await runChecked(["__fake", "disk", vm]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The guest's processes (launcher, sshd, sessions and their commands) of a running VM.
    public func guestProcesses(of vm: String) async throws -> [pid_t] {
        try await runChecked(["__fake", "pids", vm]).split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) }
    }

    /// Kills the guest like a crash (state `aborted`): connected ssh clients see the connection drop.
    public func killGuest(_ vm: String) async throws {
        _ = try await runChecked(["__fake", "kill-guest", vm])
    }

    /// Powers off every running VM and kills every process the fake started. Never throws.
    public func stopAll() async {
        _ = try? await run(["__fake", "stop-all"], timeout: .seconds(30))
    }

    // MARK: - Bookkeeping

    /// Every logged call in start order (including failed ones), without the `__fake` ones.
    public func callRecords() throws -> [FakeVBoxCall] {
        guard let text = try? String(contentsOfFile: home + "/calls.jsonl", encoding: .utf8) else { return [] }
        let decoder = JSONDecoder()
        return try text.split(separator: "\n").map { try decoder.decode(FakeVBoxCall.self, from: Data($0.utf8)) }
            .filter { $0.argv.first != "__fake" }
            .sorted { $0.start < $1.start }
    }

    /// The argv (without `VBoxManage`) of every logged call, in start order, without `__fake` calls.
    public func calls() throws -> [[String]] {
        try callRecords().map(\.argv)
    }

    /// Total bytes of disk copied by `import` and `clonevm` (a linked clone adds only ~4 KB).
    public func bytesCopied() throws -> Int {
        guard let text = try? String(contentsOfFile: home + "/bytes_copied", encoding: .utf8) else { return 0 }
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Sets the fault for `subcommand` (`"startvm"`, `"snapshot"`, `"snapshot restore"`, `"controlvm poweroff"`, ...).
    public func inject(_ subcommand: String, fault: FakeVBoxFault) throws {
        try withFaults { $0[subcommand] = fault }
    }

    /// Removes the fault for `subcommand`, or every fault.
    public func clearFaults(_ subcommand: String? = nil) throws {
        try withFaults { faults in
            if let subcommand { faults[subcommand] = nil } else { faults.removeAll() }
        }
    }

    /// The faults still pending (counters decrease as calls consume them).
    public func faults() throws -> [String: FakeVBoxFault] {
        var result: [String: FakeVBoxFault] = [:]
        try withFaults { result = $0 }
        return result
    }

    /// Read-modify-write of faults.json under the fake's global lock (`home/.lock`, flock).
    private func withFaults(_ change: (inout [String: FakeVBoxFault]) -> Void) throws {
        let fd = open(home + "/.lock", O_CREAT | O_RDWR, 0o644)
        guard fd >= 0 else { throw TestSupportError("open \(home)/.lock failed: errno \(errno)") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw TestSupportError("flock failed: errno \(errno)") }
        defer { flock(fd, LOCK_UN) }
        let path = home + "/faults.json"
        var faults: [String: FakeVBoxFault] = [:]
        if let data = FileManager.default.contents(atPath: path), !data.isEmpty {
            faults = try JSONDecoder().decode([String: FakeVBoxFault].self, from: data)
        }
        change(&faults)
        try JSONEncoder().encode(faults).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    // MARK: - Processes

    /// True while `pid` exists and is not a zombie.
    public static func processIsAlive(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first ?? "X"
        return state != "Z" && state != "X"
    }

    static func runSync(_ executable: String, _ args: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// posix_spawn `executable` in its own process group with stdout/stderr to files; waits by polling.
    public static func capture(_ executable: String, _ args: [String], environment: [String: String], scratch: String,
                        timeout: Duration) async throws -> (status: Int32, stdout: String, stderr: String) {
        let runs = scratch + "/.runs"
        try FileManager.default.createDirectory(atPath: runs, withIntermediateDirectories: true)
        let id = UUID().uuidString
        let outPath = "\(runs)/\(id).out", errPath = "\(runs)/\(id).err"
        defer {
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        let process = try SpawnedProcess.spawn(executable, args, environment: environment, log: outPath, errorLog: errPath)
        guard let exitStatus = await process.waitForExit(timeout: timeout) else {
            await process.kill9()
            throw FakeVBoxTimeout(pid: process.pid, arguments: args)
        }
        let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return (exitStatus, out, err)
    }
}

/// Runs `body` with a fake VirtualBox in a fresh temp directory; always powers every VM off (killing
/// every sshd the fake started) and removes the directory, whether `body` returns or throws.
public func withFakeVirtualBox<T>(_ body: (FakeVirtualBox) async throws -> T) async throws -> T {
    let directory = try TempDirectory(prefix: "tworker-fakevbox")
    let fake: FakeVirtualBox
    do {
        fake = try FakeVirtualBox(directory: directory.path + "/home")
    } catch {
        directory.remove()
        throw error
    }
    let result: T
    do {
        result = try await body(fake)
    } catch {
        await fake.stopAll()
        directory.remove()
        throw error
    }
    await fake.stopAll()
    directory.remove()
    return result
}
