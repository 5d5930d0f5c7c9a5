import Foundation

/// Puts files in place the way an operator's tools should: only what differs is written
/// (atomically, so a reader never sees half a file), modes are set either way, and a file that
/// exists with other content is left alone unless forced. `tworker service install` and
/// `tworker setup` both install through here.
public enum FileInstall {
    public struct File: Sendable {
        public var path: String
        public var data: Data
        public var mode: Int

        public init(path: String, data: Data, mode: Int) {
            self.path = path
            self.data = data
            self.mode = mode
        }

        public init(path: String, text: String, mode: Int) {
            self.init(path: path, data: Data(text.utf8), mode: mode)
        }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Writes every file, or none when one of them exists with other content and `force` is
    /// false. False when all were already identical (their modes are still fixed).
    @discardableResult
    public static func install(_ files: [File], directories: [String], force: Bool) throws(Failure) -> Bool {
        let manager = FileManager.default
        var changed = false
        for file in files {
            guard manager.fileExists(atPath: file.path) else {
                changed = true
                continue
            }
            guard let existing = manager.contents(atPath: file.path) else {
                guard force else { throw Failure(description: "cannot read \(file.path) to compare it; left unchanged (use --force to overwrite)") }
                changed = true
                continue
            }
            if existing != file.data {
                guard force else {
                    throw Failure(description: "\(file.path) exists and differs from what would be written; left unchanged (use --force to overwrite, --print to compare)")
                }
                changed = true
            }
        }
        do {
            for directory in directories {
                try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            for file in files {
                if manager.contents(atPath: file.path) != file.data {
                    try file.data.write(to: URL(fileURLWithPath: file.path), options: .atomic)
                }
                try manager.setAttributes([.posixPermissions: file.mode], ofItemAtPath: file.path)
            }
        } catch {
            throw Failure(description: "cannot write \(describe(error)); run as root")
        }
        return changed
    }

    /// `path: reason` from a Foundation file error.
    public static func describe(_ error: any Error) -> String {
        let nsError = error as NSError
        if let path = nsError.userInfo[NSFilePathErrorKey] as? String,
           let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain,
           let code = POSIXErrorCode(rawValue: Int32(underlying.code)) {
            return "\(path): \(String(cString: strerror(code.rawValue)))"
        }
        return nsError.localizedDescription
    }
}
