import Foundation
import UnixSignals

extension Worker {
    /// Maps signals as Resque taught operators: QUIT finishes the running job first, TERM and INT
    /// stop the build now and requeue its job (a second one exits at once), USR1 aborts the
    /// running job (requeued) and goes on, USR2 pauses, CONT resumes.
    /// Returns once the handlers are installed, so no signal can meet its default action (USR1
    /// and USR2 would kill the process) after the worker announced itself.
    public func handleSignals() async -> Task<Void, Never> {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigquit, .sigusr1, .sigusr2, .sigcont)
        return Task { [self] in
            for await signal in signals {
                switch signal {
                case .sigquit: handle(.finishThenExit)
                case .sigusr1: handle(.abortJob)
                case .sigusr2: handle(.pause)
                case .sigcont: handle(.resume)
                default: handle(.stopNow("\(signal)"))
                }
            }
        }
    }
}
