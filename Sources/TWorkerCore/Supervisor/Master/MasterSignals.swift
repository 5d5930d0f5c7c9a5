import Dispatch
import Foundation
import UnixSignals

extension Master {
    /// Traps every signal the master answers and turns each into an event; call the result to stop.
    func trapSignals(quit: Bool) async -> () -> Void {
        let answered: [UnixSignal] = [.sigterm, .sigint, .sigusr1, .sigusr2, .sigcont, .sighup]
        let sequence = await UnixSignalsSequence(trapping: quit ? [.sigquit] + answered : answered)
        let sink = inputSink
        let resize = Self.trapResizeSignals { signal in sink.yield(.event(.signal(signal))) }
        let forward = Task { for await signal in sequence { sink.yield(.event(.signal(signal.rawValue))) } }
        return {
            forward.cancel()
            resize.forEach { $0.cancel() }
        }
    }

    /// TTIN and TTOU, which swift-service-lifecycle's `UnixSignal` does not name: the same
    /// Dispatch signal sources `UnixSignalsSequence` uses underneath.
    nonisolated static func trapResizeSignals(_ handler: @escaping @Sendable (Int32) -> Void) -> [any DispatchSourceSignal] {
        [SIGTTIN, SIGTTOU].map { number in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handler(number) }
            source.resume()
            return source
        }
    }

    nonisolated static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGQUIT: "SIGQUIT"
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGKILL: "SIGKILL"
        case SIGHUP: "SIGHUP"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGCONT: "SIGCONT"
        case SIGTTIN: "SIGTTIN"
        case SIGTTOU: "SIGTTOU"
        case SIGSEGV: "SIGSEGV"
        case SIGABRT: "SIGABRT"
        default: "signal \(signal)"
        }
    }
}
