import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `redis.sentinels`: a master, a replica and three real `redis-sentinel`s; the master is
/// SIGKILLed while a pool works through 200 jobs.
@Suite(.tags(.endToEnd), .serialized)
struct SentinelFailoverTests {
    @Test func aMasterKilledMidRunLosesNoJobAndRunsNoneTwice() async throws {
        try await withSentinelCluster { cluster in
            let directory = try TempDirectory(prefix: "tworker-e2e")
            defer { directory.remove() }
            let sentinels = cluster.sentinelAddresses.map { "\"\($0)\"" }.joined(separator: ", ")
            // No redis.url: every command finds the master through the sentinels. Heartbeats
            // live 3 intervals: longer than the failover, so the reaper leaves running jobs be.
            let host = TestHost(redisServer: cluster.master, directory: directory, redis: RedisConnection(endpoint: cluster.endpoint),
                                httpPort: try freeLoopbackPort(),
                                redisSection: "  sentinels: [\(sentinels)]\n  master_name: \(SentinelCluster.masterName)",
                                heartbeatInterval: 5)
            defer { host.redis.close() }
            try host.writeMasterConfig(workers: 3)
            #expect(try host.config().redis.waitReplicas == 1)
            let marker = directory.path + "/runs.txt"
            let total = 200
            let ids = (0..<total).map { String(format: "failover-%03d", $0) }
            try await host.withMaster(workers: 3) { master in
                // Enqueued through the CLI, eight at a time, while the workers already run them;
                // 0.3 s each keeps the three workers busy well past the last enqueue.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for lane in 0..<8 {
                        group.addTask {
                            for id in ids.enumerated().filter({ $0.offset % 8 == lane }).map(\.element) {
                                let payload = #"{"id":"\#(id)","config":{"script":["echo \#(id) >> \#(marker)","sleep 0.3"]}}"#
                                let result = try await host.cli(["enqueue", "--file", "-", "--env", "test", "--config-dir", host.configDir], stdin: payload)
                                try #require(result.status == 0, "enqueue \(id): \(result.err)")
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let started = await eventually(timeout: .seconds(60)) { Self.lines(marker).count >= total / 4 }
                try #require(started, "a quarter of the jobs ran before the kill:\n\(master.output)")
                let doneBefore = Self.lines(marker).count
                #expect(doneBefore < total * 3 / 4, "the master must die mid-run")
                cluster.killMaster()
                let killedAt = ContinuousClock.now
                let newPort = try await cluster.waitForFailover()
                #expect(newPort == cluster.replica.port)
                let failedOverAfter = ContinuousClock.now - killedAt

                // Every job reaches its final state: none lost with the dead master.
                var states: [String: String] = [:]
                let settled = await eventually(timeout: .seconds(90)) {
                    for id in ids where states[id] != "passed" {
                        states[id] = (try? await host.record(id))?["state"]
                    }
                    return ids.allSatisfy { states[$0] == "passed" }
                }
                let unsettled = ids.filter { states[$0] != "passed" }.map { "\($0)=\(states[$0] ?? "-")" }
                #expect(settled, "jobs not passed: \(unsettled.prefix(20))\n\(master.output.suffix(4000))")
                // ... and ran exactly once: one line each in the file the jobs append to.
                let runs = Dictionary(grouping: Self.lines(marker), by: { $0 }).mapValues(\.count)
                let twice = runs.filter { $0.value > 1 }.keys.sorted()
                let never = ids.filter { runs[$0] == nil }
                #expect(twice.isEmpty, "ran more than once: \(twice)")
                #expect(never.isEmpty, "never ran: \(never)")
                #expect(runs.count == total)
                let notes = master.output.split(separator: "\n").filter {
                    $0.contains("redis failover") || $0.contains("taking a job failed") || $0.contains("confirmed within") || $0.contains("READONLY")
                        || $0.contains("reachable again")
                }
                print("sentinel failover: master killed after \(doneBefore) of \(total) jobs ran; sentinels named the replica after \(failedOverAfter); "
                      + "all final after \(ContinuousClock.now - killedAt); \(notes.count) log lines about it:\n" + notes.prefix(12).joined(separator: "\n"))
                // Nothing left in any processing list, no queue entry left behind.
                let processing = try await host.redis.send(["KEYS", "tworker:processing:*"]).array ?? []
                for key in processing.compactMap(\.string) {
                    #expect(try await host.int(["LLEN", key]) == 0, "\(key) still holds jobs")
                }
                #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)

                // The CLI works through the sentinels after the failover: enqueue and status.
                let after = try await host.control(["enqueue", "--script", "echo after-failover >> \(marker)"])
                #expect(after.status == 0, "\(after.err)")
                let ranAfter = await eventually(timeout: .seconds(30)) { Self.lines(marker).contains("after-failover") }
                #expect(ranAfter, "\(master.output.suffix(3000))")
                let status = try await host.control(["status"])
                #expect(status.status == 0, "\(status.err)")
                #expect(status.out.contains("worker-1"), "\(status.out)")
            }
            // Without a master, `status` reads Redis itself: through the sentinels too.
            let status = try await host.control(["status", "--json"])
            #expect(status.status == 0, "\(status.err)")
            #expect(status.out.contains("\"builds\""), "\(status.out)")
        }
    }

    private static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }
}
