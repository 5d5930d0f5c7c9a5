import Foundation

/// UTC timestamps as ISO 8601 with milliseconds, the one format tworker writes to Redis.
public enum Timestamp {
    private static let withMilliseconds = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)
    private static let wholeSeconds = Date.ISO8601FormatStyle(timeZone: .gmt)

    public static func now() -> String { format(Date()) }

    public static func format(_ date: Date) -> String {
        // The style truncates, and .123 is stored as .12299...: hand it the middle of the
        // rounded millisecond so it prints that one.
        let millis = (date.timeIntervalSince1970 * 1000).rounded()
        return withMilliseconds.format(Date(timeIntervalSince1970: (millis + 0.5) / 1000))
    }

    /// Parses what `format` writes (fraction optional); nil for anything else.
    public static func parse(_ text: String) -> Date? {
        (try? withMilliseconds.parse(text)) ?? (try? wholeSeconds.parse(text))
    }
}
