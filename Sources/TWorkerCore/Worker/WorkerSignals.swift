import Foundation
import Logging
import UnixSignals

extension Worker {
    /// Maps signals to stop requests, as Resque taught operators: QUIT finishes the running job
    /// first, TERM and INT stop the build now and requeue its job; a second TERM/INT exits at once.
    public func handleSignals() -> Task<Void, Never> {
        Task { [self] in
            let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigquit)
            var immediateCount = 0
            for await signal in signals {
                switch signal {
                case .sigquit:
                    logger.info("SIGQUIT: finishing the current job, then exiting")
                    requestStop(.graceful)
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
