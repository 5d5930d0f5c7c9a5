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

extension BuildCommand {
    /// `command` found on PATH the way `ProgramRunner` finds it, to run streaming here.
    public init(_ command: ProgramCommand, standardInput: String? = nil, runner: ProgramRunner = ProgramRunner()) throws {
        self.init(executable: try runner.locate(command.program), arguments: command.arguments,
                  environment: command.environment.resolved(), workingDirectory: command.workingDirectory,
                  standardInput: standardInput)
    }
}

/// Runs a build command in its own session, streaming its output, and kills its whole
/// process group when it ends or is cancelled so nothing the build started survives.
public enum ChildProcess {
    /// Runs `command` with stdout and stderr merged into `output`, or, when `errorOutput` is
    /// given, with stderr delivered there separately (ssh reports its own failures on it).
    /// `started` learns the pid (= process group) of the build as soon as it is spawned.
    /// A script written to a program that exits before reading it all (ssh refused, a session
    /// that stops at its first line) must fail the write, not kill tworker with SIGPIPE from
    /// whichever thread writes. Ignoring it here reaches no child: Subprocess resets every
    /// signal's disposition before exec.
    private static let brokenPipesIgnored: Void = { signal(SIGPIPE, SIG_IGN) }()

    public static func run(_ command: BuildCommand, output: @escaping @Sendable ([UInt8]) async -> Void,
                           errorOutput: (@Sendable ([UInt8]) async -> Void)? = nil,
                           started: (@Sendable (pid_t) -> Void)? = nil) async throws -> BuildExit {
        _ = brokenPipesIgnored
        let outputPipe = try Pipe.make()
        let errorPipe = try errorOutput.map { _ in try Pipe.make() }
        let outputReader = PipeReader(fd: outputPipe.read)
        let errorReader = errorPipe.map { PipeReader(fd: $0.read) }
        let processGroup = Mutex<pid_t?>(nil)

        let inputPipe = try command.standardInput.map { _ in try Pipe.make() }
        var options = PlatformOptions()
        options.createSession = true
        let spawn = Spawn(command: command, options: options, outputFD: outputPipe.write, errorFD: errorPipe?.write, inputFD: inputPipe?.read)

        @Sendable func killGroup() {
            if let pid = processGroup.withLock({ $0 }) { kill(-pid, SIGKILL) }
        }

        defer { if let pid = processGroup.withLock({ $0 }) { ProgramGroups.remove(pid) } }
        return try await withTaskCancellationHandler {
            async let drainedOutput: Void = { while let chunk = await outputReader.next() { await output(chunk) } }()
            async let drainedErrors: Void = {
                guard let errorReader, let errorOutput else { return }
                while let chunk = await errorReader.next() { await errorOutput(chunk) }
            }()
            let status: TerminationStatus
            do {
                status = try await spawn.run { pid in
                    processGroup.withLock { $0 = pid }
                    ProgramGroups.insert(pid)
                    // Fed after `started`: a local build waits for its input until its group is recorded.
                    started?(pid)
                    if let inputPipe, let text = command.standardInput { feed(Array(text.utf8), to: inputPipe.write) }
                    // Cancellation may have arrived before the pid was known.
                    if Task.isCancelled { kill(-pid, SIGKILL) }
                }
            } catch {
                // Once spawned, Subprocess has closed our write ends; before that they are ours to close.
                if processGroup.withLock({ $0 }) == nil {
                    close(outputPipe.write)
                    if let errorPipe { close(errorPipe.write) }
                    if let inputPipe { close(inputPipe.read); close(inputPipe.write) }
                }
                killGroup()
                _ = await (drainedOutput, drainedErrors)
                if Task.isCancelled { return .signaled(SIGKILL) }
                throw InfrastructureError("could not start \(command.executable): \(error)")
            }
            // The script is done: whatever it left running in its group goes too, which also
            // closes the pipes' last write ends so the readers see end of file.
            killGroup()
            let readers = [outputReader] + (errorReader.map { [$0] } ?? [])
            let leftHolders = Task {
                // A reader that still waits for data now waits for a write end outside the group:
                // one a process started elsewhere inherited, or an ssh master still holding what
                // its session handed it. It would wait as long as that one lives; what the build
                // wrote is read by now.
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    for reader in readers where reader.waitingForData(longerThan: Self.holderGrace) { reader.abandon() }
                }
            }
            _ = await (drainedOutput, drainedErrors)
            leftHolders.cancel()
            switch status {
            case .exited(let code): return .exited(code)
            case .signaled(let signal): return .signaled(signal)
            }
        } onCancel: {
            killGroup()
        }
    }

    /// How long a reader may wait for data once the build's group is gone.
    static let holderGrace: Duration = .seconds(2)

    /// Both ends close-on-exec (the child gets its end as a copy on 0, 1 or 2): a program
    /// another thread starts meanwhile inherits neither, so the readers see end of file when
    /// the build ends and not when that program does.
    struct Pipe {
        var read: Int32
        var write: Int32

        static func make() throws -> Pipe {
            var fds: [Int32] = [0, 0]
            // (pipe2 is not in Swift's Glibc module; what Subprocess starts meanwhile gets only
            // the descriptors it is given either way.)
            guard pipe(&fds) == 0 else { throw InfrastructureError("pipe() failed: errno \(errno)") }
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return Pipe(read: fds[0], write: fds[1])
        }
    }

    /// Writes `bytes` to `fd` on a thread of its own (a script larger than the pipe's buffer
    /// waits for the child to read), then closes it. A child that exits without reading it all
    /// ends the write with EPIPE (SIGPIPE is ignored): what it did not read is simply dropped.
    static func feed(_ bytes: [UInt8], to fd: Int32) {
        Thread.detachNewThread {
            var offset = 0
            bytes.withUnsafeBytes { buffer in
                while offset < buffer.count {
                    let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        break
                    }
                    offset += written
                }
            }
            close(fd)
        }
    }

    /// The Subprocess call, spelled out per input and error choice (their types are generic).
    private struct Spawn: Sendable {
        var command: BuildCommand
        var options: PlatformOptions
        var outputFD: Int32
        var errorFD: Int32?
        /// The read end of the script's pipe, given to the child as its stdin.
        var inputFD: Int32?

        func run(started: @escaping @Sendable (pid_t) -> Void) async throws -> TerminationStatus {
            let executable = Executable.path(FilePath(command.executable))
            let arguments = Arguments(command.arguments)
            let environment = Environment.custom(Dictionary(uniqueKeysWithValues: command.environment.map {
                (Environment.Key(rawValue: $0.key)!, $0.value)
            }))
            let directory = command.workingDirectory.map { FilePath($0) }
            let output = FileDescriptorOutput.fileDescriptor(FileDescriptor(rawValue: outputFD), closeAfterSpawningProcess: true)
            let errorOutput = errorFD.map { FileDescriptorOutput.fileDescriptor(FileDescriptor(rawValue: $0), closeAfterSpawningProcess: true) }
            let input = inputFD.map { FileDescriptorInput.fileDescriptor(FileDescriptor(rawValue: $0), closeAfterSpawningProcess: true) }
            switch (input, errorOutput) {
            case (nil, nil):
                return try await Subprocess.run(executable, arguments: arguments, environment: environment, workingDirectory: directory,
                                                platformOptions: options, input: .none, output: output, error: .combinedWithOutput) {
                    started($0.processIdentifier.value)
                }.terminationStatus
            case (let stdin?, nil):
                return try await Subprocess.run(executable, arguments: arguments, environment: environment, workingDirectory: directory,
                                                platformOptions: options, input: stdin, output: output, error: .combinedWithOutput) {
                    started($0.processIdentifier.value)
                }.terminationStatus
            case (nil, let errors?):
                return try await Subprocess.run(executable, arguments: arguments, environment: environment, workingDirectory: directory,
                                                platformOptions: options, input: .none, output: output, error: errors) {
                    started($0.processIdentifier.value)
                }.terminationStatus
            case (let stdin?, let errors?):
                return try await Subprocess.run(executable, arguments: arguments, environment: environment, workingDirectory: directory,
                                                platformOptions: options, input: stdin, output: output, error: errors) {
                    started($0.processIdentifier.value)
                }.terminationStatus
            }
        }
    }
}
