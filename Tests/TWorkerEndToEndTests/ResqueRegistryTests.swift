import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// The Resque worker registry read back by pyres (PyPI), a Resque client nobody here wrote.
@Suite(.tags(.endToEnd), .serialized)
struct ResqueRegistryTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// What `Tests/resque/pyres_client.py workers` prints.
    static func pyres(_ host: TestHost) async throws -> [String: Any] {
        let out = host.directory.path + "/pyres-\(UUID().uuidString).out"
        let process = try SpawnedProcess.spawn("/usr/bin/env", ["python3", packageRoot + "/Tests/resque/pyres_client.py", "workers",
                                                                "127.0.0.1:\(host.redisServer.port)"],
                                               environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], log: out)
        let status = await process.waitForExit(timeout: .seconds(60))
        if status == nil { await process.kill9() }
        let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        guard status == 0, let line = output.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw TestSupportError("pyres_client.py ended \(String(describing: status)): \(output)")
        }
        return object
    }

    static func workers(_ report: [String: Any]) -> [[String: Any]] { report["workers"] as? [[String: Any]] ?? [] }

    /// A worker on its way out leaves Resque's list and `tworker:workers` even while Redis
    /// answers `LOADING` to those writes for a moment: they are checked and retried.
    @Test func aWorkerLeavesTheWorkerListsThroughLoadingOnItsWayOut() async throws {
        try await TestHost.with { host in
            let (proxied, proxy) = try await host.throughLoadingProxy(rules: ["SREM:resque:workers=2", "SREM:tworker:workers=2"])
            defer { proxy.stop() }
            try proxied.writeConfig("")
            let worker = try proxied.spawnWorker(arguments: ["--burst"])
            #expect(await worker.waitForExit(timeout: .seconds(30)) == 0, "\(worker.output)")
            #expect(proxy.refusals.count == 4, "\(proxy.refusals)")
            #expect(try await host.int(["SCARD", "resque:workers"]) == 0)
            #expect(try await host.int(["HLEN", "tworker:resque_workers:resque"]) == 0)
            #expect(try await host.int(["SCARD", RedisKeys.workers]) == 0)
            #expect(try await host.int(["EXISTS", host.keys.worker(vm: "worker-1")]) == 0)
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func pyresListsTheWorkerItsJobAndStatsAndForgetsItAfterACleanExit() async throws {
        try await TestHost.with { host in
            let worker = try host.spawnWorker(arguments: ["--queue", "urgent,builds"])
            let id = "testhost:\(worker.pid):urgent,builds"
            #expect(try await eventually { try await host.int(["SISMEMBER", "resque:workers", id]) == 1 })
            let job = try await host.push(script: ["sleep 3"], queue: "builds")
            #expect(try await eventually { try await host.record(job)["state"] == "started" })

            let running = try await Self.pyres(host)
            let listed = Self.workers(running)
            try #require(listed.count == 1, "\(running)")
            #expect(listed[0]["id"] as? String == id)
            #expect(listed[0]["queues"] as? [String] == ["urgent", "builds"])
            #expect(listed[0]["state"] as? String == "working")
            #expect((listed[0]["started"] as? String)?.hasSuffix("+0000") == true)
            let current = try #require(listed[0]["job"] as? [String: Any])
            #expect(current["queue"] as? String == "builds")
            #expect((current["run_at"] as? String)?.hasSuffix("Z") == true)
            let payload = try #require(current["payload"] as? [String: Any])
            #expect(payload["class"] as? String == "Build")
            #expect(((payload["args"] as? [[String: Any]])?.first?["id"] as? String) == job)

            #expect(try await eventually(timeout: .seconds(20)) { try await host.record(job)["state"] == "passed" })
            try await host.push("not json", queue: "urgent")
            #expect(try await eventually { try await host.int(["LLEN", "resque:failed"]) == 1 })
            let idle = try await Self.pyres(host)
            let after = try #require(Self.workers(idle).first)
            #expect(after["state"] as? String == "idle")
            #expect((after["job"] as? [String: Any])?.isEmpty == true)
            #expect(after["processed"] as? Int == 1)
            #expect(after["failed"] as? Int == 1)
            let info = try #require(idle["info"] as? [String: Any])
            #expect(info["processed"] as? Int == 1)
            #expect(info["failed"] as? Int == 1)

            worker.signal(SIGQUIT)
            #expect(await worker.waitForExit(timeout: .seconds(20)) == 0)
            #expect(Self.workers(try await Self.pyres(host)).isEmpty)
            for key in ["resque:worker:\(id)", "resque:worker:\(id):started", "resque:stat:processed:\(id)", "resque:stat:failed:\(id)"] {
                #expect(try await host.int(["EXISTS", key]) == 0, "\(key)")
            }
            #expect(try await host.int(["GET", "resque:stat:processed"]) == 1, "Resque's global counters stay")
        }
    }

    /// A SIGKILLed worker stays listed until its heartbeat expires; then the next worker's
    /// start prunes it, as Resque's `prune_dead_workers` does, and leaves other programs' workers alone.
    @Test(.timeLimit(.minutes(2)))
    func aDeadWorkerIsPrunedOnceItsHeartbeatIsGone() async throws {
        try await TestHost.with { host in
            _ = try await host.redis.send(["SADD", "resque:workers", "otherhost:77:mailers"])
            let dead = try host.spawnWorker(vm: "worker-1")
            let deadID = "testhost:\(dead.pid):builds"
            #expect(try await eventually { try await host.int(["SISMEMBER", "resque:workers", deadID]) == 1 })
            await dead.kill9()
            // heartbeat.interval is 1 s in tests: the record expires after 3 s.
            #expect(try await eventually(timeout: .seconds(10)) { try await host.int(["EXISTS", host.keys.worker(vm: "worker-1")]) == 0 })
            let live = try host.spawnWorker(vm: "worker-2")
            let liveID = "testhost:\(live.pid):builds"
            #expect(try await eventually { try await host.int(["SISMEMBER", "resque:workers", liveID]) == 1 })
            let ids = Set(Self.workers(try await Self.pyres(host)).compactMap { $0["id"] as? String })
            #expect(ids == [liveID, "otherhost:77:mailers"])
            #expect(try await host.int(["EXISTS", "resque:worker:\(deadID):started"]) == 0)
            live.signal(SIGQUIT)
            #expect(await live.waitForExit(timeout: .seconds(20)) == 0)
        }
    }
}
