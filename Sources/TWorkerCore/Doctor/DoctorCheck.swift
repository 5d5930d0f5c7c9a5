import Foundation

/// One line of `tworker doctor`: what was checked, how it went, what was seen and, when it is
/// not ok, what to do about it.
public struct DoctorCheck: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Equatable, Codable {
        case ok
        /// Worth knowing, does not stop a master from running.
        case warn
        /// Stops a master (or its workers' jobs) from running: `tworker doctor` exits 1.
        case fail
        /// Not checked: what it needs (the config, Redis) failed its own check.
        case skipped
    }

    public var name: String
    public var status: Status
    public var detail: String
    /// What to do about it; nil for ok and skipped.
    public var fix: String?

    public init(_ name: String, _ status: Status, _ detail: String, fix: String? = nil) {
        self.name = name
        self.status = status
        self.detail = detail
        self.fix = fix
    }

    public static func ok(_ name: String, _ detail: String) -> Self { Self(name, .ok, detail) }
    public static func warn(_ name: String, _ detail: String, fix: String?) -> Self { Self(name, .warn, detail, fix: fix) }
    public static func fail(_ name: String, _ detail: String, fix: String?) -> Self { Self(name, .fail, detail, fix: fix) }
    public static func skipped(_ name: String, _ reason: String) -> Self { Self(name, .skipped, reason) }
}

/// Every check of one `tworker doctor` run, in order.
public struct DoctorReport: Sendable, Equatable {
    public var checks: [DoctorCheck]

    public init(checks: [DoctorCheck]) { self.checks = checks }

    /// Nothing blocks running: no check failed.
    public var passed: Bool { !checks.contains { $0.status == .fail } }
    public var exitCode: Int32 { passed ? 0 : 1 }

    /// `ok    redis     redis://127.0.0.1:6379/0 reachable (role master, 7.0.15)`; a fix hint
    /// follows its detail on the same line, so `grep FAIL` shows what to do.
    public func render() -> String {
        let width = checks.map(\.name.count).max() ?? 0
        return checks.map { check in
            let status = switch check.status {
            case .ok: "ok"
            case .warn: "WARN"
            case .fail: "FAIL"
            case .skipped: "skip"
            }
            var line = status.padding(toLength: 6, withPad: " ", startingAt: 0)
                + check.name.padding(toLength: width + 2, withPad: " ", startingAt: 0) + check.detail
            if let fix = check.fix { line += "  fix: " + fix }
            return line
        }.joined(separator: "\n")
    }

    /// `{"ok": true, "checks": [{"name", "status", "detail", "fix"}]}`.
    public func json() -> String {
        struct Document: Encodable {
            var ok: Bool
            var checks: [DoctorCheck]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding strings and booleans cannot fail.
        return String(decoding: try! encoder.encode(Document(ok: passed, checks: checks)), as: UTF8.self)
    }
}
