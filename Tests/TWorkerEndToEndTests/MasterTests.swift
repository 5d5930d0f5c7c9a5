import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct MasterSignalTests {
    @Test func aKilledWorkerIsReplacedWithinTwoSecondsAndItsJobCompletesExactlyOnce() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 3)
            try await host.withMaster(workers: 3) { master in
                let marker = host.directory.path + "/runs.txt"
                let id = try await host.push(script: ["echo started >> \(marker)", "sleep 2", "echo completed >> \(marker)"])
                let running = try await eventually { try await host.record(id)["state"] == "started" }
                try #require(running, "\(master.output)")
                let vm = try #require(try await host.record(id)["vm"])
                let victim = try #require(master.workerPIDs()[vm])
                kill(victim, SIGKILL)
                let killedAt = ContinuousClock.now
                let replaced = await eventually(timeout: .seconds(2)) {
                    guard let pid = master.workerPIDs()[vm] else { return false }
                    return pid != victim && !processIsGone(pid)
                }
                #expect(replaced, "\(vm) replaced within 2 s:\n\(master.output)")
                #expect(ContinuousClock.now - killedAt < .seconds(2))
                let done = try await eventually(timeout: .seconds(20)) { try await host.record(id)["state"] == "passed" }
                #expect(done, "\(master.output)")
                #expect(try await host.record(id)["attempts"] == "2")
                let runs = (try? String(contentsOfFile: marker, encoding: .utf8)) ?? ""
                #expect(runs.components(separatedBy: "completed").count - 1 == 1, "completed exactly once: \(runs)")
                #expect(try await host.int(["GET", "resque:stat:processed"]) == 1)
                #expect(!processIsGone(master.pid), "the master lives on")
            }
        }
    }

    @Test func quitLetsTheRunningJobFinishThenEverythingExits() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 3)
            try await host.withMaster(workers: 3) { master in
                let id = try await host.push(script: ["echo running", "sleep 1", "echo finished-anyway"])
                let running = try await eventually { try await host.log(id).text.contains("running") }
                try #require(running)
                let children = Array(master.workerPIDs().values)
                #expect(children.count == 3)
                master.signal(SIGQUIT)
                let status = await master.process.waitForExit(timeout: .seconds(20))
                #expect(status == 0, "\(master.output)")
                #expect(try await host.record(id)["state"] == "passed")
                #expect(try await host.log(id).text.contains("finished-anyway"))
                #expect(children.allSatisfy(processIsGone), "every worker exited")
                #expect(!FileManager.default.fileExists(atPath: master.paths.socket), "socket removed")
                #expect(!FileManager.default.fileExists(atPath: master.paths.pidFile), "pidfile removed")
            }
        }
    }

    @Test func termStopsTheBuildAndRequeuesTheJobAtTheHead() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 3)
            try await host.withMaster(workers: 3) { master in
                let id = try await host.push(script: ["echo running", "sleep 30"])
                let running = try await eventually { try await host.log(id).text.contains("running") }
                try #require(running)
                let children = Array(master.workerPIDs().values)
                master.signal(SIGTERM)
                let status = await master.process.waitForExit(timeout: .seconds(15))
                #expect(status == 0, "\(master.output)")
                let left = try await host.workersLeftBehind()
                #expect(left.members.isEmpty && left.records.isEmpty, "\(left)")
                #expect(try await host.record(id)["state"] == "requeued")
                let queue = try await host.redis.send(["LRANGE", "resque:queue:builds", "0", "-1"]).array?.compactMap(\.string) ?? []
                #expect(queue.count == 1 && queue.first?.contains(id) == true, "\(queue)")
                #expect(children.allSatisfy(processIsGone))
            }
        }
    }

    @Test func aSecondTermKillsTheWorkersAndExitsAtOnce() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                let pidFile = host.directory.path + "/build.pid"
                let id = try await host.push(script: ["echo $$ > \(pidFile)", "echo running", "sleep 30"])
                let running = try await eventually { try await host.log(id).text.contains("running") }
                try #require(running)
                let children = Array(master.workerPIDs().values)
                // Wedged workers cannot act on the first TERM, so the master has to wait for them...
                for child in children { kill(child, SIGSTOP) }
                master.signal(SIGTERM)
                try await Task.sleep(for: .milliseconds(500))
                #expect(!processIsGone(master.pid), "after one TERM the master waits for its workers")
                // ...until the second TERM: SIGKILL everything, exit at once.
                master.signal(SIGTERM)
                let status = await master.process.waitForExit(timeout: .seconds(3))
                #expect(status == 1, "\(master.output)")
                // The killed workers could not remove their heartbeats: the master did before it exited.
                let left = try await host.workersLeftBehind()
                #expect(left.members.isEmpty && left.records.isEmpty, "\(left)")
                let gone = await eventually(timeout: .seconds(3)) { children.allSatisfy(processIsGone) }
                #expect(gone, "workers killed")
                let build = try #require((try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
                let buildGone = await eventually(timeout: .seconds(3)) { processIsGone(build) }
                #expect(buildGone, "the build went with its worker")
                #expect(try await host.int(["LLEN", host.keys.processing(vm: try #require(try await host.record(id)["vm"]))]) == 1,
                        "the job stays in the processing list for recovery")
            }
        }
    }

    /// The master's removal of the workers it killed meets `LOADING` (a proxy answers it to the
    /// removal script): it is retried, and done before the master exits.
    @Test func killedWorkersAreForgottenThroughLoadingBeforeTheMasterExits() async throws {
        try await TestHost.with { host in
            let (proxied, proxy) = try await host.throughLoadingProxy(rules: ["EVAL:if redis.call('HGET', KEYS[1], 'pid')=2"])
            defer { proxy.stop() }
            try proxied.writeMasterConfig(workers: 2)
            try await proxied.withMaster(workers: 2) { master in
                let children = Array(master.workerPIDs().values)
                for child in children { kill(child, SIGSTOP) }
                master.signal(SIGTERM)
                try await Task.sleep(for: .milliseconds(300))
                master.signal(SIGTERM)
                #expect(await master.process.waitForExit(timeout: .seconds(10)) == 1, "\(master.output)")
                #expect(proxy.refusals.count == 2, "\(proxy.refusals)")
                let left = try await host.workersLeftBehind()
                #expect(left.members.isEmpty && left.records.isEmpty, "\(left)")
            }
        }
    }

    @Test func usr2PausesAndContResumes() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 3)
            try await host.withMaster(workers: 3) { master in
                master.signal(SIGUSR2)
                let paused = await master.waitForWorkers(3, state: "paused", timeout: .seconds(5))
                #expect(paused, "\(master.output)")
                #expect(master.status()?.paused == true)
                let id = try await host.push(script: ["true"])
                try await Task.sleep(for: .milliseconds(1500))
                #expect(try await host.record(id)["state"] == nil, "no job taken while paused")
                #expect(try await host.int(["LLEN", "resque:queue:builds"]) == 1)
                master.signal(SIGCONT)
                let ran = try await eventually { try await host.record(id)["state"] == "passed" }
                #expect(ran, "\(master.output)")
                #expect(master.status()?.paused == false)
                let busyAgain = try await host.push(script: ["true"])
                let ranAgain = try await eventually { try await host.record(busyAgain)["state"] == "passed" }
                #expect(ranAgain)
                let idle = await master.waitForWorkers(3, state: "idle", timeout: .seconds(3))
                #expect(idle, "after CONT every worker's heartbeat says idle again")
            }
        }
    }

    @Test func hupReloadsTheConfigShrinksTheWorkersAndKeepsTheOldConfigWhenInvalid() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 3)
            try await host.withMaster(workers: 3) { master in
                let before = master.workerPIDs()
                try host.writeMasterConfig(workers: 2)
                master.signal(SIGHUP)
                let reloaded = await eventually {
                    let now = master.workerPIDs()
                    return now.count == 2 && Set(now.keys) == ["worker-1", "worker-2"]
                        && now.allSatisfy { before[$0.key] != $0.value } && master.status()?.workers.allSatisfy { $0.state == "idle" } == true
                }
                #expect(reloaded, "two fresh workers:\n\(master.output)")
                #expect(before.values.allSatisfy(processIsGone), "the old workers exited")
                #expect(!processIsGone(master.pid), "same master pid")
                #expect(master.status()?.master?.pid == master.pid)

                let kept = master.workerPIDs()
                try host.writeMasterConfig(workers: 0)
                master.signal(SIGHUP)
                let complained = await eventually(timeout: .seconds(5)) { master.output.contains("keeping the old one") }
                #expect(complained, "\(master.output)")
                #expect(master.output.contains("vms.count: must be between 1 and 64"))
                try await Task.sleep(for: .milliseconds(500))
                #expect(!processIsGone(master.pid))
                #expect(master.workerPIDs() == kept, "nothing restarted")
            }
        }
    }

    @Test func aHupThatChangesRedisOrStateDirIsRefusedAndTheWorkersKeepTheMastersValues() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                let before = master.workerPIDs()
                let file = host.configDir + "/worker.test.yml"
                let original = try String(contentsOfFile: file, encoding: .utf8)
                try original.replacingOccurrences(of: "redis:\n", with: "redis:\n  namespace: elsewhere\n")
                    .write(toFile: file, atomically: true, encoding: .utf8)
                master.signal(SIGHUP)
                let refused = await eventually(timeout: .seconds(5)) {
                    master.output.contains("HUP: redis.namespace changed: that needs a restart of the master (tworker stop, then tworker start); keeping the old config")
                }
                #expect(refused, "\(master.output)")
                try await Task.sleep(for: .milliseconds(500))
                #expect(master.workerPIDs() == before, "nothing restarted")

                // A worker that dies now comes back on the master's namespace, not the file's:
                // its heartbeat is where the master (and its reaper) look.
                kill(try #require(before["worker-1"]), SIGKILL)
                let back = await eventually(timeout: .seconds(15)) {
                    let now = master.workerPIDs()
                    return now["worker-1"] != nil && now["worker-1"] != before["worker-1"]
                        && master.worker("worker-1")?.state == "idle"
                }
                #expect(back, "\(master.output)")
                let id = try await host.push(script: ["echo still-here"])
                #expect(try await eventually(timeout: .seconds(15)) { try await host.record(id)["state"] == "passed" }, "\(master.output)")

                try original.replacingOccurrences(of: "state_dir: \(host.stateDir)", with: "state_dir: \(host.directory.path)/other")
                    .write(toFile: file, atomically: true, encoding: .utf8)
                master.signal(SIGHUP)
                let refusedAgain = await eventually(timeout: .seconds(5)) {
                    master.output.contains("HUP: state_dir changed: that needs a restart of the master")
                }
                #expect(refusedAgain, "\(master.output)")
            }
        }
    }

    @Test func ttinAddsAWorkerAndTtouStopsTheHighest() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                let before = master.workerPIDs()
                master.signal(SIGTTIN)
                let grown = await master.waitForWorkers(3)
                #expect(grown, "\(master.output)")
                let third = master.workerPIDs()["worker-3"]
                #expect(third != nil)
                master.signal(SIGTTOU)
                let shrunk = await eventually { master.workerPIDs().keys.sorted() == ["worker-1", "worker-2"] && master.status()?.workers.count == 2 }
                #expect(shrunk, "\(master.output)")
                if let third { #expect(processIsGone(third)) }
                #expect(master.workerPIDs() == before, "the others untouched")
                #expect(!processIsGone(master.pid), "the master survived TTIN/TTOU")
            }
        }
    }
}

@Suite(.tags(.endToEnd))
struct MasterWatchdogTests {
    @Test func aWorkerAboveTheMemoryLimitIsReplacedAfterItsJob() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            // 1 MiB: every worker is above it; checks every 0.3 s.
            try await host.withMaster(workers: 1, environment: ["TWORKER_WORKER_MEMORY": "1", "TWORKER_WATCHDOG_INTERVAL": "0.3"], waitIdle: false) { master in
                let id = try await host.push(script: ["echo running", "sleep 2", "echo done-anyway"])
                let running = try await eventually(timeout: .seconds(15)) { try await host.log(id).text.contains("running") }
                try #require(running, "\(master.output)")
                let first = try #require(master.workerPIDs()["worker-1"])
                let finished = try await eventually(timeout: .seconds(15)) { try await host.record(id)["state"] == "passed" }
                #expect(finished, "the job finished, not interrupted:\n\(master.output)")
                #expect(try await host.record(id)["attempts"] == "1")
                #expect(try await host.log(id).text.contains("done-anyway"))
                let replaced = await eventually { master.workerPIDs()["worker-1"].map { $0 != first } ?? false }
                #expect(replaced)
                #expect(master.output.contains("above limits.worker_memory"))
            }
        }
    }

    @Test func aWedgedWorkerPastTheHardLimitIsKilledAndItsJobRecovered() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1, "timeouts:\n  hard_limit: 2\n")
            try await host.withMaster(workers: 1, environment: ["TWORKER_STUCK_GRACE": "0.5", "TWORKER_WATCHDOG_INTERVAL": "0.2"]) { master in
                let id = try await host.push(script: ["echo running", "sleep 30"])
                let running = try await eventually { try await host.log(id).text.contains("running") }
                try #require(running)
                let wedged = try #require(master.workerPIDs()["worker-1"])
                kill(wedged, SIGSTOP)  // too wedged to enforce its own hard limit
                let killed = await eventually(timeout: .seconds(6)) { processIsGone(wedged) }
                #expect(killed, "\(master.output)")
                #expect(master.output.contains("past timeouts.hard_limit"))
                // The replacement finds the job in its processing list: requeued, run again (and
                // this time stopped by the worker's own hard limit).
                let recovered = try await eventually(timeout: .seconds(15)) { try await host.int(["HGET", host.keys.job(id), "attempts"]) >= 2 }
                #expect(recovered, "\(master.output)")
                let replacement = master.workerPIDs()["worker-1"]
                #expect(replacement != nil && replacement != wedged)
            }
        }
    }
}

@Suite(.tags(.endToEnd))
struct MasterControlTests {
    @Test func stopRestartPauseResumeThroughTheCLI() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                var result = try await host.control(["pause", "worker-1"])
                #expect(result.status == 0, "\(result.err)")
                let onePaused = await eventually { master.worker("worker-1")?.state == "paused" }
                #expect(onePaused)
                #expect(master.worker("worker-2")?.state == "idle")
                // worker-1 resumed, worker-2 paused: the next job can only go to worker-1.
                result = try await host.control(["resume", "worker-1"])
                #expect(result.status == 0)
                result = try await host.control(["pause", "worker-2"])
                let otherPaused = await eventually { master.worker("worker-2")?.state == "paused" }
                #expect(otherPaused)
                let first = try await host.push(script: ["true"])
                let firstRan = try await eventually { try await host.record(first)["state"] == "passed" }
                #expect(firstRan, "\(master.output)")
                #expect(try await host.record(first)["vm"] == "worker-1")

                result = try await host.control(["pause"])
                #expect(result.out.contains("paused every worker"))
                let allPaused = await master.waitForWorkers(2, state: "paused", timeout: .seconds(5))
                #expect(allPaused)
                #expect(master.status()?.paused == true)
                let second = try await host.push(script: ["true"])
                try await Task.sleep(for: .milliseconds(1200))
                #expect(try await host.record(second)["state"] == nil, "nothing taken while paused")
                result = try await host.control(["resume"])
                #expect(result.status == 0)
                let secondRan = try await eventually { try await host.record(second)["state"] == "passed" }
                #expect(secondRan)
                #expect(master.status()?.paused == false)

                let before = master.workerPIDs()
                result = try await host.control(["stop", "worker-2"])
                #expect(result.status == 0, "\(result.err)")
                let stopped = await eventually { master.worker("worker-2")?.state == "stopped" }
                #expect(stopped, "\(master.output)")
                if let old = before["worker-2"] { #expect(processIsGone(old)) }
                try await Task.sleep(for: .milliseconds(2500))
                #expect(master.worker("worker-2")?.state == "stopped", "not restarted by itself")
                #expect(master.workerPIDs()["worker-2"] == nil)

                result = try await host.control(["restart", "worker-2"])
                #expect(result.status == 0)
                let back = await master.waitForWorkers(2, states: ["idle", "paused"])
                #expect(back)
                #expect(master.worker("worker-2")?.state == "idle")

                let beforeRestart = master.workerPIDs()
                result = try await host.control(["restart"])
                #expect(result.status == 0)
                let restarted = await eventually {
                    let now = master.workerPIDs()
                    return now.count == 2 && now.allSatisfy { beforeRestart[$0.key] != $0.value }
                        && master.status()?.workers.allSatisfy { $0.state == "idle" } == true
                }
                #expect(restarted, "\(master.output)")

                result = try await host.control(["stop", "worker-9"])
                #expect(result.status == 1)
                #expect(result.err.contains("no worker worker-9"))

                let id = try await host.push(script: ["echo running", "sleep 30"])
                let running = try await eventually { try await host.log(id).text.contains("running") }
                try #require(running)
                result = try await host.control(["stop", "--now", "--wait"])
                #expect(result.status == 0, "\(result.err)")
                #expect(result.out.contains("stopping now"))
                let exit = await master.process.waitForExit(timeout: .seconds(10))
                #expect(exit == 0)
                #expect(try await host.record(id)["state"] == "requeued")

                result = try await host.control(["stop"])
                #expect(result.status == 1)
                #expect(result.err.contains("no master running"))
            }
        }
    }

    @Test func aSecondStartIsRefusedNamingThePid() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            try await host.withMaster(workers: 1) { master in
                let second = try await host.cli(["start", "--env", "test", "--config-dir", host.configDir], environment: ["TWORKER_ALLOW_ROOT": "1"])
                #expect(second.status == 1)
                #expect(second.err.contains("already running"))
                #expect(second.err.contains("pid \(master.pid)"), "\(second.err)")
                #expect(!processIsGone(master.pid))
                #expect(master.workerPIDs().count == 1)
            }
        }
    }

    @Test func aNewMasterStopsTheWorkersOfAKilledOne() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            let first = try host.spawnMaster()
            var orphans: [Int32] = []
            do {
                let up = await first.waitForWorkers(2)
                try #require(up, "\(first.output)")
                orphans = Array(first.workerPIDs().values)
                kill(first.pid, SIGKILL)  // the master only: its workers run in their own sessions
                _ = await first.process.waitForExit(timeout: .seconds(5))
                #expect(orphans.count == 2)
                try await host.withMaster(workers: 2) { second in
                    // Orphans notice their master is gone and exit; a new master stops any that linger.
                    let gone = await eventually(timeout: .seconds(5)) { orphans.allSatisfy(processIsGone) }
                    #expect(gone, "the old workers are gone:\n\(second.output)")
                    #expect(Set(second.workerPIDs().values).isDisjoint(with: orphans))
                }
            } catch {
                for pid in orphans where !processIsGone(pid) { ProcessProbe.killTree(pid) }
                await first.cleanUp()
                throw error
            }
            for pid in orphans where !processIsGone(pid) { ProcessProbe.killTree(pid) }
            await first.cleanUp()
        }
    }

    @Test func rootWithoutAUserIsRefused() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            guard geteuid() == 0 else { return }
            let result = try await host.cli(["start", "--env", "test", "--config-dir", host.configDir])
            #expect(result.status == 1)
            #expect(result.err.contains("refusing to run workers as root"), "\(result.err)")
            #expect(result.err.split(separator: "\n").count == 1, "one line")
        }
    }

    @Test func statusWithAndWithoutAMaster() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.push(script: ["true"], queue: "other")
            _ = try await host.redis.send(["RPUSH", "resque:failed", "{}"])
            var result = try await host.control(["status"])
            #expect(result.status == 0, "\(result.err)")
            #expect(result.out.hasPrefix("no master running on this host; from Redis:"), "\(result.out)")
            #expect(result.out.contains("queues: other 1"))
            #expect(result.out.contains("failed: 1"))
            result = try await host.control(["status", "--json"])
            let offline = try JSONDecoder().decode(StatusReport.self, from: Data(result.out.utf8))
            #expect(offline.source == .redis && offline.master == nil)
            #expect(offline.queues == [.init(name: "other", depth: 1)])

            try await host.withMaster(workers: 2) { master in
                result = try await host.control(["status", "--json"])
                #expect(result.status == 0, "\(result.err)")
                let report = try JSONDecoder().decode(StatusReport.self, from: Data(result.out.utf8))
                #expect(report.source == .master)
                #expect(report.master?.pid == master.pid)
                #expect(report.workers.map(\.vm) == ["worker-1", "worker-2"])
                #expect(report.workers.allSatisfy { $0.state == "idle" && $0.pid != nil && ($0.rssKiB ?? 0) > 0 })
                #expect(report.failed == 1)
                result = try await host.control(["status"])
                #expect(result.out.hasPrefix("master \(master.pid) on testhost, up "), "\(result.out)")
                #expect(result.out.contains("worker-2  idle"))
                // Redis alone also knows the workers (while the master runs), by heartbeat.
                let redisOnly = try await StatusReport.fromRedis(keys: host.keys, redis: host.redis)
                #expect(redisOnly.workers.map(\.vm).sorted() == ["worker-1", "worker-2"])
                #expect(Set(redisOnly.workers.compactMap(\.pid)) == Set(master.workerPIDs().values))
            }
        }
    }
}
