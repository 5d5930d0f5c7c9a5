import ArgumentParser
import Foundation
import Logging
import RedisClient
import TWorkerCore

/// Options every command takes: which config to load.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Environment: selects config/worker.<env>.yml (default: $TWORKER_ENV, $TRAVIS_ENV, development).")
    var env: String?

    @Option(name: .customLong("config-dir"), help: "Directory holding worker.<env>.yml and worker.yml (default: $TWORKER_CONFIG_DIR or ./config).")
    var configDir: String?

    @Flag(name: .long, help: "Log debug details (also VERBOSE=true).")
    var verbose = false

    /// Loads the effective config or exits 78 with every problem on its own line; `secrets`
    /// also reads `secrets.env` (the commands that run jobs).
    func load(vm: String? = nil, secrets: Bool = false) throws -> LoadedConfig {
        do {
            var loader = ConfigLoader(configDir: configDir, env: env, vm: vm, verbose: verbose ? true : nil)
            loader.readsSecrets = secrets
            return try loader.load()
        } catch {
            // Exactly `file:line: key: problem`, one per line, so editors and scripts can jump to them.
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(78)
        }
    }

    func logger(_ config: WorkerConfig, label: String = "tworker") -> Logger {
        var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = config.verbose ? .debug : .info
        return logger
    }
}

/// What a short-lived command needs to talk to Redis: the config, a logger, one connection
/// and the key names.
struct RedisSession {
    let config: WorkerConfig
    let logger: Logger
    let redis: RedisConnection
    let keys: RedisKeys
}

extension GlobalOptions {
    /// Loads the config, connects (starting the embedded Redis if that is the config's), runs
    /// `body`, and turns failures into one clear line and exit code 1.
    func withRedis(_ body: (RedisSession) async throws -> Void) async throws {
        let config = try load().config
        let logger = logger(config)
        try await reportingFailures {
            let signals = await ExitOnSignals.trap()
            defer { signals.cancel() }
            let setup = try await RedisSetup.resolve(config, logger: logger)
            defer { setup.shutdown() }
            signals.cleanUp { setup.shutdown() }
            let redis = setup.connect()
            defer { redis.close() }
            try await body(RedisSession(config: config, logger: logger, redis: redis,
                                        keys: RedisKeys(namespace: config.redis.namespace, host: config.host)))
        }
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data(("tworker: " + message.replacingOccurrences(of: "\n", with: "\ntworker: ") + "\n").utf8))
}

/// Turns anything thrown below into one clear line and exit code 1.
func reportingFailures<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as ExitCode {
        throw error
    } catch let error as CleanExit {
        throw error
    } catch {
        // A signal's cleanup ended what the command ran: its exit (128+signal) is on its way.
        while ExitOnSignals.isExiting { try? await Task.sleep(for: .seconds(1)) }
        printError("\(error)")
        throw ExitCode.failure
    }
}
