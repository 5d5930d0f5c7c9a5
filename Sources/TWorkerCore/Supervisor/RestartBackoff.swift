/// When to restart a child that exited without being asked to: at once the first time, then
/// 1 s doubling to 60 s while it keeps dying; a child that stayed up for a minute starts over.
public struct RestartBackoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    /// A child that ran this long before exiting counts as healthy: its streak is forgotten.
    public var healthyAfter: Duration
    /// Unexpected exits in a row (each one within `healthyAfter` of its start).
    public private(set) var streak = 0

    public init(initial: Duration = .seconds(1), maximum: Duration = .seconds(60), healthyAfter: Duration = .seconds(60)) {
        self.initial = initial
        self.maximum = maximum
        self.healthyAfter = healthyAfter
    }

    /// Records an unexpected exit after `uptime` and returns how long to wait before the restart.
    public mutating func delay(afterUptime uptime: Duration) -> Duration {
        if uptime >= healthyAfter { streak = 0 }
        defer { streak += 1 }
        guard streak > 0 else { return .zero }
        var delay = initial
        for _ in 1..<streak {
            delay = delay * 2
            if delay >= maximum { return maximum }
        }
        return min(delay, maximum)
    }

    /// Forgets the streak (an operator's restart, a replacement the master asked for).
    public mutating func reset() { streak = 0 }
}
