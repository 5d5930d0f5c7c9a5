/// How many times a job may be tried when its attempts end for reasons that are not the
/// build's own (a broken machine, a worker that died or was killed).
public struct AttemptPolicy: Sendable {
    public let maxAttempts: Int

    public init(maxAttempts: Int) {
        self.maxAttempts = maxAttempts
    }

    public enum Decision: Sendable, Equatable {
        /// Back to the queue, recording `attempts` used so far.
        case requeue(attempts: Int)
        /// `errored`: all `attempts` are used.
        case giveUp(attempts: Int)
    }

    /// What happens to `job` once its current attempt failed that way.
    public func afterFailedAttempt(of job: QueuedJob) -> Decision {
        let attempts = job.attempts + 1
        return attempts >= maxAttempts ? .giveUp(attempts: attempts) : .requeue(attempts: attempts)
    }

    /// True when `job` was queued with no attempt left (it must not run at all).
    public func isUsedUp(_ job: QueuedJob) -> Bool { job.attempts + 1 > maxAttempts }
}
