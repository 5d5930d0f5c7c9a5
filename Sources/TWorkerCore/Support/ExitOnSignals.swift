import Foundation
import Synchronization
import UnixSignals

/// INT, TERM and HUP for short commands (`logs --follow` ended with Ctrl-C): trapped from the
/// command's start, so one that lands while the embedded Redis is being joined is held until
/// the command can leave it cleanly; then the cleanup runs and the process exits 128+signal.
public final class ExitOnSignals: Sendable {
    private struct State {
        var pending: Int32?
        var cleanup: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())
    private static let exiting = Atomic(false)

    /// True once a signal's cleanup runs: a failure it causes (a program it ended) is not the
    /// command's to report, the exit with 128+signal follows.
    public static var isExiting: Bool { exiting.load(ordering: .acquiring) }
    private let listener = Mutex<Task<Void, Never>?>(nil)

    private init() {}

    public static func trap() async -> ExitOnSignals {
        let exits = ExitOnSignals()
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        exits.listener.withLock { $0 = Task { for await signal in signals { exits.received(signal.rawValue) } } }
        return exits
    }

    /// What to run before exiting; a signal that came before runs it now.
    public func cleanUp(with cleanup: @escaping @Sendable () -> Void) {
        let pending = state.withLock { state -> Int32? in
            state.cleanup = cleanup
            return state.pending
        }
        if let pending { exitNow(pending, cleanup) }
    }

    public func cancel() {
        listener.withLock { $0?.cancel() }
    }

    private func received(_ signal: Int32) {
        let cleanup = state.withLock { state -> (@Sendable () -> Void)? in
            if state.cleanup == nil { state.pending = signal }
            return state.cleanup
        }
        if let cleanup { exitNow(signal, cleanup) }
    }

    private func exitNow(_ signal: Int32, _ cleanup: @Sendable () -> Void) -> Never {
        Self.exiting.store(true, ordering: .releasing)
        cleanup()
        exit(128 + signal)
    }
}
