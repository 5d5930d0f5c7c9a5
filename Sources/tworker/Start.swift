import ArgumentParser
import Foundation
import RedisClient
import ServiceLifecycle
import TWorkerCore

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the master in the foreground: one supervised `tworker work --vm worker-N` per VM.",
        discussion: """
        A child that dies is restarted (at once, then 1 s doubling to 60 s while it keeps dying). \
        One master per config and host (<state_dir>/run/tworker.pid); the CLI talks to it over \
        <state_dir>/run/tworker.sock (tworker stop|restart|pause|resume|status).
        Signals: QUIT stop gracefully (running jobs finish); TERM/INT stop now (builds stopped, jobs \
        requeued; a second one kills the workers at once); USR1 abort the running jobs (requeued) and \
        go on; USR2 pause (take no new jobs); CONT resume; HUP reload the config and restart the \
        workers gracefully; TTIN/TTOU one worker more/less.
        As root the workers run as the config's `user`/`group`, or as root only with `allow_root: true` \
        (TWORKER_USER, TWORKER_GROUP, TWORKER_ALLOW_ROOT and TWORKER_WORKER_MEMORY override them for one run).
        """
    )

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        MemoryTuning.apply()
        // secrets.env is checked here once, so a bad one stops the start instead of every worker.
        let config = try global.load(secrets: true).config
        do {
            // Every worker would fail every job without them: say so once, before starting any.
            try ProgramLocator().check(Program.forStart(config))
        } catch {
            printError(error.description)
            throw ExitCode.failure
        }
        let settings = SupervisorSettings(config: config)
        let account: WorkerAccount?
        do {
            account = try WorkerAccount.resolve(settings)
            if account != nil && geteuid() == 0 { try ProgramLocator().check([.setpriv]) }
        } catch {
            printError(String(describing: error))
            throw ExitCode.failure
        }
        let paths = MasterPaths(stateDir: config.stateDir)
        let lock: MasterLock
        do {
            lock = try MasterLock(paths: paths)
        } catch let held as MasterLock.Held {
            printError(held.description)
            throw ExitCode.failure
        }
        defer { lock.release() }
        let logger = global.logger(config, label: "tworker.master")
        let global = global
        try await reportingFailures {
            let redis = try await RedisSetup.resolve(config, logger: logger)
            defer { redis.shutdown() }
            if let account, geteuid() == 0 {
                // Before the first worker starts as that account: the socket and its directories.
                try WorkerFileAccess.prepare(config, for: account)
            }
            let connection = RedisConnection(endpoint: redis.endpoint, connectTimeout: .seconds(2), commandTimeout: .seconds(5), logger: logger)
            defer { connection.close() }
            var arguments: [String] = []
            if let env = global.env { arguments += ["--env", env] }
            if let dir = global.configDir { arguments += ["--config-dir", dir] }
            if global.verbose { arguments.append("--verbose") }
            var setup = Master.Setup(
                executable: Self.ownExecutable(),
                arguments: arguments,
                loadConfig: {
                    try ConfigLoader(configDir: global.configDir, env: global.env, verbose: global.verbose ? true : nil).load().config
                },
                configDir: global.configDir ?? ProcessInfo.processInfo.environment["TWORKER_CONFIG_DIR"],
                pinnedEnvironment: redis.childEnvironment.merging(["TWORKER_STATE_DIR": Self.absolute(config.stateDir),
                                                                   "TWORKER_REDIS_NAMESPACE": config.redis.namespace]) { $1 },
                reaper: Master.processingReaper)
            // The listener's port is checked before any worker starts: no silent dashboard-less pool.
            let listen = config.http.listen.isEmpty ? nil : try ListenAddress(config.http.listen)
            if let listen { try PoolHTTPServer.checkAvailable(listen) }
            let keys = RedisKeys(namespace: config.redis.namespace, host: config.host)
            let metrics = listen.map { _ in PoolMetrics(host: config.host, version: TWorkerVersion.current) }
            setup.metrics = metrics
            let master = Master(config: config, settings: settings, account: account, setup: setup, redis: connection, logger: logger)
            let server = try ControlServer(path: paths.socket) { request in await master.control(request) }
            defer { server.close() }
            // QUIT is the group's graceful shutdown, so it is trapped before the first child starts.
            // The master returning (stopped, or a second TERM) ends the group rather than failing it.
            let service = ServiceGroupConfiguration.ServiceConfiguration(service: MasterService(master),
                                                                          successTerminationBehavior: .gracefullyShutdownGroup)
            var services = [service]
            var httpConnections: [RedisConnection] = []
            defer { httpConnections.forEach { $0.close() } }
            if let listen, let metrics {
                let open = { RedisConnection(endpoint: redis.endpoint, connectTimeout: .seconds(2), commandTimeout: .seconds(5), logger: logger) }
                httpConnections = [open(), open()]
                let api = PoolAPI(redis: httpConnections[0], keys: keys, retention: config.reporting.retention, logger: logger,
                                  status: { await master.control(ControlRequest(command: .status)).status },
                                  control: { await master.control($0) },
                                  draining: { await master.isStopping })
                let server = PoolHTTPServer(address: listen, api: api, metrics: metrics,
                                            followers: LogFollowers(endpoint: redis.endpoint, keys: keys, logger: logger),
                                            token: config.http.token,
                                            feed: MetricsFeed(metrics: metrics, keys: keys, redis: httpConnections[1], logger: logger), logger: logger)
                services.append(.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup))
            }
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigquit],
                                                                              logger: logger))
            try await group.run()
            let code = await master.exitCode ?? 0
            if code != 0 { throw ExitCode(code) }
        }
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(path)
    }

    /// The running binary's path (so a deploy that replaced it starts the new one on HUP).
    static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        var path = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
        return FileManager.default.isExecutableFile(atPath: path) ? path : "/proc/self/exe"
    }
}
