import Foundation
import Logging
import RedisClient

/// Streams a job's output into its Redis stream `tworker:job:<id>:log`.
///
/// The first output is written at once: it is what someone watching a job waits for, and it
/// shows the build has begun. After that, output is flushed once 4 KiB are buffered or 200 ms
/// after the oldest buffered byte, whichever comes first. Each entry's `at` is when its oldest
/// byte came. With `secrets`, every secret is masked before it is buffered; a possible start of
/// a secret at the end of a read waits for the next read (or the log's end). Entries carry
/// explicit stream ids `0-<n>` so that a write retried after a lost connection is recognised
/// by Redis instead of being duplicated, and a later attempt of the same job continues the
/// numbering. While Redis is away the buffer keeps filling up to `maxBuffered`, after which
/// `append` waits: the build then blocks on its pipe rather than our memory growing.
public actor LogStreamer {
    public static let flushThreshold = 4096
    public static let flushInterval: Duration = .milliseconds(200)
    static let maxEntrySize = 16 * 1024
    static let maxBuffered = 128 * 1024

    private let redis: RedisConnection
    private let key: String
    private let retention: Int
    private let logger: Logger
    private let flushInterval: Duration
    private var nextNumber: Int
    /// False until this streamer's first write starts: that one does not wait for the timer.
    private var flushedOnce = false
    private var buffer: [UInt8] = []
    private var oldestBufferedAt: ContinuousClock.Instant?
    /// The same moment as `oldestBufferedAt`, in milliseconds since the epoch.
    private var oldestBufferedWall: Int64 = 0
    private var redactor: SecretRedactor?
    private var inFlight: Task<Void, Never>?
    private var timer: Task<Void, Never>?
    private var finished = false

    /// Starts a streamer that continues after the last entry already in the stream.
    public static func resuming(redis: RedisConnection, key: String, retention: Int, logger: Logger,
                                flushInterval: Duration = LogStreamer.flushInterval) async throws -> LogStreamer {
        let last = try await withRedisRetry(logger: logger, what: "read the end of \(key)") {
            try await redis.send(JobStore.logEndCommand(key: key))
        }
        return LogStreamer(redis: redis, key: key, retention: retention, logger: logger, lastNumber: JobStore.lastLogNumber(in: last),
                           flushInterval: flushInterval)
    }

    /// `flushInterval`: how long output after the first may wait in the buffer (tests stretch it).
    public init(redis: RedisConnection, key: String, retention: Int, logger: Logger, lastNumber: Int,
                flushInterval: Duration = LogStreamer.flushInterval, secrets: SecretMask? = nil) {
        self.redactor = secrets.flatMap { $0.isEmpty ? nil : SecretRedactor(mask: $0) }
        self.redis = redis
        self.key = key
        self.retention = retention
        self.logger = logger
        self.flushInterval = flushInterval
        self.nextNumber = lastNumber + 1
    }

    /// Adds output; returns once it is buffered (waiting only when the buffer is full).
    /// Bytes appended so far (`tworker_log_bytes_total`).
    public private(set) var bytesWritten = 0

    public func append(_ bytes: [UInt8]) async {
        guard !bytes.isEmpty, !finished else { return }
        bytesWritten += bytes.count
        if redactor != nil {
            let shown = redactor!.redact(bytes)
            guard !shown.isEmpty else { return }
            addToBuffer(shown)
        } else {
            addToBuffer(bytes)
        }
        if buffer.count >= Self.flushThreshold || !flushedOnce { startFlushIfIdle() } else { armTimer() }
        while buffer.count >= Self.maxBuffered, let flight = inFlight { await flight.value }
    }

    public func append(_ text: String) async { await append(Array(text.utf8)) }

    private func addToBuffer(_ bytes: [UInt8]) {
        if buffer.isEmpty {
            oldestBufferedAt = .now
            oldestBufferedWall = Timestamp.milliseconds()
        }
        buffer.append(contentsOf: bytes)
    }

    /// What the redactor still holds back joins the buffer: the log ends or must be written now.
    private func releaseHeld() {
        if let held = redactor?.flush(), !held.isEmpty { addToBuffer(held) }
    }

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
        releaseHeld()
        var entries = takeEntries()
        entries.append(JobStore.LogEntry(number: nextNumber, data: nil, final: true))
        nextNumber += 1
        return commands(for: entries, expire: true)
    }

    /// Writes everything buffered without closing the log (used before a requeue).
    public func drain() async {
        timer?.cancel()
        timer = nil
        releaseHeld()
        while true {
            if let flight = inFlight { await flight.value; continue }
            if buffer.isEmpty { return }
            startFlushIfIdle()
        }
    }

    private func armTimer() {
        guard timer == nil, let oldest = oldestBufferedAt else { return }
        let deadline = oldest.advanced(by: flushInterval)
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
        flushedOnce = true
        timer?.cancel()
        timer = nil
        let entries = takeEntries()
        inFlight = Task {
            await self.write(entries, expire: false)
            self.flushCompleted()
        }
    }

    /// Numbers and cuts the buffered output into entries, emptying the buffer.
    private func takeEntries() -> [JobStore.LogEntry] {
        var entries: [JobStore.LogEntry] = []
        var start = 0
        while start < buffer.count {
            let end = Self.entryEnd(buffer, from: start)
            entries.append(JobStore.LogEntry(number: nextNumber, data: Array(buffer[start..<end]), final: false, at: oldestBufferedWall))
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
        if buffer.count >= Self.flushThreshold || (oldestBufferedAt.map { .now - $0 >= flushInterval } ?? true) {
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

    private func write(_ entries: [JobStore.LogEntry], expire: Bool) async {
        await send(commands(for: entries, expire: expire))
    }

    private func commands(for entries: [JobStore.LogEntry], expire: Bool) -> [[[UInt8]]] {
        JobStore.logCommands(key: key, entries: entries, expireAfter: expire ? retention : nil)
    }

    /// Writes until Redis has taken every entry: a refused entry is retried with backoff, never
    /// dropped (an entry already there is success, see `JobStore.appendLog`).
    private func send(_ commands: [[[UInt8]]]) async {
        var delay: Duration = .milliseconds(100)
        while !Task.isCancelled {
            do {
                try await JobStore.appendLog(commands, redis: redis, logger: logger, key: key)
                return
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
