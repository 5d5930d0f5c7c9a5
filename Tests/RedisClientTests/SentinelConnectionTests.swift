import Foundation
import RedisClient
import Synchronization
import Testing
import TWorkerTestSupport

/// A `.sentinel` endpoint against real `redis-sentinel`s: it finds the master, follows a
/// failover, and a call blocked on the old master moves over instead of waiting out its block.
@Suite(.serialized)
struct SentinelConnectionTests {
    @Test func itFindsTheMasterAndABlockedCallMovesOverWhenTheMasterDies() async throws {
        try await withSentinelCluster { cluster in
            let redis = RedisConnection(endpoint: cluster.endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(5))
            defer { redis.close() }
            let blocked = RedisConnection(endpoint: cluster.endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(5))
            defer { blocked.close() }
            #expect(try await redis.send(["SET", "before", "1"]) == .status("OK"))
            #expect(try await Self.port(of: redis) == cluster.master.port)

            // BLPOP for up to 60 s on the master, then the master dies.
            let waiting = Task { () -> Result<RedisReply, any Error> in
                do {
                    return .success(try await blocked.sendBlocking(["BLPOP", "never", "60"], blockTimeout: .seconds(60)))
                } catch {
                    return .failure(error)
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let killedAt = ContinuousClock.now
            cluster.killMaster()
            let newPort = try await cluster.waitForFailover()
            #expect(newPort == cluster.replica.port)
            // The lost master ends the call (a connection error, retryable) long before its 60 s.
            let outcome = await waiting.value
            #expect(ContinuousClock.now - killedAt < .seconds(30), "the blocked call waited out its block")
            guard case .failure(let error as RedisError) = outcome else {
                Issue.record("the blocked call ended with \(outcome)")
                return
            }
            #expect(error.isRetryable, "\(error)")

            // Retried, every connection reaches the new master, with what was written before.
            let moved = try await withRedisRetry(logger: .init(label: "test"), what: "read after failover", maxDelay: .milliseconds(500)) {
                try await redis.send(["GET", "before"])
            }
            #expect(moved.string == "1")
            #expect(try await Self.port(of: redis) == newPort)
            let again = try await withRedisRetry(logger: .init(label: "test"), what: "push after failover", maxDelay: .milliseconds(500)) {
                try await blocked.send(["RPUSH", "after", "x"])
            }
            #expect(again.int == 1)
            #expect(try await Self.port(of: blocked) == newPort)
        }
    }

    @Test func afterAManualFailoverWritesGoToTheNewMasterNotTheDemotedOne() async throws {
        try await withSentinelCluster { cluster in
            let redis = RedisConnection(endpoint: cluster.endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(5))
            defer { redis.close() }
            #expect(try await redis.send(["SET", "k", "1"]) == .status("OK"))
            // The old master lives on, demoted to a replica: a connection still on it gets
            // READONLY (or is marked stale by +switch-master first); either way it rediscovers.
            let sentinel = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: cluster.sentinelPorts[0])))
            defer { sentinel.close() }
            #expect(try await sentinel.send(["SENTINEL", "FAILOVER", SentinelCluster.masterName]) == .status("OK"))
            let newPort = try await cluster.waitForFailover()
            // Until the sentinels reconfigure it, the old master still takes writes (which it
            // then loses: Redis Sentinel's own window); wait until it is a replica.
            let old = RedisConnection(endpoint: cluster.master.endpoint)
            defer { old.close() }
            let demoted = await eventually(timeout: .seconds(20)) {
                (try? await old.send(["ROLE"]))?.array?.first?.string == "slave"
            }
            try #require(demoted, "the old master was never reconfigured as a replica:\n\(cluster.logTail())")
            let written = await eventually(timeout: .seconds(20)) {
                let reply = try? await withRedisRetry(logger: .init(label: "test"), what: "write after failover", maxDelay: .milliseconds(200)) {
                    try await redis.send(["INCR", "k"])
                }
                return reply?.int == 2
            }
            #expect(written)
            #expect(try await Self.port(of: redis) == newPort)
            // The demoted server has the write too, as a replica of the new master.
            let replicated = await eventually(timeout: .seconds(10)) { (try? await old.send(["GET", "k"]))?.string == "2" }
            #expect(replicated)
        }
    }

    @Test func plusSwitchMasterInterruptsACallBlockedOnAMasterThatVanishedWithoutClosingIt() async throws {
        try await withSentinelCluster { cluster in
            let blocked = RedisConnection(endpoint: cluster.endpoint, connectTimeout: .seconds(1), commandTimeout: .seconds(5))
            defer { blocked.close() }
            let ended = Mutex<(any Error)??>(nil)
            let waiting = Task {
                do {
                    _ = try await blocked.sendBlocking(["BLPOP", "never", "60"], blockTimeout: .seconds(60))
                    ended.withLock { $0 = .some(nil) }
                } catch {
                    ended.withLock { $0 = .some(error) }
                }
            }
            defer { waiting.cancel() }
            try await Task.sleep(for: .milliseconds(300))
            // SIGSTOP: like a host cut off by the network, the old master neither answers nor
            // closes its sockets, so only +switch-master can end a BLPOP on it before its 60 s.
            kill(cluster.master.pid, SIGSTOP)
            defer { cluster.killMaster() }
            let newPort = try await cluster.waitForFailover()
            let interrupted = await eventually(timeout: .seconds(20)) { ended.withLock { $0 } != nil }
            #expect(interrupted, "the call blocked on the vanished master was not interrupted by the failover")
            let error = ended.withLock { $0 } ?? nil
            #expect((error as? RedisError)?.isConnectionError == true, "the blocked call ended with \(String(describing: error))")
            let reply = try await withRedisRetry(logger: .init(label: "test"), what: "push after failover", maxDelay: .milliseconds(200)) {
                try await blocked.send(["RPUSH", "moved", "x"])
            }
            #expect(reply.int == 1)
            #expect(try await Self.port(of: blocked) == newPort)
        }
    }

    @Test func unknownMasterNameAndDeadSentinelsFailRetryablyNamingEachSentinel() async throws {
        try await withSentinelCluster { cluster in
            let wrong = RedisEndpoint.sentinel([RedisEndpoint.HostPort(host: "127.0.0.1", port: try freeLoopbackPort()),
                                                RedisEndpoint.HostPort(host: "127.0.0.1", port: cluster.sentinelPorts[1])],
                                               masterName: "no-such-master")
            let redis = RedisConnection(endpoint: wrong, connectTimeout: .seconds(1), commandTimeout: .seconds(2))
            defer { redis.close() }
            do {
                _ = try await redis.send(["PING"])
                Issue.record("PING reached a master that does not exist")
            } catch let error as RedisError {
                #expect(error.isRetryable)
                #expect(error.description.contains("no sentinel led to master 'no-such-master'"), "\(error)")
                #expect(error.description.contains("127.0.0.1:\(cluster.sentinelPorts[1]): does not know master 'no-such-master'"), "\(error)")
            }
        }
    }

    /// The port of the server a connection talks to, as that server says.
    private static func port(of redis: RedisConnection) async throws -> Int {
        let info = try await redis.send(["INFO", "server"]).string ?? ""
        let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("tcp_port:") } ?? ""
        return Int(line.dropFirst("tcp_port:".count)) ?? -1
    }
}
