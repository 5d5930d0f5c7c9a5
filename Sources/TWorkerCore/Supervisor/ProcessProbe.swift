import Foundation

/// What the master reads about processes from /proc.
public enum ProcessProbe {
    /// `VmRSS` of `/proc/<pid>/status` in KiB; nil when the process is gone (or a zombie).
    public static func rssKiB(_ pid: pid_t) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        return rssKiB(status: text)
    }

    /// The `VmRSS:` line of a status file, in KiB.
    public static func rssKiB(status text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let number = line.dropFirst("VmRSS:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first
            return number.flatMap { Int($0) }
        }
        return nil
    }

    /// True while `pid` runs; a zombie counts as gone.
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return !stat[close...].hasPrefix(") Z")
    }

    /// (ppid, pgid) of `pid` from `/proc/<pid>/stat`.
    static func parentAndGroup(_ pid: pid_t) -> (ppid: pid_t, pgid: pid_t)? {
        guard let fields = statFields(of: pid), fields.count >= 3, let ppid = pid_t(fields[1]), let pgid = pid_t(fields[2]) else { return nil }
        return (ppid, pgid)
    }

    /// Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot (with the pid, it
    /// names one process: a reused pid has another start time).
    public static func startTime(of pid: pid_t) -> UInt64? {
        statFields(of: pid).flatMap { $0.count > 19 ? UInt64($0[19]) : nil }
    }

    /// The fields of /proc/<pid>/stat after the command name, whose parentheses may hold spaces.
    static func statFields(of pid: pid_t) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After ")": state (field 3), ppid, pgrp (field 5), ..., starttime (field 22).
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    /// Every descendant of `root` (children, their children, ...), with its process group.
    public static func descendants(of root: pid_t) -> [(pid: pid_t, pgid: pid_t)] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var parents: [pid_t: [(pid_t, pid_t)]] = [:]
        for entry in entries {
            guard let pid = pid_t(entry), let info = parentAndGroup(pid) else { continue }
            parents[info.ppid, default: []].append((pid, info.pgid))
        }
        var result: [(pid: pid_t, pgid: pid_t)] = []
        var frontier = [root]
        var seen: Set<pid_t> = [root]
        while let next = frontier.popLast() {
            for (pid, pgid) in parents[next] ?? [] where seen.insert(pid).inserted {
                result.append((pid, pgid))
                frontier.append(pid)
            }
        }
        return result
    }

    /// SIGKILL to `pid` and everything it started: each descendant's process group (builds run
    /// in their own session) and the descendants themselves, so no build outlives a killed worker.
    public static func killTree(_ pid: pid_t) {
        let tree = descendants(of: pid)
        kill(pid, SIGKILL)
        for group in Set(tree.map(\.pgid)) where group > 1 && group != getpgrp() { kill(-group, SIGKILL) }
        for child in tree { kill(child.pid, SIGKILL) }
    }
}
