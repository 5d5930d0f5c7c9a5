import Logging

/// Runs `body`, retrying while it throws a retryable error (a lost connection or a transient
/// error reply such as `LOADING`, see `RedisError.isRetryable`), with capped exponential backoff.
///
/// The delay starts at `initialDelay` and doubles up to `maxDelay`; every call starts afresh.
/// To keep an outage from flooding the log, a warning is written once per backoff step (with
/// the error and the next delay), then, once the delay is capped, only when the error changes
/// or every 12th failure; every failure is logged at debug level. A success after failures
/// logs one info line. Other error replies, other errors and `CancellationError` are rethrown at once.
/// `giveUpAfter`: a best-effort write (on the way out) rethrows the retryable error once it has
/// waited this long between tries in all; nil retries until it succeeds.
public func withRedisRetry<T: Sendable>(
    logger: Logger,
    what: String,
    clock: any Clock<Duration> = ContinuousClock(),
    initialDelay: Duration = .milliseconds(100),
    maxDelay: Duration = .seconds(5),
    giveUpAfter: Duration? = nil,
    _ body: () async throws -> T
) async throws -> T {
    var delay = max(initialDelay, .zero)
    var waited = Duration.zero
    var failures = 0
    var lastLoggedDelay: Duration?
    var lastLoggedError = ""
    var failuresSinceLog = 0
    while true {
        try Task.checkCancellation()
        do {
            let value = try await body()
            if failures > 0 {
                logger.info("\(what): redis is reachable again after \(failures) failed attempt(s)")
            }
            return value
        } catch let error as RedisError where error.isRetryable {
            if let giveUpAfter, waited >= giveUpAfter { throw error }
            failures += 1
            failuresSinceLog += 1
            let text = error.description
            let newStep = lastLoggedDelay.map { delay > $0 } ?? true
            if newStep || text != lastLoggedError || failuresSinceLog >= 12 {
                logger.warning("\(what) failed (attempt \(failures)): \(text); retrying in \(delay)")
                lastLoggedDelay = delay
                lastLoggedError = text
                failuresSinceLog = 0
            } else {
                logger.debug("\(what) failed (attempt \(failures)): \(text); retrying in \(delay)")
            }
            try await sleep(on: clock, for: delay)
            waited += delay
            delay = min(delay * 2, max(maxDelay, initialDelay))
        }
    }
}

/// Opens the existential clock so its own `Instant` type can be used.
private func sleep<C: Clock<Duration>>(on clock: C, for delay: Duration) async throws {
    try await clock.sleep(until: clock.now.advanced(by: delay), tolerance: nil)
}

extension RedisConnection {
    /// A write a process makes on its way out, removing records of its own that also expire
    /// by themselves: checked, retried for `within`, then given up with a warning, so a
    /// process leaving while Redis is away does not wait for it.
    public func writeOnTheWayOut(_ commands: [[String]], what: String, within: Duration, logger: Logger) async {
        do {
            _ = try await withRedisRetry(logger: logger, what: what, giveUpAfter: within) { try await checkedPipeline(commands) }
        } catch {
            logger.warning("could not \(what); it expires by itself", metadata: ["error": "\(error)"])
        }
    }
}
