import Foundation
import Synchronization

/// A pid file held under an flock for as long as its process runs: the kernel drops the lock
/// with the process, so a stale file left by a killed one holds nothing.
public final class PidFileLock: Sendable {
    public let path: String
    private let fd: Int32
    private let released = Mutex(false)

    /// The lock is taken; `pid` is what its holder wrote.
    public struct Held: Error {
        public var path: String
        public var pid: String
    }

    /// Takes the lock and writes this process's pid, or throws `Held`.
    public init(path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let pid = Self.read(fd)
            close(fd)
            throw Held(path: path, pid: pid ?? "unknown")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
    }

    /// The pid of whoever holds the lock at `path`, nil when nobody does.
    public static func holder(of path: String) -> pid_t? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) != 0 else { return nil }
        return read(fd).flatMap { pid_t($0) }
    }

    /// Removes the file and drops the lock.
    public func release() {
        guard released.withLock({ value in defer { value = true }; return !value }) else { return }
        unlink(path)
        close(fd)
    }

    deinit {
        // Without release() the file stays (it holds no lock once closed).
        if !released.withLock({ $0 }) { close(fd) }
    }

    private static func read(_ fd: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = pread(fd, &buffer, buffer.count, 0)
        let text = String(decoding: buffer.prefix(max(0, count)), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }
}
