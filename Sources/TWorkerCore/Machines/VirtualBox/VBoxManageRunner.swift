import Foundation
import Logging
import Subprocess
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// What a finished VBoxManage call printed.
public struct VBoxManageOutput: Sendable {
    public var stdout: String
    public var stderr: String
}

/// Runs VBoxManage commands: one place that applies the timeout, logs argv, exit code and
/// duration, counts calls, refuses to touch VMs outside tworker's prefix, turns stderr into
/// `VBoxManageError`, and retries the lock error VirtualBox reports right after a poweroff.
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
    private let counter = Mutex<Int>(0)

    public init(executable: String, namePrefix: String, timeout: Duration, logger: Logger,
                lockRetries: Int = 5, lockRetryDelay: Duration = .milliseconds(200)) {
        self.executable = executable
        self.namePrefix = namePrefix
        self.timeout = timeout
        self.logger = logger
        self.lockRetries = lockRetries
        self.lockRetryDelay = lockRetryDelay
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
        // Looked up per call, as a shell would: VirtualBox installed while tworker runs is found.
        let executable = try ProgramLocator().locate(program)
        counter.withLock { $0 += 1 }
        let started = ContinuousClock.now
        let result = try await withThrowingTaskGroup(of: Outcome.self) { group -> Outcome in
            group.addTask {
                let result = try await Subprocess.run(
                    .path(FilePath(executable)), arguments: Arguments(command.arguments),
                    environment: .inherit, output: .string(limit: 8 << 20), error: .string(limit: 1 << 20))
                let code: Int32 = switch result.terminationStatus {
                case .exited(let code): code
                case .signaled(let signal): 128 + signal
                }
                return .finished(code, result.standardOutput, result.standardError)
            }
            group.addTask { [timeout] in
                try await Task.sleep(for: timeout)
                return .timedOut
            }
            let first = try await group.next() ?? .timedOut
            // Cancelling the group makes Subprocess kill a hung VBoxManage.
            group.cancelAll()
            return first
        }
        let elapsed = ContinuousClock.now - started
        let milliseconds = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
        switch result {
        case .timedOut:
            logger.error("VBoxManage timed out", metadata: ["argv": "\(command.arguments)", "after_ms": "\(milliseconds)"])
            var error = VBoxManageError.parse(command: command, exitCode: nil, stdout: "", stderr: "")
            error.timedOut = true
            error.message = "timed out after \(timeout.components.seconds) s"
            throw error
        case .finished(let code, let stdout, let stderr):
            logger.debug("VBoxManage", metadata: ["argv": "\(command.arguments)", "exit": "\(code)", "ms": "\(milliseconds)"])
            // Vagrant's rule: an error block on stderr is a failure even with exit 0.
            if code != 0 || stderr.contains("VBoxManage: error:") {
                throw VBoxManageError.parse(command: command, exitCode: code, stdout: stdout, stderr: stderr)
            }
            return VBoxManageOutput(stdout: stdout, stderr: stderr)
        }
    }

    private enum Outcome: Sendable {
        case finished(Int32, String, String)
        case timedOut
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
