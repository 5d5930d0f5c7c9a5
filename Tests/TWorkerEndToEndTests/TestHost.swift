import Foundation
import Logging
import RedisClient
import Testing
import TWorkerCore
import TWorkerTestSupport

extension Tag {
    /// Tests that start real servers and processes; `swift test --skip-tags`-style filtering can leave them out.
    @Tag static var endToEnd: Self
}

/// A tworker host for one test: a real redis-server, a config directory and a state directory.
struct TestHost: Sendable {
    let redisServer: RedisServer
    let directory: TempDirectory
    let redis: RedisConnection
    /// The master's HTTP listener: a free port of its own, so masters of tests running side by
    /// side never meet on the default 9252.
    let httpPort: Int
    /// The config's `redis:` mapping, indented; nil: `url:` of `redisServer`.
    var redisSection: String? = nil
    /// `heartbeat.interval`; its keys expire after three intervals.
    var heartbeatInterval = 1

    var configDir: String { directory.path + "/config" }
    var stateDir: String { directory.path + "/var" }
    var keys: RedisKeys { RedisKeys(namespace: "resque", host: "testhost") }

    /// Runs `body` with a fresh host; `config` is YAML added to the test config file,
    /// `redisArguments` extra redis-server settings.
    static func with(config: String = "", appendonly: Bool = false, redisArguments: [String] = [],
                     _ body: (TestHost) async throws -> Void) async throws {
        try await withRedisServer(appendonly: appendonly, arguments: redisArguments) { server in
            let directory = try TempDirectory(prefix: "tworker-e2e")
            defer { directory.remove() }
            let host = TestHost(redisServer: server, directory: directory, redis: RedisConnection(endpoint: server.endpoint),
                                httpPort: try freeLoopbackPort())
            defer { host.redis.close() }
            try host.writeConfig(config)
            try await body(host)
        }
    }

    func writeConfig(_ extra: String) throws {
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
        let yaml = """
        provider: local
        host: testhost
        state_dir: \(stateDir)
        redis:
        \(redisSection ?? "  url: \(redisServer.url)")
        heartbeat:
          interval: \(heartbeatInterval)
        \(extra.contains("http:") ? "" : "http:\n  listen: 127.0.0.1:\(httpPort)")
        \(extra)
        """
        try yaml.write(toFile: configDir + "/worker.test.yml", atomically: true, encoding: .utf8)
    }

    func config() throws -> WorkerConfig {
        try ConfigLoader(configDir: configDir, env: "test", environment: [:], currentDirectory: directory.path).load().config
    }

    // MARK: - Queue

    /// Pushes a job exactly as a Resque client would: RPUSH the JSON, SADD the queue name.
    func push(_ json: String, queue: String = "builds") async throws {
        _ = try await redis.pipeline([["SADD", "resque:queues", queue], ["RPUSH", "resque:queue:\(queue)", json]])
    }

    /// Pushes a payload built from a script; returns the id.
    @discardableResult
    func push(id: String = UUID().uuidString.lowercased(), script: [String], extra: String = "", queue: String = "builds") async throws -> String {
        let commands = script.map { "\"\(jsonEscape($0))\"" }.joined(separator: ",")
        try await push(#"{"class":"Build","args":[{"id":"\#(id)","config":{"script":[\#(commands)]}\#(extra)}]}"#, queue: queue)
        return id
    }

    func jsonEscape(_ text: String) -> String {
        String(decoding: JSONValue.string(text).serialized().dropFirst().dropLast(), as: UTF8.self)
    }

    // MARK: - Workers

    /// Runs a worker in this process until the queue is empty.
    func runBurst(vm: String = "worker-1", adjust: (inout Worker.Settings) -> Void = { _ in }) async throws {
        let worker = try makeWorker(vm: vm) { settings in
            settings.burst = true
            adjust(&settings)
        }
        try await worker.run()
    }

    func makeWorker(vm: String = "worker-1", subscribed: Bool = true, adjust: (inout Worker.Settings) -> Void = { _ in }) throws -> Worker {
        let config = try config()
        let provider: any MachineProvider = switch config.provider {
        case .local: LocalProvider(workspaceRoot: config.local.workspace)
        case .virtualbox: VirtualBoxProvider(config: config, logger: Logger(label: "test-worker"))
        case .qemu: QEMUProvider(config: config, logger: Logger(label: "test-worker"))
        }
        return try makeWorker(vm: vm, machine: try provider.machine(named: vm), subscribed: subscribed, adjust: adjust)
    }

    /// A worker in this process driving `machine` (a test's own, faults and all).
    func makeWorker(vm: String = "worker-1", machine: any Machine, subscribed: Bool = true, logLevel: Logger.Level = .warning,
                    adjust: (inout Worker.Settings) -> Void = { _ in }) throws -> Worker {
        var settings = Worker.Settings(config: try config(), vm: vm)
        settings.fetchBlock = .milliseconds(200)
        adjust(&settings)
        var logger = Logger(label: "test-worker")
        logger.logLevel = logLevel
        return Worker(settings: settings, machine: machine,
                      redis: RedisConnection(endpoint: redisServer.endpoint), blockingRedis: RedisConnection(endpoint: redisServer.endpoint),
                      subscriptionRedis: subscribed ? RedisConnection(endpoint: redisServer.endpoint) : nil, logger: logger)
    }

    /// The local machine `vm` of this host's config.
    func localMachine(_ vm: String = "worker-1") throws -> LocalMachine {
        try #require(try LocalProvider(workspaceRoot: try config().local.workspace).machine(named: vm) as? LocalMachine)
    }

    /// Starts `tworker work` as a separate process against this host.
    func spawnWorker(vm: String = "worker-1", arguments: [String] = []) throws -> SpawnedProcess {
        try SpawnedProcess.spawn(try tworkerExecutable(), ["work", "--env", "test", "--config-dir", configDir, "--vm", vm] + arguments,
                                 environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path],
                                 log: directory.path + "/worker-\(vm)-\(UUID().uuidString.prefix(6)).log")
    }

    /// This host as its workers and master see it through a proxy answering `LOADING` to the
    /// commands `rules` name (see `RedisLoadingProxy`); the caller writes its config and stops the proxy.
    func throughLoadingProxy(rules: [String]) async throws -> (host: TestHost, proxy: RedisLoadingProxy) {
        let proxy = try await RedisLoadingProxy(upstreamPort: redisServer.port, rules: rules, log: directory.path + "/proxy.log")
        var proxied = self
        proxied.redisSection = "  url: redis://127.0.0.1:\(proxy.port)"
        return (proxied, proxy)
    }

    /// Runs the `tworker` CLI to completion; returns exit status, stdout and stderr.
    func cli(_ arguments: [String], environment: [String: String] = [:], stdin: String? = nil,
             timeout: Duration = .seconds(60)) async throws -> (status: Int32, out: String, err: String) {
        let out = directory.path + "/cli-\(UUID().uuidString).out"
        let err = out + ".err"
        let script = "exec \"$0\" \"$@\" >\(out) 2>\(err)"
        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory.path]
        env.merge(environment) { $1 }
        var bashArguments = ["-c", script, try tworkerExecutable()] + arguments
        if let stdin {
            let input = directory.path + "/cli-\(UUID().uuidString).in"
            try stdin.write(toFile: input, atomically: true, encoding: .utf8)
            bashArguments = ["-c", "exec \"$0\" \"$@\" <\(input) >\(out) 2>\(err)", try tworkerExecutable()] + arguments
        }
        let process = try SpawnedProcess.spawn("/bin/bash", bashArguments, environment: env, log: "/dev/null")
        let status = await process.waitForExit(timeout: timeout) ?? -1
        return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "", (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    // MARK: - Reading results

    func record(_ id: String) async throws -> [String: String] {
        let reply = try await redis.send(["HGETALL", keys.job(id)])
        var result: [String: String] = [:]
        let items = reply.array ?? []
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            result[items[index].string ?? ""] = items[index + 1].string ?? ""
        }
        return result
    }

    struct Log {
        var entries: [[String: String]]
        var text: String { entries.compactMap { $0["data"] }.joined() }
        var isFinal: Bool { entries.last?["final"] == "1" }
        var numbers: [Int] { entries.compactMap { $0["n"].flatMap(Int.init) } }
    }

    func log(_ id: String) async throws -> Log {
        let reply = try await redis.send(["XRANGE", keys.log(id), "-", "+"])
        return Log(entries: (reply.array ?? []).map { entry in
            let fields = entry.array?.last?.array ?? []
            var result: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) {
                result[fields[index].string ?? ""] = fields[index + 1].string ?? ""
            }
            return result
        })
    }

    func events(for id: String) async throws -> [String] {
        let reply = try await redis.send(["XRANGE", RedisKeys.events, "-", "+"])
        return (reply.array ?? []).compactMap { entry -> String? in
            let fields = entry.array?.last?.array?.compactMap(\.string) ?? []
            var values: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) { values[fields[index]] = fields[index + 1] }
            return values["id"] == id ? values["type"] : nil
        }
    }

    func int(_ command: [String]) async throws -> Int {
        Int(try await redis.send(command).int ?? 0)
    }
}
