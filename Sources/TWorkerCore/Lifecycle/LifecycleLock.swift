import Foundation

/// A host-wide lock so two lifecycle commands (`tworker vagrant ...`) never run at once:
/// VirtualBox fails parallel imports, and two rebuilds would fight over the same VMs.
public final class LifecycleLock: Sendable {
    public let path: String
    private let fd: Int32

    public struct Held: Error, CustomStringConvertible {
        public var path: String
        public var pid: String
        public var description: String {
            "another tworker lifecycle command is running (pid \(pid), lock \(path)); wait for it to finish"
        }
    }

    /// Takes the lock or throws `Held` naming the pid that holds it.
    public init(stateDir: String) throws {
        let directory = (stateDir as NSString).appendingPathComponent("run")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = (directory as NSString).appendingPathComponent("lifecycle.lock")
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, buffer.count, 0)
            close(fd)
            let pid = String(decoding: buffer.prefix(max(0, count)), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw Held(path: path, pid: pid.isEmpty ? "unknown" : pid)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
    }

    deinit {
        // The kernel drops the flock with the descriptor; a stale file holds no lock.
        close(fd)
    }
}
