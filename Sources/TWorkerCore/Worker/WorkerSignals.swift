import Foundation
import Logging
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
            var immediateCount = 0
            for await signal in signals {
                switch signal {
                case .sigquit:
                    logger.info("SIGQUIT: finishing the current job, then exiting")
                    requestStop(.graceful)
                case .sigusr1:
                    logger.info("SIGUSR1: aborting the running job (requeued at the head); going on")
                    abortCurrentJob()
                case .sigusr2:
                    logger.info("SIGUSR2: paused, taking no new jobs")
                    pause()
                case .sigcont:
                    logger.info("SIGCONT: resumed")
                    resume()
                default:
                    immediateCount += 1
                    if immediateCount > 1 {
                        logger.warning("second \(signal): exiting at once; the job stays in the processing list for recovery")
                        exit(1)
                    }
                    logger.info("\(signal): stopping the build and requeueing its job")
                    requestStop(.immediate)
                }
            }
        }
    }
}
