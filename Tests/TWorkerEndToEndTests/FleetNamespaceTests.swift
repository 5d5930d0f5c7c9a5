import Foundation
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

/// Three hosts on this machine, each in a network namespace of its own with its own master,
/// sharing one Redis in a fourth namespace over veth links (real TCP between namespaces).
/// The test itself reaches that Redis through its unix socket, which no namespace hides.
@Suite(.tags(.endToEnd), .serialized,
       .enabled(if: TestNetwork.available, Comment(rawValue: TestNetwork.unavailableReason ?? "")))
struct FleetNamespaceTests {
    struct Fleet {
        let network: TestNetwork
        let directory: TempDirectory
        let redis: RedisConnection
        let redisNamespace: String
        var hosts: [String: (namespace: String, configDir: String, redisURL: String)] = [:]

        var environment: [String: String] {
            ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path, "TWORKER_ALLOW_ROOT": "1"]
        }

        /// Runs `tworker <arguments>` inside `host`'s namespace against its config.
        func cli(on host: String, _ arguments: [String]) throws -> String {
            let entry = try #require(hosts[host])
            let command = [try tworkerExecutable()] + arguments + ["--env", "test", "--config-dir", entry.configDir]
            return try network.exec(in: entry.namespace, ["/usr/bin/env", "-i"] + environment.map { "\($0.key)=\($0.value)" } + command)
        }

        func startMaster(_ host: String) throws -> SpawnedProcess {
            let entry = try #require(hosts[host])
            let start = network.command(in: entry.namespace, [try tworkerExecutable(), "start", "--env", "test", "--config-dir", entry.configDir])
            return try SpawnedProcess.spawn(start.executable, start.arguments, environment: environment,
                                            log: directory.path + "/master-\(host).log")
        }

        func record(_ id: String) async throws -> [String: String] {
            let items = (try await redis.send(["HGETALL", "tworker:job:\(id)"])).array?.compactMap(\.string) ?? []
            return Dictionary(uniqueKeysWithValues: stride(from: 0, to: items.count - 1, by: 2).map { (items[$0], items[$0 + 1]) })
        }
    }

    /// Makes the namespaces, starts redis-server in its own, writes each host's config.
    func withFleet(hosts names: [String], workers: Int, _ body: (Fleet) async throws -> Void) async throws {
        let network = TestNetwork()
        defer { network.removeAll() }
        let directory = try TempDirectory(prefix: "tworker-fleet")
        defer { directory.remove() }
        let redisNamespace = try network.addNamespace("redis")
        let socket = directory.path + "/redis.sock"
        // Its own namespace has its own ports: the default one is free there.
        let server = network.command(in: redisNamespace, ["/usr/bin/redis-server", "--port", "6379", "--bind", "0.0.0.0",
                                                          "--protected-mode", "no", "--unixsocket", socket, "--unixsocketperm", "700",
                                                          "--save", "", "--appendonly", "no", "--dir", directory.path])
        let redisServer = try SpawnedProcess.spawn(server.executable, server.arguments, environment: [:], log: directory.path + "/redis.log")
        defer { Task { await redisServer.kill9() } }
        let redis = RedisConnection(endpoint: RedisEndpoint(address: .unix(path: socket)))
        defer { redis.close() }
        let up = await eventually(timeout: .seconds(10)) { (try? await redis.send(["PING"]))?.string == "PONG" }
        try #require(up, "redis-server did not start in its namespace")

        var fleet = Fleet(network: network, directory: directory, redis: redis, redisNamespace: redisNamespace)
        for (index, name) in names.enumerated() {
            let namespace = try network.addNamespace(name)
            let (redisAddress, _) = try network.link(redisNamespace, namespace, subnet: 200 + index)
            let configDir = directory.path + "/config-\(name)"
            try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
            let url = "redis://\(redisAddress):6379"
            // The documented defaults otherwise: the HTTP listener on 127.0.0.1:9252 (each namespace has its own).
            try """
            provider: local
            host: \(name)
            state_dir: \(directory.path)/state-\(name)
            redis:
              url: \(url)
            heartbeat:
              interval: 1
            vms:
              count: \(workers)
            """.write(toFile: configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
            fleet.hosts[name] = (namespace, configDir, url)
        }
        try await body(fleet)
    }

    @Test func jobsSpreadOverHostsAndAHostTornDownMidBuildHasItsJobsFinishedExactlyOnceByTheOthers() async throws {
        try await withFleet(hosts: ["host1", "host2", "host3"], workers: 2) { fleet in
            let completions = fleet.directory.path + "/completions"
            var ids: [String] = []
            for number in 1...18 {
                let id = "fleet-\(number)"
                ids.append(id)
                let script = ["sleep 2", "echo \(id) >> \(completions)"].map { "\"\($0)\"" }.joined(separator: ",")
                _ = try await fleet.redis.pipeline([["SADD", "resque:queues", "builds"], ["RPUSH", "resque:queue:builds",
                    #"{"class":"Build","args":[{"id":"\#(id)","config":{"script":[\#(script)]}}]}"#]])
            }
            // One more through the command line from inside a host's namespace, over its link.
            let enqueued = try fleet.cli(on: "host2", ["enqueue", "--script", "sleep 1", "--script", "echo enqueued-$TWORKER_JOB_ID >> \(completions)"])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!enqueued.isEmpty)

            var masters: [String: SpawnedProcess] = [:]
            defer { for master in masters.values where !processIsGone(master.pid) { kill(master.pid, SIGKILL) } }
            for host in ["host1", "host2", "host3"] { masters[host] = try fleet.startMaster(host) }

            // Every host takes jobs: wait until host3 holds two running ones, then it dies.
            var heldByHost3: [String] = []
            let busy = try await eventually(timeout: .seconds(30)) {
                heldByHost3 = []
                for id in ids {
                    let record = try await fleet.record(id)
                    if record["host"] == "host3" && record["state"] == "started" { heldByHost3.append(id) }
                }
                return heldByHost3.count == 2
            }
            let host3Log = (try? String(contentsOfFile: masters["host3"]!.logPath, encoding: .utf8)) ?? ""
            try #require(busy, "host3 never ran two jobs at once:\n\(host3Log)")
            fleet.network.tearDown(fleet.hosts["host3"]!.namespace)
            #expect(processIsGone(masters["host3"]!.pid))

            let allPassed = try await eventually(timeout: .seconds(90)) {
                for id in ids + [enqueued] where try await fleet.record(id)["state"] != "passed" { return false }
                return true
            }
            var states: [String] = []
            for id in ids + [enqueued] { states.append("\(id)=\(try await fleet.record(id)["state"] ?? "-")") }
            #expect(allPassed, "every job passed: \(states)")

            var ranOn: [String: Int] = [:]
            for id in ids {
                let record = try await fleet.record(id)
                ranOn[record["host"] ?? "?", default: 0] += 1
                if heldByHost3.contains(id) {
                    #expect(record["host"] != "host3", "\(id) was finished by a live host")
                    #expect(record["attempts"] == "2", "\(id): its run on host3 counted, then one more")
                }
            }
            #expect((ranOn["host1"] ?? 0) > 0 && (ranOn["host2"] ?? 0) > 0, "jobs spread over the live hosts: \(ranOn)")
            let lines = ((try? String(contentsOfFile: completions, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            #expect(lines.sorted() == (ids + ["enqueued-\(enqueued)"]).sorted(), "each job completed exactly once")
            let processing = try await fleet.redis.send(["KEYS", "tworker:processing:*"]).array ?? []
            for key in processing.compactMap(\.string) {
                #expect(try await fleet.redis.send(["LLEN", key]) == .integer(0), "\(key) is empty")
            }

            // Seen from inside a live host's namespace, over its own link to Redis: host3 is gone.
            let fleetView = try JSONSerialization.jsonObject(with: Data(try fleet.cli(on: "host1", ["hosts", "--json"]).utf8)) as? [String: Any]
            let hosts = (fleetView?["hosts"] as? [[String: Any]]) ?? []
            let hostStates = Dictionary(uniqueKeysWithValues: hosts.compactMap { host in (host["host"] as? String).map { ($0, host["state"] as? String ?? "") } })
            #expect(hostStates == ["host1": "up", "host2": "up", "host3": "gone"], "tworker hosts --json: \(hosts)")
            #expect(hosts.first { $0["host"] as? String == "host1" }?["version"] as? String == TWorkerVersion.current)

            for host in ["host1", "host2"] { masters[host]!.signal(SIGQUIT) }
            for host in ["host1", "host2"] {
                #expect(await masters[host]!.waitForExit(timeout: .seconds(20)) == 0, "\(host)'s master stopped cleanly")
            }
        }
    }
}
