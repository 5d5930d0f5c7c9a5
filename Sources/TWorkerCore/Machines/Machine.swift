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

    /// Runs `body` at a provider's edge: whatever it throws becomes an `InfrastructureError`
    /// (an unexpected error is a failure of the machine, never a reason to drop the job).
    /// Cancellation passes through as an `InfrastructureError` too; callers check the task.
    public static func mapping<T>(_ what: String, _ body: () async throws -> T) async throws(InfrastructureError) -> T {
        do {
            return try await body()
        } catch let error as InfrastructureError {
            throw error
        } catch let error as VBoxManageError {
            // These already say what failed and what to do.
            throw InfrastructureError(error.description)
        } catch let error as ProgramNotFound {
            throw InfrastructureError(error.description)
        } catch {
            throw InfrastructureError("\(what): \(error)")
        }
    }
}

/// One machine a worker owns: a local workspace or a VM.
///
/// The worker drives every job through the same three steps, whatever the provider:
/// `prepare` (reset to the clean state), `run` (stream the script's output; cancellation
/// kills everything the build started) and `release` (always called, whatever happened).
/// Each throws only `InfrastructureError`: a provider maps whatever else it meets at its edge
/// (`InfrastructureError.mapping`), so the worker's job boundary has one error to handle.
public protocol Machine: Sendable {
    /// The worker-facing name, `worker-N`.
    var name: String { get }
    /// Resets the machine to its clean state, ready for a build.
    func prepare() async throws(InfrastructureError)
    /// Runs `script` with bash, handing each chunk of merged stdout/stderr to `output` in order.
    /// Task cancellation kills the whole build (its process group) before returning.
    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit
    /// Leaves the machine ready for the next job (the VM reset); a failure counts toward the
    /// machine's quarantine and the next `prepare` resets it again.
    func release() async throws(InfrastructureError)
    /// Stops whatever a previous worker on this machine, killed mid-build, left running; called
    /// once when a worker starts, before it requeues that worker's job.
    func killLeftovers() async
    /// Stops what the machine keeps running between jobs (a VM); called when its worker exits.
    func shutdown() async
}

extension Machine {
    /// A VM's next `prepare` resets it, which stops a dead worker's build with it.
    public func killLeftovers() async {}
    /// Nothing runs between jobs.
    public func shutdown() async {}
}

/// Makes the machine a worker serves from its VM name.
public protocol MachineProvider: Sendable {
    func machine(named name: String) throws -> any Machine
}
