import Foundation
import Subprocess
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// A program to run for a build: argv, environment, directory and optional stdin.
public struct BuildCommand: Sendable, Equatable {
    public var executable: String
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String?
    public var standardInput: String?

    public init(executable: String, arguments: [String], environment: [String: String],
                workingDirectory: String? = nil, standardInput: String? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.standardInput = standardInput
    }
}

/// Runs a build command in its own session, streaming merged output, and kills its whole
/// process group when it ends or is cancelled so nothing the build started survives.
public enum ChildProcess {
    public static func run(_ command: BuildCommand, output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw InfrastructureError("pipe() failed: errno \(errno)") }
        let readEnd = fds[0], writeEnd = fds[1]
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        let reader = PipeReader(fd: readEnd)
        let processGroup = Mutex<pid_t?>(nil)

        var options = PlatformOptions()
        options.createSession = true
        let environment = Environment.custom(Dictionary(uniqueKeysWithValues: command.environment.map {
            (Environment.Key(rawValue: $0.key)!, $0.value)
        }))
        let workingDirectory = command.workingDirectory.map { FilePath($0) }

        @Sendable func killGroup() {
            if let pid = processGroup.withLock({ $0 }) { kill(-pid, SIGKILL) }
        }

        return try await withTaskCancellationHandler {
            async let drained: Void = {
                while let chunk = await reader.next() { await output(chunk) }
            }()
            let status: TerminationStatus
            do {
                let input: InputMethodChoice = command.standardInput.map { .text($0) } ?? .none
                status = try await input.run(command, environment: environment, workingDirectory: workingDirectory,
                                             options: options, writeEnd: writeEnd) { pid in
                    processGroup.withLock { $0 = pid }
                    // Cancellation may have arrived before the pid was known.
                    if Task.isCancelled { kill(-pid, SIGKILL) }
                }
            } catch {
                // Once spawned, Subprocess has closed our write end; before that it is ours to close.
                if processGroup.withLock({ $0 }) == nil { close(writeEnd) }
                killGroup()
                await drained
                if Task.isCancelled { return .signaled(SIGKILL) }
                throw InfrastructureError("could not start \(command.executable): \(error)")
            }
            // The script is done: whatever it left running in its group goes too, which also
            // closes the pipe's last write ends so the reader sees end of file.
            killGroup()
            await drained
            switch status {
            case .exited(let code): return .exited(code)
            case .signaled(let signal): return .signaled(signal)
            }
        } onCancel: {
            killGroup()
        }
    }

    private enum InputMethodChoice {
        case none
        case text(String)

        func run(_ command: BuildCommand, environment: Environment, workingDirectory: FilePath?,
                 options: PlatformOptions, writeEnd: Int32, started: @escaping @Sendable (pid_t) -> Void) async throws -> TerminationStatus {
            let output = FileDescriptorOutput.fileDescriptor(FileDescriptor(rawValue: writeEnd), closeAfterSpawningProcess: true)
            switch self {
            case .none:
                return try await Subprocess.run(
                    .path(FilePath(command.executable)), arguments: Arguments(command.arguments),
                    environment: environment, workingDirectory: workingDirectory, platformOptions: options,
                    input: .none, output: output, error: .combinedWithOutput
                ) { execution in started(execution.processIdentifier.value) }.terminationStatus
            case .text(let text):
                return try await Subprocess.run(
                    .path(FilePath(command.executable)), arguments: Arguments(command.arguments),
                    environment: environment, workingDirectory: workingDirectory, platformOptions: options,
                    input: .string(text), output: output, error: .combinedWithOutput
                ) { execution in started(execution.processIdentifier.value) }.terminationStatus
            }
        }
    }
}
