import Foundation
import RedisClient
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

    /// A worker starting while Redis still loads its dataset waits for it: every read and write
    /// of its start-up recovery is retried, so it neither exits nor runs the job twice. The
    /// proxy puts the `LOADING` replies on the recovery's read of the job's record.
    @Test func aWorkerStartingWhileRedisAnswersLoadingRecoversItsJobAndRunsItOnce() async throws {
        try await TestHost.with { host in
            let marker = host.directory.path + "/runs"
            let raw = #"{"class":"Build","args":[{"id":"left","config":{"script":"echo ran >> \#(marker)"}}]}"#
            _ = try await host.redis.pipeline([["RPUSH", host.keys.processing(vm: "worker-1"), raw],
                                               ["HSET", host.keys.job("left"), "state", "started", "queue", "builds", "attempts", "1"]])
            let (proxied, proxy) = try await host.throughLoadingProxy(rules: ["HGET:tworker:job:=3"])
            defer { proxy.stop() }
            try proxied.writeConfig("")
            let worker = try proxied.spawnWorker(arguments: ["--burst"])
            let status = await worker.waitForExit(timeout: .seconds(30))
            #expect(status == 0, "\(worker.output)")
            #expect(proxy.refusals.count == 3, "the recovery met LOADING: \(proxy.refusals)")
            let record = try await host.record("left")
            #expect(record["state"] == "passed", "\(record)")
            #expect(record["attempts"] == "2")
            #expect(try String(contentsOfFile: marker, encoding: .utf8) == "ran\n", "ran once")
            #expect(try await host.events(for: "left") == ["job:requeued", "job:received", "job:started", "job:finished"])
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
        }
    }

    /// A running worker whose processing list holds an entry it does not know about (a take
    /// whose reply was lost) runs that entry before it takes anything new.
    @Test func aJobHeldInARunningWorkersProcessingListRunsBeforeAnyNewOne() async throws {
        try await TestHost.with { host in
            let worker = try host.makeWorker { $0.fetchBlock = .milliseconds(100) }
            let running = Task { try await worker.run() }
            let idle = try await eventually { try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "state"]).string == "idle" }
            #expect(idle)
            let held = #"{"class":"Build","args":[{"id":"held","config":{"script":"echo held-ran"}}]}"#
            _ = try await host.redis.pipeline([["HSET", host.keys.job("held"), "state", "received", "queue", "builds"],
                                               ["RPUSH", host.keys.processing(vm: "worker-1"), held]])
            let next = try await host.push(script: ["echo next-ran"])
            let done = try await eventually(timeout: .seconds(10)) {
                let held = try await host.record("held")["state"], queued = try await host.record(next)["state"]
                return held == "passed" && queued == "passed"
            }
            let records = (try await host.record("held"), try await host.record(next))
            #expect(done, "\(records)")
            #expect(try await host.log("held").text.contains("held-ran"))
            // One job at a time: the held one ended before the new one was taken.
            let order = (try await host.redis.send(["XRANGE", RedisKeys.events, "-", "+"]).array ?? []).compactMap { entry -> String? in
                let fields = entry.array?.last?.array?.compactMap(\.string) ?? []
                guard let type = fields.firstIndex(of: "type"), let id = fields.firstIndex(of: "id") else { return nil }
                return "\(fields[id + 1]) \(fields[type + 1])"
            }
            #expect(order == ["held job:received", "held job:started", "held job:finished",
                              "\(next) job:received", "\(next) job:started", "\(next) job:finished"], "\(order)")
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            worker.requestStop(.graceful)
            try await running.value
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

    /// SIGKILL leaves a build (in its own session) running; the worker's next start kills it
    /// before the job runs again, so a silent `sleep 600; ./deploy` never finishes alongside.
    @Test func aKilledWorkersBuildDiesBeforeItsJobRunsAgain() async throws {
        try await TestHost.with { host in
            let pidFile = host.directory.path + "/first-build.pid"
            let deployed = host.directory.path + "/deployed"
            let id = try await host.push(script: [
                "if [ ! -f \(pidFile) ]; then echo $$ > \(pidFile); sleep 600; echo late >> \(deployed); fi", "echo second-run",
            ])
            let first = try host.spawnWorker()
            #expect(await eventually { FileManager.default.fileExists(atPath: pidFile) }, "\(first.output)")
            try await Task.sleep(for: .milliseconds(200))
            let buildPID = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            await first.kill9()
            #expect(kill(buildPID, 0) == 0, "SIGKILL of the worker alone leaves its build running")

            let second = try host.spawnWorker(arguments: ["--burst"])
            #expect(await second.waitForExit(timeout: .seconds(30)) == 0, "\(second.output)")
            #expect(await eventually(timeout: .seconds(3)) { processIsGone(buildPID) }, "the first build was killed")
            #expect(try await host.record(id)["state"] == "passed")
            #expect(try await host.record(id)["attempts"] == "2")
            #expect(!FileManager.default.fileExists(atPath: deployed))
        }
    }

    /// A killed worker never says goodbye: its entry in `tworker:workers` goes once its
    /// heartbeat record expires (three intervals), swept by any live worker's beat.
    @Test func aDeadWorkersEntryLeavesTheWorkerSet() async throws {
        try await TestHost.with { host in
            let dead = try host.spawnWorker(vm: "worker-1")
            let member = host.keys.workerMember(vm: "worker-1")
            let registered = try await eventually { try await host.redis.send(["SISMEMBER", RedisKeys.workers, member]).int == 1 }
            #expect(registered, "\(dead.output)")
            await dead.kill9()
            let alive = try host.spawnWorker(vm: "worker-2")
            let gone = try await eventually(timeout: .seconds(10)) {
                try await host.redis.send(["SISMEMBER", RedisKeys.workers, member]).int == 0
            }
            #expect(gone, "the dead worker's entry left tworker:workers")
            #expect(try await host.redis.send(["SISMEMBER", RedisKeys.workers, host.keys.workerMember(vm: "worker-2")]).int == 1)
            alive.signal(SIGTERM)
            #expect(await alive.waitForExit(timeout: .seconds(10)) == 0)
        }
    }
}
