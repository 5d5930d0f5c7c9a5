import Foundation

/// A host-wide lock so two lifecycle commands (`tworker vagrant ...`) never run at once:
/// VirtualBox fails parallel imports, and two rebuilds would fight over the same VMs.
public final class LifecycleLock: Sendable {
    private let lock: PidFileLock
    public var path: String { lock.path }

    public struct Held: Error, CustomStringConvertible {
        public var path: String
        public var pid: String
        public var description: String {
            "another tworker lifecycle command is running (pid \(pid), lock \(path)); wait for it to finish"
        }
    }

    /// Takes the lock or throws `Held` naming the pid that holds it.
    public init(stateDir: String) throws {
        do {
            lock = try PidFileLock(path: (stateDir as NSString).appendingPathComponent("run/lifecycle.lock"))
        } catch let held as PidFileLock.Held {
            throw Held(path: held.path, pid: held.pid)
        }
    }
}
