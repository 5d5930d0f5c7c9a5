#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Resque's failure record for `<namespace>:failed`
public struct ResqueFailure: Sendable {
    public var failedAt: Date
    /// The parsed envelope if it was JSON, else the raw text as `.string`.
    public var payload: JSONValue?
    /// "InvalidPayload" or "MalformedJSON".
    public var exception: String
    public var error: String
    public var backtrace: [String]
    public var worker: String
    public var queue: String

    public init(
        failedAt: Date, payload: JSONValue?, exception: String, error: String,
        backtrace: [String] = [], worker: String, queue: String
    ) {
        self.failedAt = failedAt
        self.payload = payload
        self.exception = exception
        self.error = error
        self.backtrace = backtrace
        self.worker = worker
        self.queue = queue
    }

    /// The record for a queue entry `JobDecoder` rejected; `raw` is the entry as taken off the queue.
    public init(rejected: PayloadError, raw: [UInt8], worker: String, queue: String, failedAt: Date = Date()) {
        self.init(
            failedAt: failedAt,
            // Invalid UTF-8 is replaced so the record itself is always valid JSON.
            payload: rejected.envelope ?? .string(String(decoding: raw, as: UTF8.self)),
            exception: rejected.exception,
            error: rejected.description,
            backtrace: rejected.problems,
            worker: worker,
            queue: queue
        )
    }

    /// The JSON Resque's web UI expects (keys: failed_at, payload, exception, error, backtrace, worker, queue).
    public func json() -> [UInt8] {
        JSONValue.object([
            "failed_at": .string(ResqueFailure.format(failedAt)),
            "payload": payload ?? .null,
            "exception": .string(exception),
            "error": .string(error),
            "backtrace": .array(backtrace.map { .string($0) }),
            "worker": .string(worker),
            "queue": .string(queue),
        ]).serialized()
    }

    /// Resque's `"%Y/%m/%d %H:%M:%S %Z"` in UTC, e.g. `2024/03/05 14:07:09 UTC`.
    ///
    /// Computed by hand (days-to-civil) so it needs no locale or time-zone database.
    public static func format(_ date: Date) -> String {
        let total = Int64(date.timeIntervalSince1970.rounded(.down))
        let days = total >= 0 ? total / 86_400 : (total - 86_399) / 86_400
        let secs = total - days * 86_400
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ n: Int64, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(year, 4))/\(pad(month, 2))/\(pad(day, 2)) \(pad(secs / 3600, 2)):\(pad(secs % 3600 / 60, 2)):\(pad(secs % 60, 2)) UTC"
    }
}
