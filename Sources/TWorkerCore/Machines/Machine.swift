import Foundation

/// How a build's process ended, as the machine saw it.
public enum BuildExit: Sendable, Equatable {
    /// The build script exited with this status.
    case exited(Int32)
    /// The build script was killed by this signal.
    case signaled(Int32)
}

/// Failures of the machine itself, never of the build it runs: the worker requeues the job.
public struct InfrastructureError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One machine a worker owns: a local workspace or a VM.
///
/// The worker drives every job through the same three steps, whatever the provider:
/// `prepare` (reset to the clean state), `run` (stream the script's output; cancellation
/// kills everything the build started) and `release` (always called, whatever happened).
public protocol Machine: Sendable {
    /// The worker-facing name, `worker-N`.
    var name: String { get }
    /// Resets the machine to its clean state, ready for a build.
    func prepare() async throws
    /// Runs `script` with bash, handing each chunk of merged stdout/stderr to `output` in order.
    /// Task cancellation kills the whole build (its process group) before returning.
    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws -> BuildExit
    /// Leaves the machine ready for the next job; must not throw.
    func release() async
}

/// Makes the machine a worker serves from its VM name.
public protocol MachineProvider: Sendable {
    func machine(named name: String) throws -> any Machine
}
