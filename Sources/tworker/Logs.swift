import ArgumentParser
import Foundation
import RedisClient
import TWorkerCore

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a job's log; --follow streams it until the job's final entry.",
        discussion: "Exit code 1 when the job has no log."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The job id.")
    var id: String

    @Flag(name: [.short, .long], help: "Keep printing new output until the log is final.")
    var follow = false

    @Flag(name: [.short, .long], help: "Start each line with the time (UTC, to the millisecond) its entry was written.")
    var timestamps = false

    func run() async throws {
        try await global.withRedis { session in
            let (logger, redis, keys) = (session.logger, session.redis, session.keys)
            let key = keys.log(id)
            var lastID = "0-0"
            var sawAnything = false
            var lines = TimestampedLines()
            while true {
                let reply: RedisReply
                if follow {
                    reply = try await withRedisRetry(logger: logger, what: "read \(key)") {
                        try await redis.sendBlocking(["XREAD", "COUNT", "1000", "BLOCK", "1000", "STREAMS", key, lastID], blockTimeout: .seconds(1))
                    }
                } else {
                    reply = try await redis.send(["XRANGE", key, "(" + lastID, "+", "COUNT", "1000"])
                }
                // XREAD nests the entries under the stream's name; XRANGE returns them directly.
                let entries = follow ? (reply.array?.first?.array?.last?.array ?? []) : (reply.array ?? [])
                if entries.isEmpty {
                    if follow { continue }
                    break
                }
                sawAnything = true
                for entry in entries {
                    guard let parts = entry.array, parts.count == 2, let entryID = parts[0].string else { continue }
                    lastID = entryID
                    let fields = parts[1].array ?? []
                    var index = 0
                    var final = false
                    var at: Int64?
                    while index + 1 < fields.count {
                        if fields[index].string == "at" { at = fields[index + 1].string.flatMap { Int64($0) } }
                        if fields[index].string == "data", case .bulk(let bytes) = fields[index + 1] {
                            FileHandle.standardOutput.write(Data(timestamps ? lines.prefixed(bytes, at: at) : bytes))
                        }
                        if fields[index].string == "final" { final = true }
                        index += 2
                    }
                    if final { return }
                }
            }
            if !sawAnything {
                printError("no log for job '\(id)'")
                throw ExitCode.failure
            }
        }
    }
}

/// `--timestamps`: each line starts with the time of the entry it began in (entries are cut
/// anywhere, so a line can go on in the next one).
struct TimestampedLines {
    private var atLineStart = true

    /// `bytes` with `2025-01-31T12:00:00.123Z ` before each line that starts in it; an entry
    /// without `at` (written before tworker recorded it) gets blanks of the same width.
    mutating func prefixed(_ bytes: [UInt8], at: Int64?) -> [UInt8] {
        let stamp = Array(((at.map { Timestamp.format(Date(timeIntervalSince1970: Double($0) / 1000)) }
            ?? String(repeating: " ", count: 24)) + " ").utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + stamp.count * 4)
        for byte in bytes {
            if atLineStart { out += stamp }
            out.append(byte)
            atLineStart = byte == 0x0A
        }
        return out
    }
}
