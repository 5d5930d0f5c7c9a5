import Foundation
import Testing
@testable import TWorkerCore

/// The listener's rules without a server: its config, who may do what, health, metric names.
@Suite struct HTTPTests {
    // MARK: - Config

    @Test func theListenerIsOnLoopbackByDefaultAndOffWhenEmpty() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "queue: builds\n")
        #expect(try dir.loader().load().config.http.listen == "127.0.0.1:9252")
        try dir.write("worker.yml", "http:\n  listen: \"\"\n")
        #expect(try dir.loader().load().config.http.listen == "")
    }

    @Test func aListenerOthersCanReachNeedsAToken() throws {
        let dir = try TempConfigDir()
        try dir.write("worker.yml", "queue: builds\nhttp:\n  listen: 0.0.0.0:9252\n")
        let problems = configProblems(dir.loader())
        #expect(problems.count == 1)
        #expect(problems.first?.hasPrefix(dir.file("worker.yml") + ":3: http.listen: 0.0.0.0:9252 is reachable from other machines: set http.token") == true,
                "\(problems)")
        try dir.write("worker.yml", "queue: builds\nhttp:\n  listen: 0.0.0.0:9252\n  token: s3cret-token\n")
        #expect(configProblems(dir.loader()).isEmpty)
        try dir.write("worker.yml", "http:\n  listen: localhost\n")
        #expect(configProblems(dir.loader()).first?.contains("http.listen: 'localhost' is not host:port") == true)
        try dir.write("worker.yml", "http:\n  listen: 127.0.0.1:70000\n")
        #expect(configProblems(dir.loader()).first?.contains("the port must be 1-65535") == true)
    }

    @Test func listenAddresses() throws {
        #expect(try ListenAddress("127.0.0.1:9252") == ListenAddress("127.0.0.1:9252"))
        #expect(try ListenAddress("[::1]:9252").host == "::1")
        #expect(try ListenAddress("[::1]:9252").isLoopback)
        #expect(try ListenAddress("localhost:1").isLoopback)
        #expect(try !ListenAddress("10.0.0.5:9252").isLoopback)
        #expect(throws: ListenAddress.Invalid.self) { try ListenAddress(":9252") }
        #expect(throws: ListenAddress.Invalid.self) { try ListenAddress("::1:9252") }
    }

    // MARK: - Access

    @Test func withoutATokenReadsAreOpenAndChangesMustBeSameOrigin() {
        let access = HTTPAccess(token: nil)
        #expect(access.decide(method: "GET", path: "/api/status", headers: [:]) == .allowed)
        #expect(access.decide(method: "POST", path: "/api/jobs/x/cancel", headers: [:]) == .allowed, "a command-line client")
        #expect(access.decide(method: "POST", path: "/api/jobs/x/cancel",
                              headers: ["origin": "http://127.0.0.1:9252", "host": "127.0.0.1:9252", "sec-fetch-site": "same-origin"]) == .allowed)
        #expect(access.decide(method: "POST", path: "/api/jobs/x/cancel", headers: ["origin": "http://evil.example", "host": "127.0.0.1:9252"])
                == .crossOrigin("Origin http://evil.example is not this dashboard's"))
        #expect(access.decide(method: "POST", path: "/api/workers/worker-1/pause", headers: ["sec-fetch-site": "cross-site"])
                == .crossOrigin("Sec-Fetch-Site: cross-site"))
    }

    @Test func withATokenEverythingButHealthNeedsIt() {
        let access = HTTPAccess(token: "s3cret-token")
        #expect(access.decide(method: "GET", path: "/health", headers: [:]) == .allowed)
        #expect(access.decide(method: "GET", path: "/metrics", headers: [:]) == .unauthorized)
        #expect(access.decide(method: "GET", path: "/api/status", headers: ["authorization": "Bearer wrong"]) == .unauthorized)
        #expect(access.decide(method: "GET", path: "/api/status", headers: ["authorization": "Bearer s3cret-token"]) == .allowed)
        #expect(access.decide(method: "GET", path: "/", headers: ["cookie": "a=b; tworker_token=s3cret-token"]) == .allowed)
        #expect(access.decide(method: "GET", path: "/", headers: ["cookie": "tworker_token=s3cret-tokenX"]) == .unauthorized)
        // The token does not make a cross-site request acceptable.
        #expect(access.decide(method: "POST", path: "/api/jobs/x/cancel",
                              headers: ["cookie": "tworker_token=s3cret-token", "origin": "http://evil.example", "host": "h:1"])
                == .crossOrigin("Origin http://evil.example is not this dashboard's"))
    }

    // MARK: - Health

    @Test func healthNamesEveryReason() {
        #expect(HealthCheck(redisError: nil, draining: false, workers: [.init(vm: "worker-1", alive: true)]).statusCode == 200)
        let sick = HealthCheck(redisError: "connection refused", draining: true, workers: [
            .init(vm: "worker-10", alive: true), .init(vm: "worker-2", alive: true, brokenReason: "VM would not start"),
            .init(vm: "worker-1", alive: false),
        ])
        #expect(sick.statusCode == 503)
        #expect(sick.reasons == ["Redis unreachable: connection refused", "master draining", "worker-1 not running",
                                 "worker-2 broken: VM would not start"])
        #expect(sick.json(host: "h1", workers: 3).contains("\"status\":\"unhealthy\""))
    }

    // MARK: - Metrics

    @Test func metricNamesLabelsAndValuesAfterAScriptedRun() {
        let metrics = PoolMetrics(host: "h1", version: "9.9.9")
        metrics.jobStarted(queueWait: 2.5)
        metrics.jobFinished(result: "passed", vm: "worker-1", duration: 30)
        metrics.jobFinished(result: "passed", vm: "worker-2", duration: 3)
        metrics.jobFinished(result: "failed", vm: "worker-1", duration: 700)
        metrics.jobFinished(result: "weird", vm: "worker-1", duration: 1)
        metrics.requeued(reason: .infrastructure)
        metrics.workerRestarted(reason: "memory", vm: "worker-2")
        metrics.observe(Observation(.vmCommand, vm: "worker-1", labels: ["command": "loadvm", "outcome": "ok"], value: 0.4))
        metrics.observe(Observation(.vmReset, vm: "worker-1", value: 1.5))
        metrics.observe(Observation(.logBytes, vm: "worker-1", value: 1234))
        metrics.observe(Observation(.stage, vm: "worker-1", labels: ["stage": "prepare"], value: 0.7))
        metrics.redisReconnected(2)
        metrics.update(queues: [.init(name: "builds", depth: 4)],
                       workers: [.init(host: "h1", vm: "worker-1", state: "busy"), .init(host: "h1", vm: "worker-2", state: "paused")])
        let lines = Set(metrics.render().split(separator: "\n").map(String.init))
        for expected in [
            #"tworker_jobs_total{host="h1",result="passed"} 2"#,
            #"tworker_jobs_total{host="h1",result="failed"} 1"#,
            #"tworker_jobs_total{host="h1",result="errored"} 0"#,
            #"tworker_jobs_total{host="h1",result="cancelled"} 0"#,
            #"tworker_jobs_total{host="h1",result="passed",vm="worker-1"} 1"#,
            #"tworker_requeues_total{host="h1",reason="infrastructure"} 1"#,
            #"tworker_requeues_total{host="h1",reason="stop"} 0"#,
            #"tworker_worker_restarts_total{host="h1",reason="memory"} 1"#,
            #"tworker_worker_restarts_total{host="h1",reason="crash"} 0"#,
            #"tworker_job_duration_seconds_count{host="h1"} 3"#,
            #"tworker_job_duration_seconds_bucket{host="h1",le="5.0"} 1"#,
            #"tworker_job_duration_seconds_bucket{host="h1",le="600.0"} 2"#,
            #"tworker_job_queue_duration_seconds_count{host="h1"} 1"#,
            #"tworker_vm_commands_total{host="h1",command="loadvm",outcome="ok"} 1"#,
            #"tworker_vm_command_duration_seconds_count{host="h1",command="loadvm"} 1"#,
            #"tworker_vm_reset_duration_seconds_count{host="h1",vm="worker-1"} 1"#,
            #"tworker_job_stage_duration_seconds_count{host="h1",stage="prepare"} 1"#,
            #"tworker_log_bytes_total{host="h1"} 1234"#,
            #"tworker_redis_reconnects_total{host="h1"} 2"#,
            #"tworker_queue_depth{host="h1",queue="builds"} 4.0"#,
            #"tworker_workers{host="h1",state="busy"} 1.0"#,
            #"tworker_workers{host="h1",state="paused"} 1.0"#,
            #"tworker_workers{host="h1",state="idle"} 0.0"#,
            #"tworker_build_info{host="h1",version="9.9.9"} 1.0"#,
        ] {
            #expect(lines.contains(expected), "missing \(expected)")
        }
        #expect(!lines.contains { $0.contains("weird") }, "an unknown result is not a series")
    }

    @Test func observationsTravelAsStreamFieldsAndBack() {
        let observation = Observation(.vmCommand, vm: "worker-3", labels: ["command": "snapshot", "outcome": "timeout"], value: 120)
        var fields: [String: String] = [:]
        let list = observation.fields
        for index in stride(from: 0, to: list.count, by: 2) { fields[list[index]] = list[index + 1] }
        #expect(Observation(fields: fields) == observation)
        #expect(Observation(fields: ["kind": "vm_command", "vm": "worker-1", "value": "-1"]) == nil)
        #expect(Observation(fields: ["kind": "nonsense", "vm": "worker-1", "value": "1"]) == nil)
    }
}
