import Foundation
import Logging
import Subprocess
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// What a finished program printed.
public struct ProgramOutput: Sendable, Equatable {
    public var stdout: String
    public var stderr: String

    public init(stdout: String = "", stderr: String = "") {
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// The seam between logic and processes: code that runs programs takes one of these, tests
/// hand it a fake that records the commands and answers without spawning.
public protocol ProgramRunning: Sendable {
    /// Runs `command` to its end and returns its output; throws `ProgramFailure` when it fails
    /// or times out, `ProgramNotFound` when it is not there.
    @discardableResult
    func run(_ command: ProgramCommand) async throws -> ProgramOutput
}

/// Runs external programs that finish on their own, all the same way: found on PATH as a shell
/// would (`ProgramLocator`, for its key-naming message), run with their timeout, killed when
/// that expires or the task is cancelled, output captured, argv, exit status and duration
/// logged at debug level (`--verbose`), and a failure thrown as one `ProgramFailure`.
///
/// Builds and provisioning scripts stream their output and own a process group: `ChildProcess`.
public struct ProgramRunner: ProgramRunning {
    public var logger: Logger
    /// nil: this process's PATH at each call.
    public var searchPath: String?

    public init(logger: Logger = Logger(label: "tworker.programs"), searchPath: String? = nil) {
        self.logger = logger
        self.searchPath = searchPath
    }

    /// The path `program` runs by; throws the locator's operator-facing message.
    public func locate(_ program: Program) throws(ProgramNotFound) -> String {
        try (searchPath.map { ProgramLocator(searchPath: $0) } ?? ProgramLocator()).locate(program)
    }

    @discardableResult
    public func run(_ command: ProgramCommand) async throws -> ProgramOutput {
        let executable = try locate(command.program)
        let started = ContinuousClock.now
        let outcome = try await withThrowingTaskGroup(of: Outcome.self) { group -> Outcome in
            group.addTask { try await Self.spawn(executable, command) }
            if let timeout = command.timeout {
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return .timedOut
                }
            }
            let first = try await group.next() ?? .timedOut
            // Cancelling the group makes Subprocess kill a program still running.
            group.cancelAll()
            return first
        }
        let elapsed = ContinuousClock.now - started
        let milliseconds = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
        if command.wording == .vboxManage {
            let outcome = switch outcome {
            case .timedOut: "timeout"
            case .finished(let status, let output): status == .exited(0) && !output.stderr.contains("VBoxManage: error:") ? "ok" : "error"
            }
            WorkerObservations.record(.vmCommand, labels: ["command": command.arguments.first ?? "unknown", "outcome": outcome], duration: elapsed)
        }
        switch outcome {
        case .timedOut:
            let timeout = command.timeout ?? .zero
            logger.error("\(command.tool) timed out", metadata: ["argv": "\(command.arguments)", "after_ms": "\(milliseconds)"])
            throw ProgramFailure.timedOut(command, after: timeout)
        case .finished(let status, let output):
            let failure = ProgramFailure(tool: command.tool, arguments: command.arguments, status: status,
                                         stdout: output.stdout, stderr: output.stderr, wording: command.wording)
            logger.debug("\(command.tool)", metadata: ["argv": "\(command.arguments)", "exit": "\(failure.exitCode ?? -1)", "ms": "\(milliseconds)"])
            if status != .exited(0) || (command.wording == .vboxManage && output.stderr.contains("VBoxManage: error:")) {
                throw failure
            }
            return output
        }
    }

    private enum Outcome: Sendable {
        case finished(TerminationStatus, ProgramOutput)
        case timedOut
    }

    /// The Subprocess call; captured and discarded output are different generic types. The
    /// program leads a process group of its own: on a timeout or a cancel Subprocess TERMs the
    /// group, then KILLs it, so nothing it started outlives it.
    private static func spawn(_ executable: String, _ command: ProgramCommand) async throws -> Outcome {
        let path = Executable.path(FilePath(executable))
        let arguments = Arguments(command.arguments)
        let environment: Environment = switch command.environment {
        case .inherit(let updates):
            .inherit.updating(Dictionary(uniqueKeysWithValues: updates.map { (Environment.Key(stringLiteral: $0.key), $0.value) }))
        case .exactly(let variables):
            .custom(Dictionary(uniqueKeysWithValues: variables.map { (Environment.Key(stringLiteral: $0.key), $0.value) }))
        }
        let directory = command.workingDirectory.map { FilePath($0) }
        var options = PlatformOptions()
        options.processGroupID = 0
        options.teardownSequence = [.send(signal: .terminate, toProcessGroup: true, allowedDurationToNextStep: .seconds(2))]
        let group = Mutex<pid_t?>(nil)
        defer { if let pid = group.withLock({ $0 }) { ProgramGroups.remove(pid) } }
        @Sendable func register(_ pid: pid_t) {
            group.withLock { $0 = pid }
            ProgramGroups.insert(pid)
        }
        if command.capturesOutput {
            let result = try await Subprocess.run(path, arguments: arguments, environment: environment, workingDirectory: directory,
                                                  platformOptions: options, input: .none,
                                                  output: .string(limit: command.outputLimit), error: .string(limit: command.errorLimit)) {
                register($0.processIdentifier.value)
            }
            return .finished(result.terminationStatus, ProgramOutput(stdout: result.standardOutput, stderr: result.standardError))
        }
        let result = try await Subprocess.run(path, arguments: arguments, environment: environment, workingDirectory: directory,
                                              platformOptions: options, input: .none, output: .discarded, error: .discarded) {
            register($0.processIdentifier.value)
        }
        return .finished(result.terminationStatus, ProgramOutput())
    }
}
