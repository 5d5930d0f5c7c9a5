import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct SignalTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func terminateStopsTheBuildAndRequeuesTheJobAtTheHead(signal: Int32) async throws {
        try await TestHost.with { host in
            let id = try await host.push(script: ["echo running", "sleep 30"])
            let other = try await host.push(script: ["true"])
            let worker = try host.spawnWorker()
            let started = try await eventually { try await host.log(id).text.contains("running") }
            #expect(started, "\(worker.output)")
            worker.signal(signal)
            let status = await worker.waitForExit(timeout: .seconds(10))
            #expect(status == 0, "\(worker.output)")
            #expect(try await host.record(id)["state"] == "requeued")
            let queue = try await host.redis.send(["LRANGE", "resque:queue:builds", "0", "-1"]).array?.compactMap(\.string) ?? []
            #expect(queue.count == 2)
            #expect(queue.first?.contains(id) == true, "requeued at the head")
            #expect(queue.last?.contains(other) == true)
            #expect(try await host.log(id).text.contains("job put back at the head of the queue"))
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
        }
    }

    @Test func quitFinishesTheCurrentJobThenExits() async throws {
        try await TestHost.with { host in
            // Long enough that QUIT surely lands while the job runs, even on a loaded machine.
            let id = try await host.push(script: ["echo running", "sleep 3", "echo finished-anyway"])
            let next = try await host.push(script: ["true"])
            let worker = try host.spawnWorker()
            let started = try await eventually { try await host.log(id).text.contains("running") }
            #expect(started)
            worker.signal(SIGQUIT)
            let status = await worker.waitForExit(timeout: .seconds(15))
            #expect(status == 0, "\(worker.output)")
            #expect(try await host.record(id)["state"] == "passed")
            #expect(try await host.log(id).text.contains("finished-anyway"))
            #expect(try await host.record(next)["state"] == nil, "no new job was taken")
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 1)
        }
    }
}
