import Foundation
import Logging
import RedisClient
import Testing
@testable import TWorkerCore
import TWorkerTestSupport

/// The multi-queue fetch against a real redis-server: exact priority order, `*`, the record's
/// queue, requeues onto the job's own queue, and the wake-up of an idle wait.
@Suite(.tags(.redis)) struct QueueFetchTests {
    func withQueues(_ list: String, _ body: (WorkQueue, RedisConnection) async throws -> Void) async throws {
        try await withRedisServer { server in
            let redis = RedisConnection(endpoint: server.endpoint)
            let blocking = RedisConnection(endpoint: server.endpoint)
            defer { redis.close(); blocking.close() }
            let queues = try QueueList(parsing: list)
            let queue = WorkQueue(redis: redis, blockingRedis: blocking, keys: RedisKeys(namespace: "ns", host: "h"),
                                  queue: queues.fallback ?? "x", queues: queues, vm: "w", logger: Logger(label: "t"))
            try await body(queue, redis)
        }
    }

    func job(_ id: String) -> String { #"{"class":"B","args":[{"id":"\#(id)"}]}"# }

    @Test func takesStrictlyByPriorityWhateverWasPushedFirst() async throws {
        try await withQueues("high,mid,low") { queue, redis in
            for (name, ids) in [("low", ["l1", "l2"]), ("mid", ["m1"]), ("high", ["h1", "h2"])] {
                for id in ids { _ = try await redis.send(["RPUSH", "ns:queue:\(name)", job(id)]) }
            }
            var order: [String] = []
            while let taken = try await queue.take(block: nil) {
                order.append(taken.queue)
                #expect(try await redis.send(["HGET", "tworker:job:" + String(decoding: taken.raw, as: UTF8.self).split(separator: "\"")[9], "queue"]).string == taken.queue)
                #expect(try await queue.unfinished() == [taken.raw], "the job taken sits in the processing list")
                try await queue.complete(taken.raw, with: [[String]]())
            }
            #expect(order == ["high", "high", "mid", "low", "low"])
        }
    }

    @Test func aLoneMasterWithoutReplicasKeepsServingWhenWaitIsOn() async throws {
        try await withQueues("builds") { queue, redis in
            var waiting = queue
            waiting.replicaWait = ReplicaWait(replicas: 1, timeout: 50)
            for id in ["a", "b", "c"] { _ = try await redis.send(["RPUSH", "ns:queue:builds", job(id)]) }
            // No replica confirms: the first WAIT falls short (50 ms), the others take at most
            // 10 ms; the move is on the master found again, so every job is taken, none dropped.
            var taken: [String] = []
            while let next = try await waiting.take(block: nil) {
                let id = String(decoding: next.raw, as: UTF8.self)
                taken.append(id)
                #expect(try await waiting.unfinished() == [next.raw])
                // The final commit stands on the lone master too: written once, the entry gone.
                try await waiting.complete(next.raw, with: [["INCR", "done"]])
                #expect(try await waiting.unfinished().isEmpty)
            }
            #expect(taken == ["a", "b", "c"].map(job))
            #expect(try await redis.send(["GET", "done"]).int == 3)
            #expect(waiting.replicaWait?.isDegraded == true)
            #expect(waiting.replicaWait?.command == ["WAIT", "1", "10"])
        }
    }

    @Test func starIsEveryKnownQueueSortedAfterTheNamedOnes() async throws {
        try await withQueues("urgent,*") { queue, redis in
            for name in ["zeta", "alpha", "urgent"] {
                _ = try await redis.pipeline([["SADD", "ns:queues", name], ["RPUSH", "ns:queue:\(name)", job(name)]])
            }
            var order: [String] = []
            while let taken = try await queue.take(block: nil) {
                order.append(taken.queue)
                try await queue.complete(taken.raw, with: [[String]]())
            }
            #expect(order == ["urgent", "alpha", "zeta"])
        }
    }

    @Test func aRequeuedJobGoesBackToItsOwnQueueAndAnIdleWorkerTakesItAtOnce() async throws {
        try await withQueues("a,b") { queue, redis in
            _ = try await redis.send(["RPUSH", "ns:queue:b", job("j")])
            let taken = try #require(try await queue.take(block: nil))
            #expect(taken.queue == "b")
            // Another worker (this one holds the job until it requeues it).
            let idle = WorkQueue(redis: redis, blockingRedis: queue.blockingRedis, keys: queue.keys, queue: "a", queues: queue.queues, vm: "w2", logger: queue.logger)
            let waiting = Task { try await idle.take(block: .seconds(5)) }
            try await Task.sleep(for: .milliseconds(200))
            let started = ContinuousClock.now
            try await queue.holding(from: taken.queue).requeue(taken.raw, as: taken.raw, with: [])
            let again = try #require(try await waiting.value)
            #expect(again.queue == "b")
            #expect(ContinuousClock.now - started < .milliseconds(500))
        }
    }

    @Test func aPlainRpushOnAnyQueueIsSeenByABlockingTake() async throws {
        try await withQueues("a,b,c,d,e") { queue, redis in
            let waiting = Task { try await queue.take(block: .seconds(5)) }
            try await Task.sleep(for: .milliseconds(300))
            _ = try await redis.send(["RPUSH", "ns:queue:e", job("late")])
            let taken = try #require(try await waiting.value)
            #expect(taken.queue == "e")
            try await queue.complete(taken.raw, with: [[String]]())
            #expect(try await queue.take(block: .milliseconds(100)) == nil)
        }
    }

    /// A worker never holds two jobs: while its processing list holds one, the take hands that
    /// one back (marked held, for the caller to run as it is) and leaves every queue alone.
    @Test func aTakeWhileTheProcessingListHoldsAJobReturnsThatJobAndTouchesNoQueue() async throws {
        try await withQueues("a,b") { queue, redis in
            _ = try await redis.pipeline([["RPUSH", queue.processingKey, job("held")], ["RPUSH", "ns:queue:a", job("waiting")]])
            for _ in 0..<2 {
                let again = try #require(try await queue.take(block: nil))
                #expect(again == WorkQueue.Taken(queue: "", raw: Array(job("held").utf8), held: true))
                #expect(try await redis.send(["LRANGE", "ns:queue:a", "0", "-1"]).array?.compactMap(\.string) == [job("waiting")], "queue untouched")
                #expect(try await queue.unfinished() == [Array(job("held").utf8)])
            }
            try await queue.complete(Array(job("held").utf8), with: [[String]]())
            let next = try #require(try await queue.take(block: nil))
            #expect(next == WorkQueue.Taken(queue: "a", raw: Array(job("waiting").utf8)))
        }
    }
}
