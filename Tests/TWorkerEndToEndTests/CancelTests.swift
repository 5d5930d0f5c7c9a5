import Foundation
import Logging
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// A local machine that takes a second to get ready, as a VM restored from its snapshot does.
private struct SlowToPrepareMachine: Machine {
    let inner: LocalMachine
    var name: String { inner.name }

    func prepare() async throws(InfrastructureError) {
        try? await Task.sleep(for: .seconds(1))
        try await inner.prepare()
    }

    func run(script: String, jobID: String, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(InfrastructureError) -> BuildExit {
        try await inner.run(script: script, jobID: jobID, output: output)
    }

    func release() async throws(InfrastructureError) { try await inner.release() }
}

@Suite(.tags(.endToEnd))
struct CancelTests {
    @Test func aQueuedJobIsTakenOffItsQueueAndNeverRuns() async throws {
        try await TestHost.with { host in
            let doomed = try await host.push(script: ["echo should-never-run"])
            let kept = try await host.push(script: ["echo kept"])
            let result = try await host.cli(["cancel", doomed, "--reason", "not needed any more", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 0, "\(result.err)")
            #expect(result.out.contains("removed from queue builds"))
            try await host.runBurst()
            let record = try await host.record(doomed)
            #expect(record["state"] == "cancelled")
            #expect(record["error"] == "not needed any more")
            let log = try await host.log(doomed)
            #expect(!log.text.contains("should-never-run"))
            #expect(log.isFinal)
            // The same numbered entries (`0-<n>`, field n) as every other log write.
            #expect(log.numbers == [1, 2], "\(log.entries)")
            #expect(try await host.record(kept)["state"] == "passed")
            #expect(try await host.events(for: doomed) == ["job:finished"])

            let again = try await host.cli(["cancel", doomed, "--env", "test", "--config-dir", host.configDir])
            #expect(again.status == 1)
            #expect(again.err.contains("already ended: cancelled"))
            let unknown = try await host.cli(["cancel", "no-such-job", "--env", "test", "--config-dir", host.configDir])
            #expect(unknown.status == 1)
        }
    }

    @Test(arguments: [true, false])
    func aRunningBuildIsKilledWithinTwoSecondsAndNeverRequeued(subscribed: Bool) async throws {
        try await TestHost.with { host in
            let pidFile = host.directory.path + "/build.pid"
            let id = try await host.push(script: ["echo $$ > \(pidFile); echo started", "sleep 30", "echo not-reached"])
            let worker = try host.makeWorker(subscribed: subscribed) { $0.fetchBlock = .milliseconds(100) }
            let running = Task { try await worker.run() }
            let started = try await eventually { try await host.log(id).text.contains("started") }
            #expect(started)
            let requested = ContinuousClock.now
            let result = try await host.cli(["cancel", id, "--reason", "superseded by a newer commit", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 0, "\(result.err)")
            let cancelled = try await eventually(timeout: .seconds(2)) { try await host.record(id)["state"] == "cancelled" }
            #expect(cancelled, "cancelled within 2 s (\(subscribed ? "pub/sub" : "polling only"))")
            #expect(ContinuousClock.now - requested < .seconds(3))
            let log = try await host.log(id)
            #expect(log.text.contains("The job was cancelled: superseded by a newer commit"))
            #expect(!log.text.contains("not-reached"))
            #expect(log.isFinal)
            #expect(try await host.record(id)["error"] == "superseded by a newer commit")
            #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 0, "never requeued")
            #expect(try await host.int(["LLEN", host.keys.processing(vm: "worker-1")]) == 0)
            let buildPID = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(await eventually(timeout: .seconds(3)) { processIsGone(buildPID) }, "the build's processes are gone")

            // The worker goes on.
            let next = try await host.push(script: ["echo next"])
            #expect(try await eventually { try await host.record(next)["state"] == "passed" })
            worker.requestStop(.graceful)
            try await running.value
        }
    }
}

extension CancelTests {
    /// A cancel that lands while the machine gets ready stops the job before its build starts,
    /// however short the build (shorter than any poll).
    @Test func aCancelBetweenTakingAndStartingIsHonouredAtOnce() async throws {
        try await TestHost.with { host in
            let marker = host.directory.path + "/built"
            let id = try await host.push(script: ["touch \(marker)", "echo built"])
            let worker = try host.makeWorker(machine: SlowToPrepareMachine(inner: try host.localMachine()), logLevel: .critical) {
                $0.fetchBlock = .milliseconds(100)
            }
            let running = Task { try await worker.run() }
            let received = try await eventually { try await host.record(id)["state"] == "received" }
            #expect(received)
            let result = try await host.cli(["cancel", id, "--reason", "changed my mind", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 0, "\(result.err)")
            #expect(try await eventually { try await host.record(id)["state"] == "cancelled" })
            #expect(!FileManager.default.fileExists(atPath: marker), "the build never started")
            #expect(try await host.events(for: id) == ["job:received", "job:finished"])
            #expect(try await host.log(id).isFinal)
            worker.requestStop(.graceful)
            try await running.value
        }
    }

    /// The cancel mark ends with the run it cancelled: the same id queued again runs.
    @Test func aCancelDoesNotOutliveItsJobsRun() async throws {
        try await TestHost.with { host in
            let id = try await host.push(script: ["echo first-run", "sleep 30"])
            let worker = try host.makeWorker { $0.fetchBlock = .milliseconds(100) }
            let running = Task { try await worker.run() }
            #expect(try await eventually { try await host.log(id).text.contains("first-run") })
            let result = try await host.cli(["cancel", id, "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 0, "\(result.err)")
            #expect(try await eventually { try await host.record(id)["state"] == "cancelled" })
            #expect(try await host.int(["EXISTS", host.keys.cancel(id)]) == 0)

            try await host.push(id: id, script: ["echo second-run"])
            let passed = try await eventually { try await host.record(id)["state"] == "passed" }
            let record = try await host.record(id)
            #expect(passed, "\(record)")
            #expect(try await host.log(id).text.contains("second-run"))
            worker.requestStop(.graceful)
            try await running.value
        }
    }
}

extension CancelTests {
    /// A running job's cancel that its worker never acted on (it died first) ends with the run:
    /// the reaper that gives the job up drops the mark, so the id pushed again (as any Resque
    /// client pushes, straight onto the queue) runs.
    @Test func aCancelLeftByADeadWorkersRunDoesNotCancelTheNextRun() async throws {
        try await TestHost.with { host in
            let pidFile = host.directory.path + "/build.pid"
            let id = try await host.push(script: ["echo $$ > \(pidFile); echo first-run", "sleep 30"])
            let worker = try host.spawnWorker()
            defer { if !processIsGone(worker.pid) { kill(-worker.pid, SIGKILL); kill(worker.pid, SIGKILL) } }
            #expect(try await eventually { try await host.log(id).text.contains("first-run") }, "\(worker.output)")
            // Frozen, the worker cannot act on the cancel; then it dies with the mark still set.
            worker.signal(SIGSTOP)
            let result = try await host.cli(["cancel", id, "--reason", "stale", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 0, "\(result.err)")
            #expect(try await host.int(["EXISTS", host.keys.cancel(id)]) == 1)
            await worker.kill9()
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let build = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(-build, SIGKILL)
            }
            // Once the heartbeat expires, a master's reaper gives the job up (one attempt allowed).
            let reaper = ProcessingReaper(redis: host.redis, namespace: "resque", defaultQueue: "builds", maxAttempts: 1, retention: 3600,
                                          logger: Logger(label: "reaper"))
            #expect(try await eventually(timeout: .seconds(10)) { try await reaper.reap() == 1 })
            #expect(try await host.record(id)["state"] == "errored")
            #expect(try await host.int(["EXISTS", host.keys.cancel(id)]) == 0, "the mark ended with the run")

            try await host.push(id: id, script: ["echo second-run"])
            try await host.runBurst()
            let record = try await host.record(id)
            #expect(record["state"] == "passed", "\(record)")
            #expect(try await host.log(id).text.contains("second-run"))
        }
    }

    /// `tworker enqueue` starts a new run: a mark left by an earlier run of the id (or by a
    /// cancel of an entry filed as failed) never cancels it.
    @Test func anEnqueueStartsClearOfAnEarlierRunsCancel() async throws {
        try await TestHost.with { host in
            // A malformed entry naming a cancelled id is filed as failed; the mark goes with it.
            _ = try await host.redis.send(["SET", host.keys.cancel("bad-slug"), "stale"])
            try await host.push(#"{"class":"X","args":[{"id":"bad-slug","repository":{"slug":"a;b","source_url":"x"},"commit":"abcdef0","branch":"main"}]}"#)
            try await host.runBurst()
            #expect(try await host.record("bad-slug")["state"] == "errored")
            #expect(try await host.int(["EXISTS", host.keys.cancel("bad-slug")]) == 0)

            _ = try await host.redis.send(["SET", host.keys.cancel("again"), "stale"])
            let enqueued = try await host.cli(["enqueue", "--file", "-", "--env", "test", "--config-dir", host.configDir],
                                              stdin: #"{"id":"again","config":{"script":"echo rerun"}}"#)
            #expect(enqueued.status == 0, "\(enqueued.err)")
            #expect(try await host.int(["EXISTS", host.keys.cancel("again")]) == 0)
            try await host.runBurst()
            let record = try await host.record("again")
            #expect(record["state"] == "passed", "\(record)")
            #expect(try await host.log("again").text.contains("rerun"))
        }
    }
}

@Suite(.tags(.endToEnd))
struct PauseAndAbortTests {
    @Test func usr1AbortsTheRunningJobWhichIsRequeuedAndTheWorkerGoesOn() async throws {
        try await TestHost.with { host in
            let runs = host.directory.path + "/runs"
            let id = try await host.push(script: ["echo run >> \(runs)", "if [ $(wc -l < \(runs)) -lt 2 ]; then sleep 30; fi", "echo done"])
            let worker = try host.spawnWorker()
            let first = await eventually { (try? String(contentsOfFile: runs, encoding: .utf8)) != nil }
            #expect(first, "\(worker.output)")
            try await Task.sleep(for: .milliseconds(200))
            worker.signal(SIGUSR1)
            let passed = try await eventually(timeout: .seconds(15)) { try await host.record(id)["state"] == "passed" }
            #expect(passed, "\(worker.output)")
            #expect(try await host.events(for: id) == ["job:received", "job:started", "job:requeued", "job:received", "job:started", "job:finished"])
            #expect(try await host.log(id).text.contains("aborted by the operator (USR1)"))
            #expect(try await host.record(id)["attempts"] == "1", "an operator's abort is not the job's attempt")
            #expect(kill(worker.pid, 0) == 0, "the worker goes on")
            worker.signal(SIGTERM)
            #expect(await worker.waitForExit(timeout: .seconds(10)) == 0)
        }
    }

    @Test func usr2PausesAndContResumes() async throws {
        try await TestHost.with { host in
            let worker = try host.spawnWorker()
            let ready = try await eventually { try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "state"]).string == "idle" }
            #expect(ready, "\(worker.output)")
            worker.signal(SIGUSR2)
            let paused = try await eventually { try await host.redis.send(["HGET", host.keys.worker(vm: "worker-1"), "state"]).string == "paused" }
            #expect(paused)
            let id = try await host.push(script: ["echo after-resume"])
            try await Task.sleep(for: .milliseconds(1500))
            #expect(try await host.record(id)["state"] == nil, "a paused worker takes no job")
            worker.signal(SIGCONT)
            let ran = try await eventually { try await host.record(id)["state"] == "passed" }
            #expect(ran, "\(worker.output)")
            worker.signal(SIGTERM)
            #expect(await worker.waitForExit(timeout: .seconds(10)) == 0)
        }
    }
}
