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
        if config.redis.url == "embedded" {
            let server = try await EmbeddedRedis.startOrReuse(stateDir: config.stateDir, logger: logger)
            return RedisSetup(endpoint: server.endpoint, embedded: server, config: config, logger: logger)
        }
        return RedisSetup(endpoint: try RedisEndpoint(url: config.redis.url), embedded: nil, config: config, logger: logger)
    }

    /// A new connection; commands that block (BLMOVE, XREAD BLOCK) get their own.
    public func connect() -> RedisConnection {
        RedisConnection(endpoint: endpoint, connectTimeout: .seconds(5), commandTimeout: .seconds(30), logger: logger)
    }

    /// The URL that reaches this Redis, for children that must use the very same server.
    public var url: String {
        embedded.map { "unix://" + $0.socketPath } ?? config.redis.url
    }

    /// Leaves the embedded server (the last command using it stops it).
    public func shutdown() {
        embedded?.stop()
    }
}
