import Foundation

/// Memory watchdog: a worker whose resident memory stays above the limit for two checks in a
/// row is replaced after its current job. One reading above the limit (a passing spike) is not enough.
public struct MemoryWatchdog: Sendable {
    /// KiB; nil: no limit.
    public var limitKiB: Int?
    /// Readings above the limit in a row that trigger a restart.
    public var strikes: Int
    private var over: [String: Int] = [:]

    public init(limitMiB: Int?, strikes: Int = 2) {
        self.limitKiB = limitMiB.map { $0 * 1024 }
        self.strikes = strikes
    }

    /// Records one reading (nil: the process could not be read) and says whether to restart the worker.
    public mutating func check(worker: String, rssKiB: Int?) -> Bool {
        guard let limitKiB, let rssKiB else {
            over[worker] = nil
            return false
        }
        guard rssKiB > limitKiB else {
            over[worker] = nil
            return false
        }
        let count = (over[worker] ?? 0) + 1
        over[worker] = count
        return count >= strikes
    }

    /// Forgets a worker's readings (it was replaced).
    public mutating func forget(worker: String) { over[worker] = nil }
}

/// Stuck watchdog: the master's own enforcement of `timeouts.hard_limit`, for a worker too
/// wedged to enforce it itself.
public struct StuckWatchdog: Sendable, Equatable {
    public var hardLimit: Duration
    public var grace: Duration

    public init(hardLimit: Duration, grace: Duration) {
        self.hardLimit = hardLimit
        self.grace = grace
    }

    public enum Decision: Sendable, Equatable {
        case fine
        /// The job has run this long, past the hard limit and the grace period: SIGKILL the worker.
        case kill(elapsed: Duration)
    }

    /// `startedAt`: the job record's `started_at` (nil: not started yet, or no job).
    public func check(startedAt: Date?, now: Date) -> Decision {
        guard let startedAt else { return .fine }
        let elapsed = Duration.milliseconds(Int64((now.timeIntervalSince(startedAt) * 1000).rounded()))
        return elapsed > hardLimit + grace ? .kill(elapsed: elapsed) : .fine
    }
}
