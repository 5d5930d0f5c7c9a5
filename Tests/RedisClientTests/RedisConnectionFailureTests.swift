@testable import RedisClient
import Testing
import TWorkerTestSupport

@Suite("RedisConnection timeouts, outages and shutdown")
struct RedisConnectionFailureTests {
    @Test func blockingCommandOutlivesTheCommandTimeout() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint, commandTimeout: .milliseconds(200))
            defer { redis.close() }
            // Nothing to move: BLMOVE blocks the full second, five times the command timeout.
            let start = ContinuousClock.now
            let empty = try await redis.sendBlocking(
                ["BLMOVE", "src", "dst", "LEFT", "RIGHT", "1"], blockTimeout: .seconds(1))
            #expect(empty.isNull)
            #expect(ContinuousClock.now - start >= .milliseconds(900))

            // An element pushed while blocked comes back; the same connection is still healthy.
            let pusher = RedisConnection(endpoint: server.endpoint)
            defer { pusher.close() }
            async let moved = redis.sendBlocking(
                ["BLMOVE", "src", "dst", "LEFT", "RIGHT", "1"], blockTimeout: .seconds(1))
            try await Task.sleep(for: .milliseconds(400))
            _ = try await pusher.send("RPUSH", "src", "job")
            #expect(try await moved == .bulk(Array("job".utf8)))
            #expect(try await redis.send("LRANGE", "dst", "0", "-1") == .array([.bulk(Array("job".utf8))]))
        }
    }

    @Test func plainSendTimesOutOnAHungServer() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint, commandTimeout: .milliseconds(300))
            let sleeper = RedisConnection(endpoint: server.endpoint)
            defer {
                redis.close()
                sleeper.close()
            }
            _ = try await redis.send("PING") // connect first, so only the command can hang
            async let hang = sleeper.send("DEBUG", "SLEEP", "2")
            try await Task.sleep(for: .milliseconds(100))
            let start = ContinuousClock.now
            await #expect {
                try await redis.send("GET", "k")
            } throws: { error in
                guard case let .connectionLost(message) = error as? RedisError else { return false }
                return message.contains("no reply within")
            }
            #expect(ContinuousClock.now - start < .milliseconds(1500))
            _ = try await hang
            // Reconnects by itself once the server answers again.
            #expect(try await redis.send("PING") == .status("PONG"))
        }
    }

    @Test func stoppedServerThenRestartSameConnection() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint, connectTimeout: .seconds(1))
            defer { redis.close() }
            _ = try await redis.send("SET", "k", "1")
            await server.stop()
            await #expect {
                try await redis.send("GET", "k")
            } throws: { error in
                (error as? RedisError)?.isConnectionError == true
            }
            // Still down: a fresh connect attempt fails the same way, without hanging.
            await #expect {
                try await redis.send("GET", "k")
            } throws: { error in
                if case .connectionFailed = error as? RedisError { true } else { false }
            }
            try await server.restart()
            #expect(try await redis.send("PING") == .status("PONG"))
            #expect(try await redis.send("SET", "k", "2") == .status("OK"))
        }
    }

    @Test func writingToADeadServerDoesNotRaiseSIGPIPE() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            _ = try await redis.send("PING")
            await server.stop()
            // ~20 MB cannot fit in the socket buffer, so hiredis keeps writing after the peer's
            // RST: without SIGPIPE blocked on the worker thread this kills the test process.
            let big = [UInt8](repeating: 120, count: 64 * 1024)
            let commands = (0..<320).map { [Array("SET".utf8), Array("k\($0)".utf8), big] }
            await #expect {
                try await redis.pipeline(bytes: commands)
            } throws: { error in
                (error as? RedisError)?.isConnectionError == true
            }
        }
    }

    @Test func retryRecoversWhenTheServerComesBack() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint, connectTimeout: .milliseconds(500))
            defer { redis.close() }
            _ = try await redis.send("PING")
            await server.stop()
            let recorder = LogRecorder()
            let attempts = Counter()
            // Long enough for the 10-40 ms backoff to reach its cap even on a loaded machine.
            let restarter = Task {
                try await Task.sleep(for: .milliseconds(800))
                try await server.restart()
            }
            let reply = try await withRedisRetry(
                logger: recorder.logger, what: "ping", initialDelay: .milliseconds(10), maxDelay: .milliseconds(40)
            ) {
                _ = attempts.next()
                return try await redis.send("PING")
            }
            try await restarter.value
            #expect(reply == .status("PONG"))
            let warnings = recorder.messages(atLeast: .warning)
            #expect(attempts.count >= 4, "the outage should span several attempts")
            #expect(!warnings.isEmpty)
            // One line per backoff step: never more lines than failures, fewer once the delay is capped.
            #expect(warnings.count < attempts.count, "one line per step, not per failure")
        }
    }

    @Test func missingUnixSocketIsConnectionFailed() async throws {
        let directory = try TempDirectory()
        defer { directory.remove() }
        let redis = RedisConnection(endpoint: RedisEndpoint(address: .unix(path: directory.path + "/none.sock")))
        defer { redis.close() }
        await #expect {
            try await redis.send("PING")
        } throws: { error in
            if case .connectionFailed = error as? RedisError { true } else { false }
        }
    }

    @Test func cancellingABlockedCallInterruptsIt() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            _ = try await redis.send("PING")
            let blocked = Task {
                try await redis.sendBlocking(["BLPOP", "never", "20"], blockTimeout: .seconds(20))
            }
            try await Task.sleep(for: .milliseconds(200))
            let start = ContinuousClock.now
            blocked.cancel()
            await #expect(throws: CancellationError.self) { try await blocked.value }
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(try await redis.send("PING") == .status("PONG"))
        }
    }

    @Test func closeInterruptsIsIdempotentAndEndsTheThread() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            let worker = redis.worker
            _ = try await redis.send("PING")
            let blocked = Task {
                try await redis.sendBlocking(["BLPOP", "never", "20"], blockTimeout: .seconds(20))
            }
            try await Task.sleep(for: .milliseconds(200))
            redis.close()
            redis.close()
            await #expect(throws: CancellationError.self) { try await blocked.value }
            await #expect(throws: CancellationError.self) { try await redis.send("PING") }
            try await waitUntil { worker.threadFinished }
        }
    }

    @Test func droppingTheConnectionEndsTheThread() async throws {
        try await withRedisServer { server async throws in
            var redis: RedisConnection? = RedisConnection(endpoint: server.endpoint)
            let worker = try #require(redis?.worker)
            _ = try await redis?.send("PING")
            #expect(!worker.threadFinished)
            redis = nil
            try await waitUntil { worker.threadFinished }
        }
    }

    private func waitUntil(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("condition not met within 5 s")
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
