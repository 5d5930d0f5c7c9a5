import Logging
import RedisClient
import Synchronization
import Testing

/// A clock whose sleeps return at once and are recorded, so backoff can be checked exactly.
struct RecordingClock: Clock {
    struct Instant: InstantProtocol {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    final class Log: Sendable {
        let sleeps = Mutex<[Duration]>([])
    }

    let log = Log()
    var now: Instant { Instant(offset: log.sleeps.withLock { $0.reduce(.zero, +) }) }
    var minimumResolution: Duration { .zero }
    var sleeps: [Duration] { log.sleeps.withLock { $0 } }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        try Task.checkCancellation()
        let delay = now.duration(to: deadline)
        log.sleeps.withLock { $0.append(delay) }
    }
}

/// Counts calls across the retry loop's closure invocations.
final class Counter: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
    var count: Int { value.withLock { $0 } }
}

@Suite("withRedisRetry (fake clock)")
struct RedisRetryTests {
    @Test func backoffDoublesUpToTheCapThenSucceeds() async throws {
        let clock = RecordingClock()
        let attempts = Counter()
        let recorder = LogRecorder()
        let value = try await withRedisRetry(logger: recorder.logger, what: "poll", clock: clock) {
            if attempts.next() <= 9 { throw RedisError.connectionFailed("refused") }
            return "done"
        }
        #expect(value == "done")
        #expect(attempts.count == 10)
        #expect(clock.sleeps == [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map { Duration.milliseconds($0) })
        // One warning per backoff step (7 steps), none for repeats at the cap.
        let warnings = recorder.messages(atLeast: .warning)
        #expect(warnings.count == 7)
        #expect(warnings.first?.contains("retrying in 0.1 seconds") == true)
        #expect(warnings.allSatisfy { $0.contains("refused") && $0.hasPrefix("poll failed") })
        #expect(recorder.messages(atLeast: .info).count == 8, "plus one 'reachable again' line")
    }

    @Test func eachCallStartsWithTheInitialDelay() async throws {
        let clock = RecordingClock()
        for _ in 0..<2 {
            let attempts = Counter()
            _ = try await withRedisRetry(logger: LogRecorder().logger, what: "x", clock: clock) {
                if attempts.next() <= 2 { throw RedisError.connectionLost("reset") }
                return 1
            }
        }
        #expect(clock.sleeps == [100, 200, 100, 200].map { Duration.milliseconds($0) })
    }

    @Test func longOutageLogsFarFewerLinesThanAttempts() async throws {
        let clock = RecordingClock()
        let attempts = Counter()
        let recorder = LogRecorder()
        _ = try await withRedisRetry(
            logger: recorder.logger, what: "x", clock: clock,
            initialDelay: .milliseconds(10), maxDelay: .milliseconds(40)
        ) {
            if attempts.next() <= 40 { throw RedisError.connectionFailed("refused") }
            return 1
        }
        let warnings = recorder.messages(atLeast: .warning).count
        // Steps 10, 20, 40 ms, then one reminder every 12 failures at the cap.
        #expect(warnings == 3 + 3)
        #expect(warnings < attempts.count)
    }

    @Test func serverErrorsAreNotRetried() async throws {
        let clock = RecordingClock()
        let attempts = Counter()
        await #expect(throws: RedisError.server("WRONGTYPE x")) {
            try await withRedisRetry(logger: LogRecorder().logger, what: "x", clock: clock) {
                _ = attempts.next()
                throw RedisError.server("WRONGTYPE x")
            }
        }
        #expect(attempts.count == 1)
        #expect(clock.sleeps.isEmpty)
    }

    @Test func cancellationAndOtherErrorsAreNotRetried() async throws {
        let clock = RecordingClock()
        let attempts = Counter()
        await #expect(throws: CancellationError.self) {
            try await withRedisRetry(logger: LogRecorder().logger, what: "x", clock: clock) {
                _ = attempts.next()
                throw CancellationError()
            }
        }
        await #expect(throws: RedisURLError.self) {
            try await withRedisRetry(logger: LogRecorder().logger, what: "x", clock: clock) {
                _ = attempts.next()
                return try RedisEndpoint(url: "nope")
            }
        }
        #expect(attempts.count == 2)
        #expect(clock.sleeps.isEmpty)
    }

    @Test func cancellingTheTaskStopsTheBackoffSleep() async throws {
        let task = Task {
            try await withRedisRetry(logger: LogRecorder().logger, what: "x", initialDelay: .seconds(60)) {
                throw RedisError.connectionFailed("refused")
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        let start = ContinuousClock.now
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(ContinuousClock.now - start < .seconds(5))
    }
}

@Suite("Transient error replies")
struct TransientReplyTests {
    @Test(arguments: ["LOADING Redis is loading the dataset in memory", "BUSY Redis is busy running a script",
                      "MASTERDOWN Link with MASTER is down", "READONLY You can't write against a read only replica.",
                      "TRYAGAIN Multiple keys request during rehashing", "CLUSTERDOWN The cluster is down",
                      "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"])
    func aTransientReplyIsRetriedWithTheSameBackoffAsALostConnection(message: String) async throws {
        let clock = RecordingClock()
        let calls = Counter()
        let value = try await withRedisRetry(logger: Logger(label: "test"), what: "write", clock: clock) { () async throws -> Int in
            if calls.next() <= 2 { throw RedisError.server(message) }
            return 7
        }
        #expect(value == 7)
        #expect(calls.count == 3)
        #expect(clock.sleeps == [.milliseconds(100), .milliseconds(200)])
        #expect(RedisError.server(message).isTransient)
    }

    @Test func aPermanentReplyIsThrownAtOnce() async {
        let calls = Counter()
        await #expect(throws: RedisError.server("WRONGTYPE Operation against a key holding the wrong kind of value")) {
            try await withRedisRetry(logger: Logger(label: "test"), what: "write", clock: RecordingClock()) { () async throws -> Int in
                _ = calls.next()
                throw RedisError.server("WRONGTYPE Operation against a key holding the wrong kind of value")
            }
        }
        #expect(calls.count == 1)
    }
}
