import Foundation
import ServiceLifecycle

/// The master as a swift-service-lifecycle `Service`: the group's graceful shutdown (QUIT, the
/// group's graceful-shutdown signal) is the master's graceful stop. Every other signal means
/// something only the master knows (a second TERM kills, USR2 pauses...), so it keeps trapping them.
public struct MasterService: Service {
    public let master: Master

    public init(_ master: Master) { self.master = master }

    /// Runs the master until it stops; its exit code is `master.exitCode` then.
    public func run() async throws {
        let sink = master.inputSink
        _ = await withGracefulShutdownHandler {
            await master.run(trappingQuit: false)
        } onGracefulShutdown: {
            sink.yield(.event(.signal(SIGQUIT)))
        }
    }
}
