import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct RecoveryTests {
    @Test func aWorkerKilledMidJobLeavesItRecoverableAndItCompletesExactlyOnce() async throws {
        try await TestHost.with { host in
            let marker = host.directory.path + "/runs.txt"
            let id = try await host.push(script: ["echo started >> \(marker)", "sleep 3", "echo completed >> \(marker)"])
            let first = try host.spawnWorker()
            let running = try await eventually { try await host.record(id)["state"] == "started" }
            #expect(running, "worker output:\n\(first.output)")
            try await Task.sleep(for: .milliseconds(300))
            await first.kill9()
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 1, "the job is still in the processing list")

            let second = try host.spawnWorker(arguments: ["--burst"])
            let status = await second.waitForExit(timeout: .seconds(30))
            #expect(status == 0, "\(second.output)")
            let record = try await host.record(id)
            #expect(record["state"] == "passed")
            #expect(record["attempts"] == "2")
            let runs = try String(contentsOfFile: marker, encoding: .utf8)
            #expect(runs.components(separatedBy: "completed").count - 1 == 1, "completed exactly once: \(runs)")
            #expect(try await host.events(for: id) == ["job:received", "job:started", "job:requeued", "job:received", "job:started", "job:finished"])
            let log = try await host.log(id).text
            #expect(log.contains("stopped unexpectedly; the job was requeued (attempt 2 of 3)"))
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 1)
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)
        }
    }

    @Test func aJobLeftBehindTooOftenIsErroredInsteadOfRequeued() async throws {
        try await TestHost.with { host in
            let raw = #"{"args":[{"config":{"script":"echo never"},"id":"doomed"}],"attempts":2,"class":"X"}"#
            _ = try await host.redis.send(["RPUSH", host.keys.processing(vm: "worker-1"), raw])
            try await host.runBurst()
            let record = try await host.record("doomed")
            #expect(record["state"] == "errored")
            #expect(record["error"]?.contains("giving up after 3 attempts") == true)
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            #expect(try await host.log("doomed").isFinal)
        }
    }

    @Test func redisRestartedMidJobTheJobStillCompletesAndReports() async throws {
        try await TestHost.with(appendonly: true) { host in
            let id = try await host.push(script: ["echo before-restart", "sleep 2", "echo after-restart"])
            let worker = Task { try await host.runBurst() }
            let started = try await eventually { try await host.record(id)["state"] == "started" }
            #expect(started)
            await host.redisServer.stop()
            try await Task.sleep(for: .milliseconds(2500))
            try await host.redisServer.restart()
            try await worker.value
            // The test's own connection died with the server too; its first command reconnects.
            _ = try? await host.redis.send(["PING"])
            let record = try await host.record(id)
            #expect(record["state"] == "passed")
            let log = try await host.log(id)
            #expect(log.text.contains("before-restart"))
            #expect(log.text.contains("after-restart"))
            #expect(log.isFinal)
            #expect(log.numbers == Array(1...log.entries.count), "no entry lost or duplicated")
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
        }
    }
}
