import Foundation
import Logging
import RedisClient
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

@Suite struct TimestampTests {
    @Test func formatsUTCWithMilliseconds() {
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_700_000_000.123)) == "2023-11-14T22:13:20.123Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
    }

    @Test func parsesWhatItFormats() throws {
        let date = Date(timeIntervalSince1970: 1_800_000_000.5)
        let parsed = try #require(Timestamp.parse(Timestamp.format(date)))
        #expect(abs(parsed.timeIntervalSince(date)) < 0.001)
        #expect(Timestamp.parse("2026-11-22T20:17:32Z") == Date(timeIntervalSince1970: 1_795_378_652))
    }

    @Test(arguments: ["", "yesterday", "2026-11-22 20:17:32Z", "2026-11-22T20:17:32", "2026-11-22T20:17:32.x1Z"])
    func rejectsAnythingElse(_ text: String) {
        #expect(Timestamp.parse(text) == nil)
    }
}

@Suite struct RepositorySourceTests {
    @Test(arguments: [
        ("https://github.com/travis-ci/travis-worker.git", "travis-ci/travis-worker"),
        ("git@github.com:acme/app.js.git", "acme/app.js"),
        ("/srv/git/owner/my repo", "owner/my-repo"),
        ("repo", "local/repo"),
        ("file:///srv/repos/y.git", "repos/y"),
        ("/tmp/../x", "-/x"),
    ])
    func slugsComeFromTheLastTwoPathComponents(url: String, slug: String) {
        #expect(RepositorySource.slug(from: url) == slug)
        #expect(JobValidation.isValidSlug(RepositorySource.slug(from: url)))
    }

    @Test func remoteHeadReadsBranchAndCommit() {
        let output = "ref: refs/heads/trunk\tHEAD\n0123456789abcdef0123456789abcdef01234567\tHEAD\n"
        #expect(RemoteHead(lsRemoteOutput: output) == RemoteHead(branch: "trunk", commit: "0123456789abcdef0123456789abcdef01234567"))
        #expect(RemoteHead(lsRemoteOutput: "0123456789abcdef0123456789abcdef01234567\tHEAD\n")?.branch == nil)
        #expect(RemoteHead(lsRemoteOutput: "") == nil)
        #expect(GitCommand.remoteHead(url: "-x").arguments == ["ls-remote", "--symref", "--", "-x", "HEAD"])
    }
}

@Suite(.tags(.redis)) struct LogStreamerTests {
    let logger = Logger(label: "test")

    func entries(_ redis: RedisConnection, _ key: String) async throws -> [(id: String, fields: [String: String])] {
        let reply = try await redis.send(["XRANGE", key, "-", "+"])
        return (reply.array ?? []).map { entry in
            let parts = entry.array ?? []
            let fields = parts.last?.array?.compactMap(\.string) ?? []
            var values: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) { values[fields[index]] = fields[index + 1] }
            return (parts.first?.string ?? "", values)
        }
    }

    @Test func smallOutputIsFlushedWithinTheIntervalAndNumbered() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let streamer = try await LogStreamer.resuming(redis: redis, key: "log:a", retention: 60, logger: logger)
            await streamer.append("line one\n")
            let first = try await eventually(timeout: .seconds(1)) { try await entries(redis, "log:a").count == 1 }
            #expect(first)
            await streamer.append("line two\n")
            #expect(try await entries(redis, "log:a").count == 1, "later output waits up to 200 ms")
            let flushed = try await eventually(timeout: .seconds(1)) { try await entries(redis, "log:a").count == 2 }
            #expect(flushed)
            await streamer.finish()
            let all = try await entries(redis, "log:a")
            #expect(all.map(\.id) == ["0-1", "0-2", "0-3"])
            #expect(all.map { $0.fields["n"] } == ["1", "2", "3"])
            #expect(all.compactMap { $0.fields["data"] }.joined() == "line one\nline two\n")
            #expect(all.last?.fields["final"] == "1")
            #expect(try await redis.send(["TTL", "log:a"]).int ?? 0 > 0)
        }
    }

    /// The first output is what a watcher waits for: it is written at once, later small output
    /// waits for the interval (stretched to an hour here, so only the first write can explain
    /// an entry before `finish`).
    @Test func theFirstOutputIsWrittenAtOnceAndLaterOutputIsBatched() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let streamer = try await LogStreamer.resuming(redis: redis, key: "log:first", retention: 60, logger: logger,
                                                          flushInterval: .seconds(3600))
            await streamer.append("first line\n")
            let written = try await eventually(timeout: .seconds(10)) { try await !entries(redis, "log:first").isEmpty }
            #expect(written, "the first chunk is not held for the flush interval")
            await streamer.append("second line\n")
            await streamer.append("third line\n")
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await entries(redis, "log:first").compactMap { $0.fields["data"] } == ["first line\n"],
                    "later small output waits for the interval or 4 KiB")
            await streamer.finish()
            let all = try await entries(redis, "log:first")
            #expect(all.map(\.id) == ["0-1", "0-2", "0-3"])
            #expect(all.compactMap { $0.fields["data"] }.joined() == "first line\nsecond line\nthird line\n")
        }
    }

    @Test func fourKilobytesFlushAtOnceAndBigOutputIsSplitIntoOrderedEntries() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let streamer = try await LogStreamer.resuming(redis: redis, key: "log:b", retention: 60, logger: logger)
            await streamer.append(String(repeating: "x", count: 4096))
            let quick = try await eventually(timeout: .milliseconds(150)) { try await !entries(redis, "log:b").isEmpty }
            #expect(quick, "4 KiB flush without waiting for the timer")
            var expected = String(repeating: "x", count: 4096)
            for index in 0..<200 {
                let chunk = "chunk \(index) " + String(repeating: "é", count: 700) + "\n"
                expected += chunk
                await streamer.append(chunk)
            }
            await streamer.finish()
            let all = try await entries(redis, "log:b")
            #expect(all.compactMap { $0.fields["data"] }.joined() == expected)
            #expect(all.compactMap { $0.fields["n"].flatMap(Int.init) } == Array(1...all.count))
            #expect(all.allSatisfy { ($0.fields["data"]?.utf8.count ?? 0) <= LogStreamer.maxEntrySize })
        }
    }

    @Test func aLaterAttemptContinuesTheNumbering() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let first = try await LogStreamer.resuming(redis: redis, key: "log:c", retention: 60, logger: logger)
            await first.append("attempt 1\n")
            await first.drain()
            let second = try await LogStreamer.resuming(redis: redis, key: "log:c", retention: 60, logger: logger)
            await second.append("attempt 2\n")
            await second.finish()
            let all = try await entries(redis, "log:c")
            #expect(all.map(\.id) == ["0-1", "0-2", "0-3"])
        }
    }

    @Test func entriesAreCutAtCharacterBoundaries() {
        let text = Array((String(repeating: "a", count: LogStreamer.maxEntrySize - 1) + "é").utf8)
        let end = LogStreamer.entryEnd(text + Array("tail".utf8), from: 0)
        #expect(end == LogStreamer.maxEntrySize - 1, "the two-byte é is not split")
        #expect(LogStreamer.entryEnd(Array("short".utf8), from: 0) == 5)
    }
}

@Suite(.tags(.redis)) struct WorkQueueTests {
    @Test func completingTwiceAfterALostReplyDoesNotRunTheTransactionAgain() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            defer { redis.close() }
            let keys = RedisKeys(namespace: "resque", host: "h")
            let queue = WorkQueue(redis: redis, blockingRedis: redis, keys: keys, queue: "builds", vm: "worker-1", logger: Logger(label: "t"))
            _ = try await redis.send(["RPUSH", "resque:queue:builds", "job-a", "job-b"])
            let taken = try #require(try await queue.fetch(block: nil))
            #expect(taken == Array("job-a".utf8))
            #expect(try await queue.unfinished() == [Array("job-a".utf8)])
            try await queue.complete(taken, with: [["INCR", "counter"]])
            #expect(try await redis.send(["GET", "counter"]).int == 1)
            #expect(try await queue.unfinished().isEmpty)
            try await queue.requeue(Array("job-b".utf8), as: Array("job-b2".utf8), with: [])
            #expect(try await redis.send(["LRANGE", "resque:queue:builds", "0", "-1"]).array?.compactMap(\.string) == ["job-b2", "job-b"])
        }
    }

    @Test func burstFetchReturnsNilOnAnEmptyQueueAndBlockingFetchWaits() async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            let blocking = RedisConnection(endpoint: server.endpoint)
            defer { redis.close(); blocking.close() }
            let queue = WorkQueue(redis: redis, blockingRedis: blocking, keys: RedisKeys(namespace: "ns", host: "h"), queue: "q", vm: "w", logger: Logger(label: "t"))
            #expect(try await queue.fetch(block: nil) == nil)
            let waiting = Task { try await queue.fetch(block: .seconds(2)) }
            try await Task.sleep(for: .milliseconds(200))
            _ = try await redis.send(["RPUSH", "ns:queue:q", "late"])
            #expect(try await waiting.value == Array("late".utf8))
            #expect(try await redis.send(["LRANGE", "tworker:processing:h:w", "0", "-1"]).array?.compactMap(\.string) == ["late"])
        }
    }
}

extension Tag {
    @Tag static var redis: Self
}

/// Writes that used to ignore an error reply, sent through a proxy that answers `LOADING` to
/// them (as a restarted server does): each is retried until Redis takes it.
@Suite(.tags(.redis)) struct WritesThroughLoadingTests {
    func withProxy(_ rules: [String], _ body: (RedisConnection, RedisConnection, RedisLoadingProxy) async throws -> Void) async throws {
        try await withRedisServer { server in
            let directory = try TempDirectory(prefix: "tworker-proxy")
            defer { directory.remove() }
            let proxy = try await RedisLoadingProxy(upstreamPort: server.port, rules: rules, log: directory.path + "/proxy.log")
            defer { proxy.stop() }
            let proxied = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: proxy.port)))
            let direct = RedisConnection(endpoint: server.endpoint)
            defer { proxied.close(); direct.close() }
            try await body(proxied, direct, proxy)
        }
    }

    @Test func aStoppingWorkersHeartbeatIsRemovedThroughLoading() async throws {
        try await withProxy(["SREM:tworker:workers=2"]) { proxied, direct, proxy async throws in
            let keys = RedisKeys(namespace: "ns", host: "h")
            let heartbeat = Heartbeat(redis: proxied, keys: keys, vm: "w", interval: 60, logger: Logger(label: "t"))
            await heartbeat.update(.idle)
            #expect(try await direct.send(["SISMEMBER", RedisKeys.workers, keys.workerMember(vm: "w")]).int == 1)
            await heartbeat.stop()
            #expect(proxy.refusals.count == 2)
            #expect(try await direct.send(["SISMEMBER", RedisKeys.workers, keys.workerMember(vm: "w")]).int == 0)
            #expect(try await direct.send(["EXISTS", keys.worker(vm: "w")]).int == 0)
        }
    }

    /// A LOADING reply read as "no heartbeat" would let a rebuild touch the VM under its running job.
    @Test func aBusyWorkersVMIsNotTakenBecauseRedisAnsweredLoading() async throws {
        try await withProxy(["HGET:tworker:worker:=2"]) { proxied, direct, proxy async throws in
            let keys = RedisKeys(namespace: "ns", host: "h")
            _ = try await direct.send(["HSET", keys.worker(vm: "w"), "state", "busy"])
            _ = try await direct.send(["RPUSH", keys.processing(vm: "w"), "job"])
            let maintenance = Maintenance(redis: proxied, keys: keys, drainTimeout: .seconds(1), logger: Logger(label: "t"))
            await #expect(throws: Maintenance.StillBusy.self) { try await maintenance.begin("w") }
            #expect(proxy.refusals.count == 2)
        }
    }

    @Test func aVMReturnedToServiceThroughLoadingLeavesMaintenance() async throws {
        try await withProxy(["DEL:tworker:maintenance:=2"]) { proxied, direct, proxy async throws in
            let keys = RedisKeys(namespace: "ns", host: "h")
            _ = try await direct.send(["SET", keys.maintenance(vm: "w"), "held"])
            try await Maintenance(redis: proxied, keys: keys, drainTimeout: .seconds(1), logger: Logger(label: "t")).end("w")
            #expect(proxy.refusals.count == 2)
            #expect(try await direct.send(["EXISTS", keys.maintenance(vm: "w")]).int == 0)
        }
    }
}
