import Foundation
import Logging
import Synchronization

/// What a finished VBoxManage call printed.
public struct VBoxManageOutput: Sendable {
    public var stdout: String
    public var stderr: String
}

/// Runs VBoxManage commands through `ProgramRunner` (timeout, logging, `VBoxManageError`);
/// adds what is VirtualBox's own: counts calls, refuses to touch VMs outside tworker's prefix,
/// and retries the lock error VirtualBox reports right after a poweroff.
public final class VBoxManageRunner: Sendable {
    /// `virtualbox.vboxmanage`: a bare name is looked up on PATH at each call.
    public let executable: String
    public let namePrefix: String
    public let timeout: Duration
    /// Lock-error retries: 5 tries, 0.2 s doubling (VirtualBox releases the session lock a
    /// moment after `controlvm poweroff` returns).
    public let lockRetries: Int
    public let lockRetryDelay: Duration
    let logger: Logger
    /// Where the calls go: the real `ProgramRunner`, or a test's fake.
    let programs: any ProgramRunning
    private let counter = Mutex<Int>(0)

    public init(executable: String, namePrefix: String, timeout: Duration, logger: Logger,
                lockRetries: Int = 5, lockRetryDelay: Duration = .milliseconds(200), programs: (any ProgramRunning)? = nil) {
        self.executable = executable
        self.namePrefix = namePrefix
        self.timeout = timeout
        self.logger = logger
        self.lockRetries = lockRetries
        self.lockRetryDelay = lockRetryDelay
        self.programs = programs ?? ProgramRunner(logger: logger)
    }

    public var program: Program { .vboxmanage(executable) }

    /// Calls made so far (every try counts).
    public var calls: Int { counter.withLock { $0 } }

    public struct OutsidePrefix: Error, CustomStringConvertible {
        public var vm: String
        public var prefix: String
        public var description: String { "refusing to change VM '\(vm)': its name does not start with '\(prefix)'" }
    }

    /// Runs `command`, retrying lock errors; throws `VBoxManageError` on failure, `ProgramNotFound`
    /// when VBoxManage is not there.
    @discardableResult
    public func run(_ command: VBoxManageCommand) async throws -> VBoxManageOutput {
        if let vm = command.changes, !vm.hasPrefix(namePrefix) || namePrefix.isEmpty {
            throw OutsidePrefix(vm: vm, prefix: namePrefix)
        }
        var delay = lockRetryDelay
        var attempt = 1
        while true {
            do {
                return try await runOnce(command)
            } catch let error as VBoxManageError where error.isLocked && attempt < lockRetries {
                logger.debug("VM locked, retrying", metadata: ["command": "\(command)", "attempt": "\(attempt)", "delay": "\(delay)"])
                try await Task.sleep(for: delay)
                delay *= 2
                attempt += 1
            }
        }
    }

    private func runOnce(_ command: VBoxManageCommand) async throws -> VBoxManageOutput {
        counter.withLock { $0 += 1 }
        let output = try await programs.run(.vboxManage(command, executable: executable, timeout: timeout))
        return VBoxManageOutput(stdout: output.stdout, stderr: output.stderr)
    }

    // MARK: - Reads

    /// `showvminfo --machinereadable`, parsed; nil when the VM does not exist.
    public func info(_ vm: String) async throws -> MachineReadable? {
        do {
            return MachineReadable(try await run(.showVMInfo(vm)).stdout)
        } catch let error as VBoxManageError where error.isNotFound {
            return nil
        }
    }

    /// Names of registered VMs.
    public func listVMs() async throws -> [String] {
        MachineReadable.vmNames(fromList: try await run(.listVMs()).stdout)
    }
}

/// `key="value"` lines of `--machinereadable` output.
public struct MachineReadable: Sendable, Equatable {
    public var values: [String: String]

    public init(_ text: String) {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            var key = String(line[..<equals])
            if key.hasPrefix("\""), key.hasSuffix("\""), key.count >= 2 { key = String(key.dropFirst().dropLast()) }
            values[key] = Self.unquote(line[line.index(after: equals)...])
        }
        self.values = values
    }

    public subscript(key: String) -> String? { values[key] }

    public var state: String? { values["VMState"] }
    public var uuid: String? { values["UUID"] }

    /// Every NAT forwarding rule on the first adapter.
    public var forwardingRules: [NATRule] {
        values.filter { $0.key.hasPrefix("Forwarding(") }.sorted { $0.key < $1.key }.compactMap { NATRule(specification: $0.value) }
    }

    /// Snapshot names, from `showvminfo` or `snapshot list` (`SnapshotName`, `SnapshotName-1`, ...).
    public var snapshotNames: [String] {
        values.filter { $0.key == "SnapshotName" || $0.key.hasPrefix("SnapshotName-") }.map(\.value)
    }

    static func unquote(_ raw: Substring) -> String {
        guard raw.hasPrefix("\""), raw.hasSuffix("\""), raw.count >= 2 else { return String(raw) }
        var result = ""
        var escaped = false
        for character in raw.dropFirst().dropLast() {
            if escaped {
                result.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else {
                result.append(character)
            }
        }
        return result
    }

    /// `"name" {uuid}` lines of `list vms`.
    public static func vmNames(fromList text: String) -> [String] {
        text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("\""), let close = line.lastIndex(of: "\""), close > line.startIndex else { return nil }
            return String(line[line.index(after: line.startIndex)..<close])
        }
    }
}
