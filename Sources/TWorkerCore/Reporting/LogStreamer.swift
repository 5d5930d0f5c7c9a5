import Foundation
import Logging
import RedisClient

/// Streams a job's output into its Redis stream `tworker:job:<id>:log`.
///
/// Output is flushed once 4 KiB are buffered or 200 ms after the oldest buffered byte,
/// whichever comes first. Entries carry explicit stream ids `0-<n>` so that a write retried
/// after a lost connection is recognised by Redis instead of being duplicated, and a later
/// attempt of the same job continues the numbering. While Redis is away the buffer keeps
/// filling up to `maxBuffered`, after which `append` waits: the build then blocks on its pipe
/// rather than our memory growing.
public actor LogStreamer {
    public static let flushThreshold = 4096
    public static let flushInterval: Duration = .milliseconds(200)
    static let maxEntrySize = 16 * 1024
    static let maxBuffered = 128 * 1024

    private let redis: RedisConnection
    private let key: String
    private let retention: Int
    private let logger: Logger
    private var nextNumber: Int
    private var buffer: [UInt8] = []
    private var oldestBufferedAt: ContinuousClock.Instant?
    private var inFlight: Task<Void, Never>?
    private var timer: Task<Void, Never>?
    private var finished = false

    /// Starts a streamer that continues after the last entry already in the stream.
    public static func resuming(redis: RedisConnection, key: String, retention: Int, logger: Logger) async throws -> LogStreamer {
        let last = try await withRedisRetry(logger: logger, what: "read the end of \(key)") {
            try await redis.send(["XREVRANGE", key, "+", "-", "COUNT", "1"])
        }
        return LogStreamer(redis: redis, key: key, retention: retention, logger: logger, lastNumber: lastNumber(in: last))
    }

    /// The `n` of the newest entry in an `XREVRANGE key + - COUNT 1` reply (0 for none).
    public static func lastNumber(in reply: RedisReply) -> Int {
        guard let entry = reply.array?.first?.array?.first?.string, let sequence = entry.split(separator: "-").last else { return 0 }
        return Int(sequence) ?? 0
    }

    public init(redis: RedisConnection, key: String, retention: Int, logger: Logger, lastNumber: Int) {
        self.redis = redis
        self.key = key
        self.retention = retention
        self.logger = logger
        self.nextNumber = lastNumber + 1
    }

    /// Adds output; returns once it is buffered (waiting only when the buffer is full).
    public func append(_ bytes: [UInt8]) async {
        guard !bytes.isEmpty, !finished else { return }
        if buffer.isEmpty { oldestBufferedAt = .now }
        buffer.append(contentsOf: bytes)
        if buffer.count >= Self.flushThreshold { startFlushIfIdle() } else { armTimer() }
        while buffer.count >= Self.maxBuffered, let flight = inFlight { await flight.value }
    }

    public func append(_ text: String) async { await append(Array(text.utf8)) }

    /// Writes everything still buffered and the closing `final` entry; later appends are ignored.
    public func finish() async {
        let commands = await closingCommands()
        await send(commands)
    }

    /// Closes the log and returns, instead of sending, the commands that write what is left,
    /// the `final` entry and the expiry, so a caller can put them in its own transaction.
    public func closingCommands() async -> [[[UInt8]]] {
        timer?.cancel()
        timer = nil
        while let flight = inFlight { await flight.value }
        finished = true
        var entries = takeEntries().map { (number: $0.0, data: $0.1, final: false) }
        entries.append((nextNumber, nil, true))
        nextNumber += 1
        return commands(for: entries, expire: true)
    }

    /// Writes everything buffered without closing the log (used before a requeue).
    public func drain() async {
        timer?.cancel()
        timer = nil
        while true {
            if let flight = inFlight { await flight.value; continue }
            if buffer.isEmpty { return }
            startFlushIfIdle()
        }
    }

    private func armTimer() {
        guard timer == nil, let oldest = oldestBufferedAt else { return }
        let deadline = oldest.advanced(by: Self.flushInterval)
        timer = Task { [weak self] in
            try? await Task.sleep(until: deadline, clock: .continuous)
            await self?.timerFired()
        }
    }

    private func timerFired() {
        timer = nil
        startFlushIfIdle()
    }

    private func startFlushIfIdle() {
        guard inFlight == nil, !buffer.isEmpty else { return }
        timer?.cancel()
        timer = nil
        let entries = takeEntries().map { (number: $0.0, data: $0.1, final: false) }
        inFlight = Task {
            await self.write(entries, expire: false)
            self.flushCompleted()
        }
    }

    /// Numbers and cuts the buffered output into entries, emptying the buffer.
    private func takeEntries() -> [(Int, [UInt8]?)] {
        var entries: [(Int, [UInt8]?)] = []
        var start = 0
        while start < buffer.count {
            let end = Self.entryEnd(buffer, from: start)
            entries.append((nextNumber, Array(buffer[start..<end])))
            nextNumber += 1
            start = end
        }
        buffer.removeAll(keepingCapacity: buffer.count <= Self.maxEntrySize)
        oldestBufferedAt = nil
        return entries
    }

    private func flushCompleted() {
        inFlight = nil
        guard !buffer.isEmpty else { return }
        if buffer.count >= Self.flushThreshold || (oldestBufferedAt.map { .now - $0 >= Self.flushInterval } ?? true) {
            startFlushIfIdle()
        } else {
            armTimer()
        }
    }

    /// Cuts entries at `maxEntrySize`, backing off to a UTF-8 character boundary.
    static func entryEnd(_ bytes: [UInt8], from start: Int) -> Int {
        var end = min(bytes.count, start + maxEntrySize)
        guard end < bytes.count else { return end }
        var back = 0
        while back < 3, end - back > start + 1, bytes[end - back] & 0xC0 == 0x80 { back += 1 }
        if bytes[end - back] & 0xC0 != 0x80 { end -= back }
        return end
    }

    private func write(_ entries: [(number: Int, data: [UInt8]?, final: Bool)], expire: Bool) async {
        await send(commands(for: entries, expire: expire))
    }

    private func commands(for entries: [(number: Int, data: [UInt8]?, final: Bool)], expire: Bool) -> [[[UInt8]]] {
        Self.commands(key: key, entries: entries, expireAfter: expire ? retention : nil)
    }

    /// The one wire format of a log: `XADD <key> 0-<n> n <n> [data <bytes>] [final 1]`.
    static func commands(key: String, entries: [(number: Int, data: [UInt8]?, final: Bool)], expireAfter retention: Int?) -> [[[UInt8]]] {
        let key = Array(key.utf8)
        var commands: [[[UInt8]]] = entries.map { entry in
            var command: [[UInt8]] = [Array("XADD".utf8), key, Array("0-\(entry.number)".utf8), Array("n".utf8), Array(String(entry.number).utf8)]
            if let data = entry.data { command += [Array("data".utf8), data] }
            if entry.final { command += [Array("final".utf8), Array("1".utf8)] }
            return command
        }
        if let retention { commands.append([Array("EXPIRE".utf8), key, Array(String(retention).utf8)]) }
        return commands
    }

    /// Writes `text` to a log no streamer is writing (a job cancelled in its queue, a dead
    /// worker's job), numbered after `lastNumber`, for the caller's own transaction; `closing`
    /// adds the `final` entry and the expiry.
    public static func entryCommands(key: String, after lastNumber: Int, text: String, closing: Bool, retention: Int) -> [[[UInt8]]] {
        var entries: [(number: Int, data: [UInt8]?, final: Bool)] = [(lastNumber + 1, Array(text.utf8), false)]
        if closing { entries.append((lastNumber + 2, nil, true)) }
        return commands(key: key, entries: entries, expireAfter: closing ? retention : nil)
    }

    /// Writes until Redis has taken every entry: a refused entry is retried with backoff, never
    /// dropped (an entry already there answers "equal or smaller", which is success).
    private func send(_ commands: [[[UInt8]]]) async {
        var delay: Duration = .milliseconds(100)
        while !Task.isCancelled {
            do {
                let replies = try await withRedisRetry(logger: logger, what: "write the log \(self.key)") { @Sendable [redis, commands] in
                    try await redis.pipeline(bytes: commands)
                }
                let refused = replies.compactMap { reply -> String? in
                    guard case .error(let message) = reply, !message.contains("equal or smaller") else { return nil }
                    return message
                }
                guard let first = refused.first else { return }
                logger.error("log entries refused by Redis; retrying in \(delay)", metadata: ["key": "\(self.key)", "error": "\(first)"])
            } catch {
                if Task.isCancelled { break }
                logger.error("log write failed; retrying in \(delay)", metadata: ["key": "\(self.key)", "error": "\(error)"])
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
        // Only cancellation gets here; the entries are lost with the process anyway.
        logger.error("log write abandoned", metadata: ["key": "\(self.key)"])
    }

}
