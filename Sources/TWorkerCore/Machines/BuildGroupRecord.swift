import Foundation

/// A file naming the process group of the build running on a machine, with its leader's start
/// time, so a later worker can kill a build its killed predecessor left behind without ever
/// killing an unrelated group that reused the number.
public struct BuildGroupRecord: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    /// The ssh client of a build run on a VM (virtualbox, qemu), in `<state_dir>/ssh/`: a killed
    /// worker's client would otherwise go on connecting and feeding the guest its build.
    public static func ofRemoteBuild(stateDir: String, vm: String) -> BuildGroupRecord {
        BuildGroupRecord(path: (stateDir as NSString).appendingPathComponent("ssh/\(vm).build.pgid"))
    }

    /// Notes `pgid` (the build's session leader) as running.
    public func record(_ pgid: pid_t) {
        guard let started = ProcessProbe.startTime(of: pgid) else { return }
        let text = "\(pgid) \(started)\n"
        if (try? text.write(toFile: path, atomically: true, encoding: .utf8)) == nil {
            try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try? text.write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    public var hasRecord: Bool { FileManager.default.fileExists(atPath: path) }

    public func clear() {
        unlink(path)
    }

    /// Kills the recorded group if anything of it still runs; returns whether it did.
    @discardableResult
    public func killRecorded() -> Bool {
        defer { clear() }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
        let fields = text.split(whereSeparator: \.isWhitespace)
        guard fields.count == 2, let pgid = pid_t(fields[0]), pgid > 1, let started = UInt64(fields[1]) else { return false }
        // The leader alive with another start time: the whole group ended and its number was
        // reused. The leader gone but members left: Linux does not hand out a pid that is still
        // a live group's id, so they are the build's.
        if let leaderStart = ProcessProbe.startTime(of: pgid), leaderStart != started { return false }
        guard Self.groupExists(pgid) else { return false }
        return kill(-pgid, SIGKILL) == 0
    }

    static func groupExists(_ pgid: pid_t) -> Bool {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return false }
        return entries.contains { entry in
            guard let pid = pid_t(entry), let fields = ProcessProbe.statFields(of: pid), fields.count > 2 else { return false }
            return fields[0] != "Z" && pid_t(fields[2]) == pgid
        }
    }
}
