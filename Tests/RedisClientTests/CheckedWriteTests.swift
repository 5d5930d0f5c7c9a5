import Logging
import RedisClient
import Testing
import TWorkerTestSupport

/// `checkedForWrite` / `checkedPipeline` against a real redis-server: every way a write's reply
/// can say it did not (fully) happen, and whether a retry may cure it.
@Suite("Checked writes against redis-server")
struct CheckedWriteTests {
    /// A replica whose master is unreachable refuses writes with `READONLY` while queueing them:
    /// the EXEC answers `EXECABORT`, nothing ran, and a retry may succeed (after a failover).
    @Test func anExecAbortCausedByATransientReplyIsRetryable() async throws {
        try await withRedisServer(arguments: ["--replicaof", "127.0.0.1", String(try freeLoopbackPort())]) { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let replies = try await redis.pipeline([["MULTI"], ["SET", "k", "v"], ["EXEC"]])
            #expect(replies.last?.errorCode == "EXECABORT", "\(replies)")
            do {
                _ = try await redis.checkedPipeline([["MULTI"], ["SET", "k", "v"], ["EXEC"]])
                Issue.record("a refused transaction passed the check")
            } catch let error as RedisError {
                #expect(error.isTransient && error.isRetryable, "\(error)")
                #expect(error.code == "READONLY")
            }
        }
    }

    /// A watched key changed: EXEC answers nil, nothing ran; the check says "try again".
    @Test func anExecAnsweringNilIsRetryable() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            let other = RedisConnection(endpoint: server.endpoint)
            defer { redis.close(); other.close() }
            _ = try await redis.send(["WATCH", "watched"])
            _ = try await other.send(["SET", "watched", "changed"])
            do {
                _ = try await redis.checkedPipeline([["MULTI"], ["SET", "written", "1"], ["EXEC"]])
                Issue.record("a transaction that did not run passed the check")
            } catch let error as RedisError {
                #expect(error.isRetryable, "\(error)")
                #expect(error.code == "TRYAGAIN")
            }
            #expect(try await redis.send(["EXISTS", "written"]).int == 0, "nothing ran")
            // Sent again (no watch now), it runs.
            _ = try await redis.checkedPipeline([["MULTI"], ["SET", "written", "1"], ["EXEC"]])
            #expect(try await redis.send(["GET", "written"]).string == "1")
        }
    }

    /// An error among EXEC's results: the rest ran, so it is final, not retried.
    @Test func anErrorInsideExecsResultsIsFinal() async throws {
        try await withRedisServer { server async throws in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            _ = try await redis.send(["SET", "text", "a string"])
            do {
                _ = try await redis.checkedPipeline([["MULTI"], ["SET", "first", "1"], ["LPUSH", "text", "x"], ["EXEC"]])
                Issue.record("a transaction with a failed command passed the check")
            } catch let error as RedisError {
                #expect(!error.isRetryable, "\(error)")
                #expect(error.code == "WRONGTYPE")
            }
            #expect(try await redis.send(["GET", "first"]).string == "1", "the transaction ran")
            // Named as already done, the same error passes.
            let replies = try await redis.checkedPipeline([["MULTI"], ["LPUSH", "text", "x"], ["EXEC"]], accepting: { $0.hasPrefix("WRONGTYPE") })
            #expect(replies.count == 3)
        }
    }

    /// An ACL denial while queueing aborts the transaction for good; outside a transaction a
    /// denied command fails the pipeline even when the others succeeded.
    @Test func anAclDenialIsFinalInAndOutOfATransaction() async throws {
        try await withRedisServer { server async throws in
            let admin = RedisConnection(endpoint: server.endpoint)
            defer { admin.close() }
            _ = try await admin.send(["ACL", "SETUSER", "writer", "on", ">secret", "~*", "&*", "+@all", "-xadd"])
            let redis = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: server.port), password: "secret",
                                                                username: "writer"))
            defer { redis.close() }
            for commands in [[["MULTI"], ["SET", "a", "1"], ["XADD", "s", "*", "f", "v"], ["EXEC"]],
                             [["SET", "b", "1"], ["XADD", "s", "*", "f", "v"]]] {
                do {
                    _ = try await redis.checkedPipeline(commands)
                    Issue.record("a denied write passed the check: \(commands)")
                } catch let error as RedisError {
                    #expect(!error.isRetryable, "\(error)")
                    #expect(error.code == "NOPERM" || error.code == "EXECABORT", "\(error)")
                }
            }
            #expect(try await admin.send(["EXISTS", "a"]).int == 0, "the aborted transaction did not run")
            #expect(try await admin.send(["XLEN", "s"]).int == 0)
        }
    }

    /// `giveUpAfter`: a best-effort write stops retrying once it waited that long in all.
    @Test func aBestEffortRetryGivesUp() async throws {
        let clock = RecordingClock()
        let calls = Counter()
        await #expect(throws: RedisError.server("LOADING Redis is loading the dataset in memory")) {
            try await withRedisRetry(logger: Logger(label: "test"), what: "remove", clock: clock, giveUpAfter: .milliseconds(700)) { () async throws -> Int in
                _ = calls.next()
                throw RedisError.server("LOADING Redis is loading the dataset in memory")
            }
        }
        #expect(clock.sleeps == [100, 200, 400].map { Duration.milliseconds($0) })
        #expect(calls.count == 4)
    }
}
