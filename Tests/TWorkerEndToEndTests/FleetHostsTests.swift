import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// `tworker hosts`, `drain`, `undrain` against a real redis-server and two real masters sharing
/// it as two hosts (`testhost`, `otherhost`), each with its own config and state.
@Suite(.tags(.endToEnd))
struct FleetHostsTests {
    /// A second host's config dir: the test config with another `host`, state dir and HTTP port.
    static func writeOtherHost(_ host: TestHost, name: String = "otherhost", workers: Int = 1) throws -> String {
        let dir = host.directory.path + "/config-\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let text = try String(contentsOfFile: host.configDir + "/worker.test.yml", encoding: .utf8)
            .replacingOccurrences(of: "host: testhost", with: "host: \(name)")
            .replacingOccurrences(of: "state_dir: \(host.stateDir)", with: "state_dir: \(host.stateDir)-\(name)")
            .replacingOccurrences(of: "listen: 127.0.0.1:\(host.httpPort)", with: "listen: 127.0.0.1:\(try freeLoopbackPort())")
            .replacingOccurrences(of: "count: 2", with: "count: \(workers)")
        try text.write(toFile: dir + "/worker.test.yml", atomically: true, encoding: .utf8)
        return dir
    }

    static func spawnMaster(_ host: TestHost, configDir: String) throws -> SpawnedProcess {
        try SpawnedProcess.spawn(try tworkerExecutable(), ["start", "--env", "test", "--config-dir", configDir],
                                 environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                                               "HOME": host.directory.path, "TWORKER_ALLOW_ROOT": "1"],
                                 log: host.directory.path + "/master-\(UUID().uuidString.prefix(6)).log")
    }

    /// `tworker hosts --json`, decoded.
    static func hosts(_ host: TestHost) async throws -> [String: FleetHost] {
        let (status, out, err) = try await host.control(["hosts", "--json"])
        try #require(status == 0, "tworker hosts --json: \(err)")
        struct Body: Decodable { var hosts: [FleetHost] }
        let list = try JSONDecoder().decode(Body.self, from: Data(out.utf8)).hosts
        return Dictionary(uniqueKeysWithValues: list.map { ($0.host, $0) })
    }

    static func view(_ host: TestHost) async throws -> [String: FleetHost] {
        Dictionary(uniqueKeysWithValues: try await FleetView.read(redis: host.redis).map { ($0.host, $0) })
    }

    @Test(.timeLimit(.minutes(3)))
    func aDrainedHostFinishesItsJobTakesNoNewOneSurvivesARestartAndTakesJobsWhenUndrained() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            let otherConfig = try Self.writeOtherHost(host)
            var first = try host.spawnMaster()
            var masters = [first.pid]
            defer { for pid in masters where !processIsGone(pid) { ProcessProbe.killTree(pid) } }
            try #require(await first.waitForWorkers(2), "testhost's workers never came up:\n\(first.output)")

            // A job runs on testhost before the other host comes up, so testhost holds it when drained.
            let marks = host.directory.path + "/marks"
            let long = try await host.push(script: ["sleep 8", "echo long >> \(marks)"])
            let started = try await eventually(timeout: .seconds(15)) { try await host.record(long)["state"] == "started" }
            try #require(started, "the long job never started:\n\(first.output)")
            let second = try Self.spawnMaster(host, configDir: otherConfig)
            masters.append(second.pid)
            let bothUp = try await eventually(timeout: .seconds(15)) {
                let view = try await Self.view(host)
                return view["otherhost"]?.workersByState == ["idle": 1] && view["testhost"]?.state == "up"
            }
            try #require(bothUp, "otherhost never showed an idle worker:\n\(second.output)")

            // Both hosts, from Redis alone, with versions, pids and workers.
            let listed = try await Self.hosts(host)
            let testhost = try #require(listed["testhost"])
            let otherhost = try #require(listed["otherhost"])
            #expect(testhost.state == "up" && otherhost.state == "up")
            #expect(testhost.version == TWorkerVersion.current && otherhost.version == TWorkerVersion.current)
            #expect(testhost.pid == first.pid && otherhost.pid == second.pid)
            #expect(testhost.workersByState == ["busy": 1, "idle": 1])
            #expect(testhost.runningJobs == [long])
            #expect(!testhost.draining && !otherhost.draining)
            let table = try await host.control(["hosts"])
            #expect(table.status == 0)
            let rows = table.out.split(separator: "\n").map(String.init)
            #expect(rows.count == 3 && rows[0].hasPrefix("HOST"), "\(table.out)")
            #expect(rows.contains { $0.hasPrefix("testhost ") && $0.contains(" up ") && $0.contains("1 busy, 1 idle") && $0.contains(long) })
            #expect(rows.contains { $0.hasPrefix("otherhost ") && $0.contains("1 idle") && $0.hasSuffix("no") })

            // Drain testhost (its long job runs on), then queue more work: only otherhost takes it.
            let drain = try await host.control(["drain", "testhost"])
            #expect(drain.status == 0, "\(drain.err)")
            #expect(drain.out.contains("drained testhost"))
            // Once `drain` returns, no worker there says idle: the queue can be filled at once.
            let acknowledged = try #require(try await Self.view(host)["testhost"])
            #expect(acknowledged.workersByState["idle"] == nil && acknowledged.workersByState["draining"] != nil, "\(acknowledged.workers)")
            #expect(try await host.record(long)["state"] == "started", "the long job still runs when the host is drained")
            var shorts: [String] = []
            for number in 1...3 { shorts.append(try await host.push(script: ["echo short-\(number) >> \(marks)"])) }
            // --wait returns once the long job is done and no testhost worker can take a job.
            let waited = try await host.control(["drain", "testhost", "--wait", "--timeout", "30"])
            #expect(waited.status == 0, "\(waited.err)")
            #expect(waited.out.contains("no job runs on testhost"))
            let longRecord = try await host.record(long)
            #expect(longRecord["state"] == "passed" && longRecord["host"] == "testhost", "the running job finished where it ran: \(longRecord)")
            let shortsDone = try await eventually(timeout: .seconds(20)) {
                for id in shorts where try await host.record(id)["state"] != "passed" { return false }
                return true
            }
            #expect(shortsDone, "otherhost ran the queue:\n\(second.output)")
            for id in shorts { #expect(try await host.record(id)["host"] == "otherhost", "a drained host took \(id)") }

            // The drain shows everywhere: hosts, the workers' heartbeats, status, /health, /api/hosts.
            let drained = try #require(try await Self.hosts(host)["testhost"])
            #expect(drained.draining && drained.isDrained && drained.workersByState == ["draining": 2])
            #expect(drained.drainedBy?.hasPrefix("tworker drain on ") == true)
            let status = try await host.control(["status"])
            #expect(status.out.contains("DRAINED"), "\(status.out)")
            let statusJSON = try await host.control(["status", "--json"])
            #expect(statusJSON.out.contains("\"draining\" : true"), "\(statusJSON.out)")
            let health = try await HTTPListenerTests.get(host, "/health")
            #expect(health.status == 503 && health.body.contains("host drained"), "\(health)")
            let api = try await HTTPListenerTests.get(host, "/api/hosts")
            let apiHosts = (try JSONSerialization.jsonObject(with: Data(api.body.utf8)) as? [String: Any])?["hosts"] as? [[String: Any]] ?? []
            #expect(apiHosts.first { $0["host"] as? String == "testhost" }?["draining"] as? Bool == true, "\(api.body)")
            #expect(apiHosts.first { $0["host"] as? String == "otherhost" }?["draining"] as? Bool == false)

            // A pause and resume while drained leaves the workers drained, and saying so.
            #expect(try await host.control(["pause"]).status == 0)
            #expect(await first.waitForWorkers(2, state: "paused"))
            #expect(try await host.control(["resume"]).status == 0)
            #expect(await first.waitForWorkers(2, state: "draining"), "resumed workers say draining again")

            // A drain is Redis state: testhost's master restarted comes back drained.
            first.signal(SIGQUIT)
            #expect(await first.process.waitForExit(timeout: .seconds(20)) == 0)
            first = try host.spawnMaster()
            masters.append(first.pid)
            #expect(await first.waitForWorkers(2, state: "draining"), "restarted workers stay drained:\n\(first.output)")
            #expect(first.status()?.draining == true)
            let afterRestart = try await host.push(script: ["echo after-restart >> \(marks)"])
            let ranElsewhere = try await eventually(timeout: .seconds(15)) { try await host.record(afterRestart)["state"] == "passed" }
            #expect(ranElsewhere)
            #expect(try await host.record(afterRestart)["host"] == "otherhost")

            // Undrained (and otherhost drained), testhost takes jobs again.
            let undrained = try await host.control(["undrain", "testhost"])
            #expect(undrained.status == 0 && undrained.out.contains("undrained testhost"), "\(undrained.err)")
            // --wait: until otherhost's worker has seen its drain, so only testhost can take the next job.
            #expect(try await host.control(["drain", "otherhost", "--wait", "--timeout", "20"]).status == 0)
            #expect(await first.waitForWorkers(2, state: "idle"), "testhost's workers take jobs again")
            let masterSaysUndrained = await eventually(timeout: .seconds(5)) { first.status()?.draining == false }
            #expect(masterSaysUndrained, "the master notices the undrain at its next beat")
            let back = try await host.push(script: ["echo back >> \(marks)"])
            let ranBack = try await eventually(timeout: .seconds(15)) { try await host.record(back)["state"] == "passed" }
            #expect(ranBack, "\(first.output)")
            #expect(try await host.record(back)["host"] == "testhost")
            let undrainAll = try await host.control(["undrain", "--all"])
            #expect(undrainAll.out.contains("undrained otherhost"), "\(undrainAll.out)")
            #expect(try await FleetView.drainedHosts(redis: host.redis).isEmpty)

            let lines = (try? String(contentsOfFile: marks, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? []
            #expect(lines.sorted() == ["after-restart", "back", "long", "short-1", "short-2", "short-3"], "each job ran exactly once: \(lines)")
            first.signal(SIGQUIT)
            second.signal(SIGQUIT)
            #expect(await first.process.waitForExit(timeout: .seconds(15)) == 0)
            #expect(await second.waitForExit(timeout: .seconds(15)) == 0)
            // A master that stopped cleanly shows gone at once, with its last heartbeat.
            let stopped = try await Self.view(host)
            #expect(stopped["testhost"]?.state == "gone" && stopped["testhost"]?.lastHeartbeat != nil)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aKilledMastersHostShowsGoneWithItsLastHeartbeat() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            let otherConfig = try Self.writeOtherHost(host, workers: 1)
            try await host.withMaster(workers: 1) { _ in
                let other = try Self.spawnMaster(host, configDir: otherConfig)
                defer { if !processIsGone(other.pid) { ProcessProbe.killTree(other.pid) } }
                let up = try await eventually(timeout: .seconds(15)) { try await Self.view(host)["otherhost"]?.workersByState == ["idle": 1] }
                try #require(up, "\(other.output)")
                let before = try #require(try await Self.view(host)["otherhost"]?.lastHeartbeat)

                kill(other.pid, SIGKILL)
                _ = await other.waitForExit(timeout: .seconds(5))
                // The record's TTL (5 s at a 1 s heartbeat) runs out; the registry keeps the host.
                let gone = try await eventually(timeout: .seconds(20)) { try await Self.hosts(host)["otherhost"]?.state == "gone" }
                let shown = try await host.control(["hosts"]).out
                #expect(gone, "\(shown)")
                let listed = try #require(try await Self.hosts(host)["otherhost"])
                #expect(listed.version == nil && listed.pid == nil)
                let last = try #require(listed.lastHeartbeat.flatMap(Timestamp.parse))
                #expect(last >= (Timestamp.parse(before) ?? .distantFuture).addingTimeInterval(-1), "the last beat, not the first")
                #expect((listed.heartbeatAge ?? 0) >= 4)
                #expect(try await Self.hosts(host)["testhost"]?.state == "up")
                let table = try await host.control(["hosts"])
                #expect(table.out.split(separator: "\n").contains { $0.hasPrefix("otherhost ") && $0.contains(" gone ") && $0.contains(" ago") })
            }
        }
    }

    @Test func unknownHostsAreRefusedUnlessForcedAndBadSelectionsAreUsageErrors() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            try await host.withMaster(workers: 1) { _ in
                let unknown = try await host.control(["drain", "nosuchhost"])
                #expect(unknown.status == 1)
                #expect(unknown.err.contains("unknown host nosuchhost") && unknown.err.contains("testhost"), "\(unknown.err)")
                #expect(try await FleetView.drainedHosts(redis: host.redis).isEmpty, "nothing was drained")

                let forced = try await host.control(["drain", "nosuchhost", "--force"])
                #expect(forced.status == 0, "\(forced.err)")
                let listed = try await Self.hosts(host)
                #expect(listed["nosuchhost"]?.draining == true && listed["nosuchhost"]?.state == "gone")
                #expect(listed["testhost"]?.draining == false)

                for arguments in [["drain"], ["drain", "testhost", "--all"], ["undrain"], ["drain", "testhost", "--timeout", "5"],
                                  ["drain", "testhost", "--wait", "--timeout", "0"], ["drain", "a*"]] {
                    let result = try await host.control(arguments)
                    #expect(result.status == 64, "\(arguments): \(result.err)")
                }
                let all = try await host.control(["undrain", "--all"])
                #expect(all.status == 0 && all.out.contains("undrained nosuchhost"), "\(all.out)")
                #expect(try await host.control(["undrain", "testhost"]).status == 0, "undraining a host that is not drained is fine")
            }
        }
    }
}
