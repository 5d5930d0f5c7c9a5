import Foundation
import Synchronization

/// A fresh directory under /tmp, removed by `remove()` (idempotent).
public final class TempDirectory: Sendable {
    /// Absolute path of the directory.
    public let path: String
    private let removed = Mutex(false)

    /// Creates `/tmp/<prefix>-XXXXXX` with mkdtemp.
    public init(prefix: String = "tworker-test") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw TestSupportError("mkdtemp(/tmp/\(prefix)-XXXXXX) failed: errno \(errno)") }
        path = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Deletes the directory and everything in it.
    public func remove() {
        let first = removed.withLock { wasRemoved in
            defer { wasRemoved = true }
            return !wasRemoved
        }
        if first { try? FileManager.default.removeItem(atPath: path) }
    }
}
