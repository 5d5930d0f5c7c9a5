import Foundation
import Testing
import TWorkerCore
import TWorkerTestSupport

/// The master's HTTP listener against the real master, redis-server and, for the page, headless
/// Chromium: metrics parsed by prometheus-client, health following Redis, the live log over SSE.
@Suite(.tags(.endToEnd), .serialized)
struct HTTPListenerTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// `Tests/http/http_client.py COMMAND URL`'s output.
    static func client(_ command: String, _ url: String, _ extra: [String] = [], timeout: Duration = .seconds(60)) async throws -> String {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("http-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let process = try SpawnedProcess.spawn("/usr/bin/env", ["python3", packageRoot + "/Tests/http/http_client.py", command, url] + extra,
                                               environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], log: out)
        let status = await process.waitForExit(timeout: timeout)
        if status == nil { await process.kill9() }
        let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        guard status == 0 else { throw TestSupportError("http_client.py \(command) \(url) ended \(String(describing: status)): \(output)") }
        return output
    }

    static func metrics(_ host: TestHost) async throws -> [String: Double] {
        let text = try await client("metrics", "http://127.0.0.1:\(host.httpPort)/metrics")
        let line = text.split(separator: "\n").last.map(String.init) ?? "{}"
        return (try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double]) ?? [:]
    }

    static func get(_ host: TestHost, _ path: String, method: String = "GET", headers: [String] = []) async throws -> (status: Int, body: String) {
        let text = try await client("get", "http://127.0.0.1:\(host.httpPort)\(path)", [method] + headers)
        let line = text.split(separator: "\n").last.map(String.init) ?? "{}"
        let object = (try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? [:]
        return ((object["status"] as? Int) ?? 0, (object["body"] as? String) ?? "")
    }

    @Test(.timeLimit(.minutes(3)))
    func metricsCountTwentyJobsOfKnownResults() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                var ids: [String] = []
                for index in 0..<12 { ids.append(try await host.push(script: ["echo pass-\(index)"])) }
                for index in 0..<6 { ids.append(try await host.push(script: ["echo fail-\(index)", "exit 3"])) }
                for index in 0..<2 {
                    try await host.push(#"{"class":"X","args":[{"id":"bad-slug-\#(index)","repository":{"slug":"a;rm -rf /","source_url":"x"},"commit":"abcdef0","branch":"main"}]}"#)
                }
                let done = try await eventually(timeout: .seconds(90)) {
                    var finished = 0
                    for id in ids {
                        let state = try await host.record(id)["state"]
                        if state == "passed" || state == "failed" { finished += 1 }
                    }
                    let failedEntries = try await host.int(["LLEN", "resque:failed"])
                    return finished == 18 && failedEntries == 2
                }
                try #require(done, "\(master.output)")
                // The master counts what the workers' events say, a moment after they say it.
                var samples: [String: Double] = [:]
                let counted = try await eventually(timeout: .seconds(10)) {
                    samples = try await Self.metrics(host)
                    return samples["tworker_jobs_total{host=testhost,result=passed}"] == 12
                        && samples["tworker_jobs_total{host=testhost,result=failed}"] == 6
                        && samples["tworker_jobs_total{host=testhost,result=errored}"] == 2
                        // The workers' own measurements arrive about once a second.
                        && samples["tworker_job_stage_duration_seconds_count{host=testhost,stage=build}"] == 18
                }
                #expect(counted, "\(samples.filter { $0.key.hasPrefix("tworker_jobs_total") })")
                #expect(samples["tworker_jobs_total{host=testhost,result=cancelled}"] == 0)
                #expect(samples["tworker_job_duration_seconds_count{host=testhost}"] == 18)
                #expect(samples["tworker_requeues_total{host=testhost,reason=infrastructure}"] == 0)
                #expect(samples["tworker_workers{host=testhost,state=idle}"] == 2)
                #expect(samples["tworker_queue_depth{host=testhost,queue=builds}"] == 0)
                #expect(samples["tworker_build_info{host=testhost,version=\(TWorkerVersion.current)}"] == 1)
                #expect((samples["tworker_log_bytes_total{host=testhost}"] ?? 0) >= 18 * 7, "every job's output counted")
                #expect(samples["tworker_job_stage_duration_seconds_count{host=testhost,stage=build}"] == 18)
                #expect(samples["tworker_vm_reset_duration_seconds_count{host=testhost,vm=worker-1}"] != nil
                        || samples["tworker_vm_reset_duration_seconds_count{host=testhost,vm=worker-2}"] != nil)
                #expect(samples["tworker_worker_restarts_total{host=testhost,reason=crash}"] == 0)

                let jobsDone = await eventually(timeout: .seconds(5)) { (master.status()?.workers.compactMap(\.jobsDone).reduce(0, +)) == 18 }
                #expect(jobsDone, "the workers' jobs_done add up to the jobs they ran: \(String(describing: master.status()?.workers))")
                // A worker killed is a crash restart the master counts, and its counters stay.
                let before = master.workerPIDs()
                if let pid = before["worker-1"] { kill(pid, SIGKILL) }
                let restarted = try await eventually(timeout: .seconds(15)) {
                    (try await Self.metrics(host))["tworker_worker_restarts_total{host=testhost,reason=crash}"] == 1
                }
                #expect(restarted)
                let after = try await Self.metrics(host)
                #expect(after["tworker_jobs_total{host=testhost,result=passed}"] == 12, "counters survive a worker's restart")

                let api = try await Self.get(host, "/api/jobs?limit=5")
                #expect(api.status == 200 && api.body.contains("\"jobs\":["), "\(api.body)")
                let status = try await Self.get(host, "/api/status")
                #expect(status.status == 200 && status.body.contains("\"workers\":["), "\(status.body)")
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func healthFollowsRedisAndTheLiveLogArrivesInOrder() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 1)
            try await host.withMaster(workers: 1) { master in
                let healthy = try await Self.get(host, "/health")
                #expect(healthy.status == 200 && healthy.body.contains("\"status\":\"ok\""), "\(healthy.body)")

                let lines = (1...40).map { "echo line-\($0); sleep 0.02" }
                let id = try await host.push(script: lines)
                let streamed = try await Self.client("sse", "http://127.0.0.1:\(host.httpPort)/api/jobs/\(id)/log/stream?from=1")
                var text = ""
                var numbers: [Int] = []
                var events: [String] = []
                for line in streamed.split(separator: "\n") {
                    guard let event = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String] else { continue }
                    events.append(event["event"] ?? "")
                    if event["event"] == "log", let data = event["data"],
                       let entry = try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any] {
                        text += (entry["text"] as? String) ?? ""
                        numbers.append((entry["n"] as? Int) ?? -1)
                    }
                }
                #expect(events.last == "final", "the stream ends with the final entry: \(events.suffix(3))")
                #expect(numbers == numbers.sorted() && Set(numbers).count == numbers.count, "in order, each once: \(numbers)")
                let printed = text.split(separator: "\n").filter { $0.hasPrefix("line-") }.map(String.init)
                #expect(printed == (1...40).map { "line-\($0)" }, "every line: \(printed.count)")
                let stored = try await host.log(id).text
                #expect(text == stored, "the stream is the log")

                await host.redisServer.stop()
                let unhealthy = try await eventually(timeout: .seconds(15)) {
                    let reply = try await Self.get(host, "/health")
                    return reply.status == 503 && reply.body.contains("Redis unreachable")
                }
                #expect(unhealthy)
                try await host.redisServer.restart()
                let back = try await eventually(timeout: .seconds(20)) { try await Self.get(host, "/health").status == 200 }
                let last = try await Self.get(host, "/health")
                #expect(back, "\(last.body)\n\(master.output)")
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aTokenGuardsEverythingButHealthAndChangesMustBeSameOrigin() async throws {
        let listen = try freeLoopbackPort()
        try await TestHost.with { host in
            let base = "http://127.0.0.1:\(listen)"
            func request(_ path: String, _ method: String = "GET", _ headers: [String] = []) async throws -> Int {
                let text = try await Self.client("get", base + path, [method] + headers)
                let object = try JSONSerialization.jsonObject(with: Data((text.split(separator: "\n").last ?? "{}").utf8)) as? [String: Any]
                return (object?["status"] as? Int) ?? 0
            }
            try host.writeMasterConfig(workers: 1, "http:\n  listen: 127.0.0.1:\(listen)\n  token: s3cret-token-1\n")
            try await host.withMaster(workers: 1) { _ in
                #expect(try await request("/health") == 200)
                #expect(try await request("/metrics") == 401)
                #expect(try await request("/api/status") == 401)
                #expect(try await request("/api/status", "GET", ["Authorization: Bearer wrong"]) == 401)
                #expect(try await request("/api/status", "GET", ["Authorization: Bearer s3cret-token-1"]) == 200)
                #expect(try await request("/metrics", "GET", ["Cookie: tworker_token=s3cret-token-1"]) == 200)
                let id = try await host.push(script: ["sleep 30"])
                #expect(try await request("/api/jobs/\(id)/cancel", "POST", ["Authorization: Bearer s3cret-token-1", "Origin: http://evil.example"]) == 403)
                #expect(try await request("/api/jobs/\(id)/cancel", "POST", ["Origin: http://127.0.0.1:\(listen)"]) == 401)
                #expect(try await request("/api/jobs/\(id)/cancel", "POST", ["Authorization: Bearer s3cret-token-1", "Origin: http://127.0.0.1:\(listen)"]) == 200)
                let cancelled = try await eventually(timeout: .seconds(10)) { try await host.record(id)["state"] == "cancelled" }
                #expect(cancelled)
            }
        }
    }

    @Test(.timeLimit(.minutes(4)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver"),
                                            "chromium-driver is not installed (scripts/install-deps installs it)"))
    func theDashboardInARealBrowser() async throws {
        try await TestHost.with { host in
            try host.writeMasterConfig(workers: 2)
            try await host.withMaster(workers: 2) { master in
                let xss = try await host.push(script: ["echo '<script>window.xss=1</script>'", "echo '<img src=x onerror=window.xss=1>'"])
                let xssDone = try await eventually(timeout: .seconds(30)) { try await host.record(xss)["state"] == "passed" }
                try #require(xssDone)
                let running = try await host.push(script: [
                    "printf '\\033[32;1mgreen\\033[0m\\n'",
                    "for i in $(seq 1 600); do echo tick-$i; sleep 0.3; done",
                ])
                let started = try await eventually(timeout: .seconds(30)) { try await host.log(running).text.contains("tick-2") }
                try #require(started)
                // The idle one: a busy worker pauses only after its job.
                let idleVM = try await host.record(running)["vm"] == "worker-1" ? "worker-2" : "worker-1"
                let shots = Self.packageRoot + "/var/test-screenshots/dashboard"
                try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
                let log = host.directory.path + "/browser.log"
                let browser = try SpawnedProcess.spawn("/usr/bin/env", [
                    "python3", Self.packageRoot + "/Tests/browser/dashboard_test.py", "--base-url", "http://127.0.0.1:\(host.httpPort)",
                    "--workers", "2", "--running-job", running, "--xss-job", xss, "--screenshots", shots, "--pause-vm", idleVM,
                    "--expect-fold", "script", "--expect-ansi", "--redis-cli-args", "-p \(host.redisServer.port)",
                ], environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": host.directory.path], log: log)
                let status = await browser.waitForExit(timeout: .seconds(180))
                if status == nil { await browser.kill9() }
                #expect(status == 0, "\(browser.output)\n\(master.output)")
                #expect(try await host.record(running)["state"] == "cancelled")
            }
        }
    }
}
