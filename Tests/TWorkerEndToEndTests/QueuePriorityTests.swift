import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Queue lists end to end: real `tworker work` processes against a real redis-server.
@Suite(.tags(.endToEnd), .serialized)
struct QueuePriorityTests {
    /// 500 jobs over three queues, the lower queues pushed first; two workers on
    /// `high,mid,low`: no job of a lower queue is taken while a higher queue still holds one.
    @Test(.timeLimit(.minutes(5)))
    func priorityHoldsUnderABurstOf500JobsOverThreeQueuesWithTwoWorkers() async throws {
        try await TestHost.with { host in
            var queueOf: [String: String] = [:]
            for (queue, count) in [("low", 167), ("mid", 167), ("high", 166)] {
                for n in 0..<count {
                    let id = "\(queue)-\(n)"
                    try await host.push(id: id, script: ["true"], queue: queue)
                    queueOf[id] = queue
                }
            }
            let workers = try (1...2).map { try host.spawnWorker(vm: "worker-\($0)", arguments: ["--queue", "high,mid,low", "--burst"]) }
            for worker in workers {
                let status = await worker.waitForExit(timeout: .seconds(240))
                if status == nil { await worker.kill9() }
                #expect(status == 0, "\(worker.output.suffix(2000))")
            }
            var received: [String: [Date]] = [:]
            for (id, queue) in queueOf {
                let record = try await host.record(id)
                #expect(record["state"] == "passed", "\(id): \(record)")
                #expect(record["queue"] == queue)
                received[queue, default: []].append(try #require(record["received_at"].flatMap(Timestamp.parse)))
            }
            // Two workers write `received_at` just after their fetch, so allow a little skew
            // between them; a fetch that ignored priority would be off by seconds.
            let skew = 0.25
            let lastHigh = try #require(received["high"]?.max()), firstMid = try #require(received["mid"]?.min())
            let lastMid = try #require(received["mid"]?.max()), firstLow = try #require(received["low"]?.min())
            #expect(lastHigh.timeIntervalSince(firstMid) <= skew, "a mid job was taken \(lastHigh.timeIntervalSince(firstMid)) s before the last high one")
            #expect(lastMid.timeIntervalSince(firstLow) <= skew, "a low job was taken \(lastMid.timeIntervalSince(firstLow)) s before the last mid one")
            for queue in ["high", "mid", "low"] { #expect(try await host.int(["LLEN", "resque:queue:\(queue)"]) == 0) }
        }
    }

    /// A worker on several queues SIGKILLed again and again, mid-fetch or mid-job: every job
    /// still runs to its end, back on its own queue in between, none lost and none doubled.
    @Test(.timeLimit(.minutes(5)))
    func aSigkillMidFetchOverSeveralQueuesLosesNothing() async throws {
        try await TestHost.with(config: "limits:\n  max_attempts: 100\n") { host in
            var queueOf: [String: String] = [:]
            for n in 0..<60 {
                let queue = ["a", "b", "c"][n % 3]
                let id = "kill-\(n)"
                try await host.push(id: id, script: ["true"], queue: queue)
                queueOf[id] = queue
            }
            var kills = 0
            for round in 0..<15 {
                let worker = try host.spawnWorker(arguments: ["--queue", "a,b,c"])
                try await Task.sleep(for: .milliseconds(150 + (round * 37) % 200))
                await worker.kill9()
                kills += 1
            }
            // The last one drains what is left, recovering the processing list first.
            let last = try host.spawnWorker(arguments: ["--queue", "a,b,c", "--burst"])
            let status = await last.waitForExit(timeout: .seconds(120))
            if status == nil { await last.kill9() }
            #expect(status == 0, "\(last.output.suffix(2000))")
            #expect(kills == 15)
            for (id, queue) in queueOf {
                let record = try await host.record(id)
                #expect(record["state"] == "passed", "\(id): \(record)")
                #expect(record["queue"] == queue, "\(id) went back to \(record["queue"] ?? "?")")
            }
            for queue in ["a", "b", "c"] { #expect(try await host.int(["LLEN", "resque:queue:\(queue)"]) == 0) }
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            #expect(try await host.int(["LLEN", "resque:failed"]) == 0)
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 60)
        }
    }

    /// `workload` reaches worker N as its queue list through the master.
    @Test(.timeLimit(.minutes(2)))
    func workloadGivesEachWorkerOfTheMasterItsQueues() async throws {
        try await TestHost.with(config: "workload: [\"import\", \"import,export\"]\n") { host in
            try await host.withMaster(workers: 2) { _ in
                let queues = try await host.redis.pipeline((1...2).map { ["HGET", host.keys.worker(vm: "worker-\($0)"), "queue"] }).map(\.string)
                #expect(queues == ["import", "import,export"])
                let export = try await host.push(script: ["true"], queue: "export")
                #expect(try await eventually(timeout: .seconds(20)) { try await host.record(export)["state"] == "passed" })
                #expect(try await host.record(export)["vm"] == "worker-2")
            }
        }
    }
}
