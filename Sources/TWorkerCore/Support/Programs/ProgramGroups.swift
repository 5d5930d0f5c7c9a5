import Foundation
import Synchronization

/// The process groups of the programs this process runs now. Every program runs in a group of
/// its own, so a timeout or a cancel ends it with everything it started; the same groups are
/// out of reach of a terminal's Ctrl-C, so a command ended by a signal ends them here.
public enum ProgramGroups {
    private static let live = Mutex<Set<pid_t>>([])

    static func insert(_ group: pid_t) { _ = live.withLock { $0.insert(group) } }
    static func remove(_ group: pid_t) { _ = live.withLock { $0.remove(group) } }

    /// The groups running now (tests, diagnostics).
    public static var running: Set<pid_t> { live.withLock { $0 } }

    /// TERM to every group, KILL to those still there after `grace`. Safe from any thread.
    public static func terminateAll(grace: Duration = .seconds(2)) {
        let groups = live.withLock { $0 }
        guard !groups.isEmpty else { return }
        for group in groups { kill(-group, SIGTERM) }
        let deadline = ContinuousClock.now + grace
        var remaining = groups
        while !remaining.isEmpty, ContinuousClock.now < deadline {
            // kill(-g, 0) fails with ESRCH once no process of the group is left.
            remaining = remaining.filter { kill(-$0, 0) == 0 }
            if !remaining.isEmpty { usleep(20_000) }
        }
        for group in remaining { kill(-group, SIGKILL) }
    }
}
