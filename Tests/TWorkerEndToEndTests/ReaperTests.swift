import Foundation
import Logging
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct ReaperTests {
    func reaper(_ host: TestHost) -> ProcessingReaper {
        ProcessingReaper(redis: host.redis, namespace: "resque", defaultQueue: "builds", maxAttempts: 3, retention: 3600, logger: Logger(label: "reaper"))
    }

    @Test func aDeadHostsJobsAreRequeuedOnceAndALiveHostsAreLeftAlone() async throws {
        try await TestHost.with { host in
            let dead = RedisKeys(namespace: "resque", host: "deadhost")
            let live = RedisKeys(namespace: "resque", host: "livehost")
            let raw = #"{"args":[{"config":{"script":"echo recovered"},"id":"orphan"}],"class":"X"}"#
            _ = try await host.redis.pipeline([
                ["RPUSH", dead.processing(vm: "worker-1"), raw],
                ["HSET", dead.job("orphan"), "state", "started", "queue", "builds"],
                ["RPUSH", live.processing(vm: "worker-1"), #"{"args":[{"id":"held","config":{"script":"true"}}],"class":"X"}"#],
                ["HSET", live.worker(vm: "worker-1"), "state", "busy"],
            ])
            // Two masters at once: the lock lets one of them requeue.
            async let one = reaper(host).reap()
            async let two = reaper(host).reap()
            let handled = try await one + two
            #expect(handled == 1)
            let queue = try await host.redis.send(["LRANGE", "resque:queue:builds", "0", "-1"]).array?.compactMap(\.string) ?? []
            #expect(queue.count == 1)
            #expect(queue.first?.contains("\"attempts\":1") == true)
            #expect(try await host.int(["LLEN", dead.processing(vm: "worker-1")]) == 0)
            #expect(try await host.int(["LLEN", live.processing(vm: "worker-1")]) == 1, "a live worker's job is its own")
            #expect(try await host.record("orphan")["state"] == "requeued")

            try await host.runBurst()
            #expect(try await host.record("orphan")["state"] == "passed")
            #expect(try await host.log("orphan").text.contains("deadhost:worker-1) died; the job was requeued (attempt 2 of 3)"))
        }
    }

    @Test func aJobWhoseWorkersKeepDyingEndsErrored() async throws {
        try await TestHost.with { host in
            let dead = RedisKeys(namespace: "resque", host: "deadhost")
            _ = try await host.redis.send(["RPUSH", dead.processing(vm: "worker-2"), #"{"args":[{"id":"unlucky","config":{"script":"true"}}],"attempts":2,"class":"X"}"#])
            #expect(try await reaper(host).reap() == 1)
            let record = try await host.record("unlucky")
            #expect(record["state"] == "errored")
            #expect(record["error"]?.contains("giving up after 3 attempts") == true)
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0)
            #expect(try await host.log("unlucky").isFinal)
        }
    }

    @Test func aHostKilledMidJobLosesNothing() async throws {
        try await TestHost.with { host in
            let marker = host.directory.path + "/completions"
            let buildPIDFile = host.directory.path + "/build.pid"
            let id = try await host.push(script: ["echo $$ > \(buildPIDFile)", "sleep 2", "echo done >> \(marker)"])
            let doomed = try host.spawnWorker()
            let started = try await eventually { try await host.record(id)["state"] == "started" }
            #expect(started)
            await doomed.kill9()
            // The whole host died: its builds (their own process groups) go too.
            if let text = try? String(contentsOfFile: buildPIDFile, encoding: .utf8), let build = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(-build, SIGKILL)
            }
            // Another host's master notices once the dead worker's heartbeat expires (3 intervals).
            let reaped = try await eventually(timeout: .seconds(10)) { try await reaper(host).reap() == 1 }
            #expect(reaped)
            try await host.runBurst(vm: "worker-1") { $0.host = "otherhost" }
            #expect(try await host.record(id)["state"] == "passed")
            #expect(try String(contentsOfFile: marker, encoding: .utf8) == "done\n", "completed exactly once")
        }
    }
}
