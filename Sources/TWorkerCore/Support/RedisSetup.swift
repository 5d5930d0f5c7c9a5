import Foundation
import Logging
import RedisClient

/// The Redis a command talks to, resolved from `redis.url` (starting the embedded server
/// when that is what the config asks for).
public final class RedisSetup: Sendable {
    public let endpoint: RedisEndpoint
    public let embedded: EmbeddedRedis?
    let config: WorkerConfig
    let logger: Logger

    private init(endpoint: RedisEndpoint, embedded: EmbeddedRedis?, config: WorkerConfig, logger: Logger) {
        self.endpoint = endpoint
        self.embedded = embedded
        self.config = config
        self.logger = logger
    }

    public static func resolve(_ config: WorkerConfig, logger: Logger) async throws -> RedisSetup {
        if let endpoint = try externalEndpoint(config) {
            // A master's workers get the embedded socket as REDIS_URL: they are its users too,
            // or a command leaving after their master was killed would stop it under them.
            if case .unix(let socket) = endpoint.address, EmbeddedRedis.isSocket(socket, ofStateDir: config.stateDir) {
                let server = try await EmbeddedRedis.join(stateDir: config.stateDir)
                logger.debug("using the embedded redis-server of state_dir", metadata: ["socket": "\(socket)"])
                return RedisSetup(endpoint: endpoint, embedded: server, config: config, logger: logger)
            }
            return RedisSetup(endpoint: endpoint, embedded: nil, config: config, logger: logger)
        }
        let server = try await EmbeddedRedis.startOrReuse(stateDir: config.stateDir, logger: logger)
        return RedisSetup(endpoint: server.endpoint, embedded: server, config: config, logger: logger)
    }

    /// The endpoint of a Redis tworker does not run itself; nil for the embedded server.
    ///
    /// With `redis.sentinels` it is the master the sentinels name, found again on every
    /// (re)connect of every connection (see `SentinelDiscovery`); a `redis://` URL beside them
    /// gives only its credentials and database.
    public static func externalEndpoint(_ config: WorkerConfig) throws -> RedisEndpoint? {
        let redis = config.redis
        if !redis.sentinels.isEmpty {
            var sentinels: [RedisEndpoint.HostPort] = []
            for text in redis.sentinels {
                do throws(RedisURLError) {
                    sentinels.append(try RedisEndpoint.HostPort(parsing: text))
                } catch {
                    throw ConfigError(problems: ["redis.sentinels: \(error.message)"])
                }
            }
            guard let masterName = redis.masterName else {
                throw ConfigError(problems: ["redis.master_name: must be set with redis.sentinels"])
            }
            let base = redis.url.hasPrefix("redis://") ? try RedisEndpoint(url: redis.url) : nil
            return .sentinel(sentinels, masterName: masterName, credentialsFrom: base)
        }
        if redis.url == "embedded" { return nil }
        return try RedisEndpoint(url: redis.url)
    }

    /// What a master pins in its workers' environment so they use the very Redis it does,
    /// whatever their config files say by then.
    public var childEnvironment: [String: String] {
        var environment = ["REDIS_URL": url]
        if !config.redis.sentinels.isEmpty, let masterName = config.redis.masterName {
            environment["TWORKER_REDIS_SENTINELS"] = config.redis.sentinels.joined(separator: ",")
            environment["TWORKER_REDIS_MASTER_NAME"] = masterName
        }
        return environment
    }

    /// A new connection; commands that block (BLMOVE, XREAD BLOCK) get their own.
    public func connect() -> RedisConnection {
        RedisConnection(endpoint: endpoint, connectTimeout: .seconds(5), commandTimeout: .seconds(30), logger: logger)
    }

    /// `redis.wait_replicas`/`redis.wait_timeout` as the writes that must survive a failover use them.
    public var replicaWait: ReplicaWait? { ReplicaWait(config: config) }

    /// The URL that reaches this Redis, for children that must use the very same server.
    public var url: String {
        guard config.redis.usesEmbedded, let embedded else { return config.redis.url }
        return "unix://" + embedded.socketPath
    }

    /// Leaves the embedded server (the last process using it, a worker included, stops it).
    public func shutdown() {
        embedded?.stop()
    }
}
