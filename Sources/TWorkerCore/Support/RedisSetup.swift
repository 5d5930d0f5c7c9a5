import Foundation
import Logging
import RedisClient

/// The Redis a command talks to, resolved from `redis.url` (starting the embedded server
/// when that is what the config asks for).
public final class RedisSetup: Sendable {
    public let endpoint: RedisEndpoint
    public let embedded: EmbeddedRedis?
    let logger: Logger

    private init(endpoint: RedisEndpoint, embedded: EmbeddedRedis?, logger: Logger) {
        self.endpoint = endpoint
        self.embedded = embedded
        self.logger = logger
    }

    public static func resolve(_ config: WorkerConfig, logger: Logger) async throws -> RedisSetup {
        if config.redis.url == "embedded" {
            let server = try await EmbeddedRedis.startOrReuse(stateDir: config.stateDir, logger: logger)
            return RedisSetup(endpoint: server.endpoint, embedded: server, logger: logger)
        }
        return RedisSetup(endpoint: try RedisEndpoint(url: config.redis.url), embedded: nil, logger: logger)
    }

    /// A new connection; commands that block (BLMOVE, XREAD BLOCK) get their own.
    public func connect() -> RedisConnection {
        RedisConnection(endpoint: endpoint, connectTimeout: .seconds(5), commandTimeout: .seconds(30), logger: logger)
    }

    /// Stops the embedded server if this process started it.
    public func shutdown() {
        embedded?.stop()
    }
}
