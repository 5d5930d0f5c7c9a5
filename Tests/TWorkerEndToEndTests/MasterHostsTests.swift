import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

@Suite(.tags(.endToEnd))
struct MasterHostsTests {
    @Test func twoHostsOneRedisAKilledHostsJobsCompleteExactlyOnceOnTheOther() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            // A second host: same Redis and queue, its own name and state.
            let otherConfig = host.directory.path + "/config-other"
            try FileManager.default.createDirectory(atPath: otherConfig, withIntermediateDirectories: true)
            let text = try String(contentsOfFile: host.configDir + "/worker.test.yml", encoding: .utf8)
                .replacingOccurrences(of: "host: testhost", with: "host: otherhost")
                .replacingOccurrences(of: "state_dir: \(host.stateDir)", with: "state_dir: \(host.stateDir)-other")
                .replacingOccurrences(of: "listen: 127.0.0.1:\(host.httpPort)", with: "listen: 127.0.0.1:\(try freeLoopbackPort())")
            try text.write(toFile: otherConfig + "/worker.test.yml", atomically: true, encoding: .utf8)

            let pids = host.directory.path + "/build-pids"
            let completions = host.directory.path + "/completions"
            var ids: [String] = []
            for number in 1...2 {
                ids.append(try await host.push(script: ["echo $$ >> \(pids)", "sleep 3", "echo done-\(number) >> \(completions)"]))
            }
            let first = try host.spawnMaster()
            var workerPIDs: [Int32] = []
            defer { for pid in workerPIDs where !processIsGone(pid) { kill(pid, SIGKILL) } }
            let running = try await eventually(timeout: .seconds(15)) {
                var started = 0
                for id in ids {
                    let record = try await host.record(id)
                    if record["host"] == "testhost" && record["state"] == "started" { started += 1 }
                }
                return started == 2
            }
            #expect(running, "both jobs started on the first host:\n\(first.output)")
            workerPIDs = Array(first.workerPIDs().values)
            // The other host comes up only now, so the first one holds both jobs when it dies.
            let second = try SpawnedProcess.spawn(try tworkerExecutable(), ["start", "--env", "test", "--config-dir", otherConfig],
                                                  environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                                                                "HOME": host.directory.path, "TWORKER_ALLOW_ROOT": "1"],
                                                  log: host.directory.path + "/master-other.log")
            defer { if !processIsGone(second.pid) { second.signal(SIGTERM) } }

            // The first host dies: master, workers and builds, all at once.
            kill(first.pid, SIGKILL)
            for pid in workerPIDs { kill(pid, SIGKILL) }
            for line in (try? String(contentsOfFile: pids, encoding: .utf8))?.split(separator: "\n") ?? [] {
                if let pid = Int32(line) { kill(-pid, SIGKILL) }
            }
            _ = await first.process.waitForExit(timeout: .seconds(5))

            let recovered = try await eventually(timeout: .seconds(30)) {
                var passed = 0
                for id in ids where try await host.record(id)["state"] == "passed" { passed += 1 }
                return passed == 2
            }
            #expect(recovered, "the other host's master recovered the jobs:\n\(second.output)")
            for id in ids {
                let record = try await host.record(id)
                #expect(record["host"] == "otherhost")
                #expect(record["attempts"] == "2")
            }
            let lines = (try? String(contentsOfFile: completions, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? []
            #expect(lines.sorted() == ["done-1", "done-2"], "each job completed exactly once: \(lines)")
            second.signal(SIGQUIT)
            #expect(await second.waitForExit(timeout: .seconds(15)) == 0)
        }
    }
}
