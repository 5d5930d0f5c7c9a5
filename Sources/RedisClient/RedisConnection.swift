import Logging
import Synchronization

/// One Redis connection whose hiredis calls all run on a dedicated OS thread.
///
/// Calls from concurrent tasks are queued and run one at a time, in order. The connection is
/// opened lazily and reopened by the next call after it dies. Cancelling the calling task
/// interrupts an in-flight call (the socket is shut down and reopened on the next call) and
/// throws `CancellationError`; calls made after `close()` also throw `CancellationError`.
public final class RedisConnection: Sendable {
    /// Connections this process opened again after losing one (`tworker_redis_reconnects_total`).
    public static let reconnects = Atomic<Int>(0)

    /// The server this connection talks to.
    public let endpoint: RedisEndpoint
    let worker: RedisWorker
    private let commandTimeout: Duration

    /// Creates the connection (and its thread) without connecting yet.
    public init(
        endpoint: RedisEndpoint,
        connectTimeout: Duration = .seconds(5),
        commandTimeout: Duration = .seconds(30),
        logger: Logger = Logger(label: "tworker.redis")
    ) {
        self.endpoint = endpoint
        self.commandTimeout = commandTimeout
        let session = HiredisSession(
            endpoint: endpoint, connectTimeout: connectTimeout, commandTimeout: commandTimeout, logger: logger)
        worker = RedisWorker(session: session)
    }

    deinit { worker.stop() }

    /// Sends one command; an error reply throws `RedisError.server`.
    public func send(_ arguments: [String]) async throws -> RedisReply {
        try await send(bytes: arguments.map { Array($0.utf8) })
    }

    /// Sends one binary-safe command; an error reply throws `RedisError.server`.
    public func send(bytes arguments: [[UInt8]]) async throws -> RedisReply {
        try await single(arguments, socketTimeout: nil)
    }

    /// Sends all commands in one round trip; error replies come back as `.error` elements.
    public func pipeline(_ commands: [[String]]) async throws -> [RedisReply] {
        try await pipeline(bytes: commands.map { $0.map { Array($0.utf8) } })
    }

    /// Binary-safe `pipeline`.
    public func pipeline(bytes commands: [[[UInt8]]]) async throws -> [RedisReply] {
        if commands.isEmpty { return [] }
        try commands.forEach(Self.validate)
        return try await worker.submit { session in try session.execute(commands) }
    }

    /// Sends a blocking command (BLMOVE, BLPOP, XREAD BLOCK, ...) with the socket timeout raised
    /// to `blockTimeout + commandTimeout` for this call; a `blockTimeout` of zero (block forever)
    /// disables the socket timeout for the call.
    public func sendBlocking(_ arguments: [String], blockTimeout: Duration) async throws -> RedisReply {
        try await sendBlocking(bytes: arguments.map { Array($0.utf8) }, blockTimeout: blockTimeout)
    }

    /// Binary-safe `sendBlocking`.
    public func sendBlocking(bytes arguments: [[UInt8]], blockTimeout: Duration) async throws -> RedisReply {
        let socketTimeout = blockTimeout > .zero && commandTimeout > .zero ? blockTimeout + commandTimeout : .zero
        return try await single(arguments, socketTimeout: socketTimeout)
    }

    /// Subscribes to `channel` and hands each message's payload to `onMessage` until the task is
    /// cancelled (throws CancellationError) or the connection fails (throws a connection error).
    /// The connection is dedicated to the subscription meanwhile; give it a connection of its own.
    public func subscribe(_ channel: String, onMessage: @escaping @Sendable ([UInt8]) -> Void) async throws {
        let command: [[UInt8]] = [Array("SUBSCRIBE".utf8), Array(channel.utf8)]
        _ = try await worker.submit { session -> Bool in
            do {
                _ = try session.execute([command], socketTimeout: .zero)
                while true {
                    let reply = try session.readPushed()
                    if let parts = reply.array, parts.count == 3, parts[0].string == "message", case .bulk(let data) = parts[2] {
                        onMessage(data)
                    }
                }
            } catch {
                // A connection left in subscribe mode answers nothing else: never reuse it.
                session.disconnect()
                throw error
            }
        }
    }

    /// Closes the socket after the calls queued before it; the next call connects again (for a
    /// Sentinel endpoint, to the master the sentinels name by then). The connection stays usable.
    public func reconnect() async {
        _ = try? await worker.submit { session in session.disconnect() }
    }

    /// Closes the connection and stops its thread; interrupts an in-flight call. Idempotent.
    public func close() {
        worker.stop()
    }

    private func single(_ arguments: [[UInt8]], socketTimeout: Duration?) async throws -> RedisReply {
        try Self.validate(arguments)
        let replies = try await worker.submit { session in
            try session.execute([arguments], socketTimeout: socketTimeout)
        }
        if case let .error(message) = replies[0] {
            throw RedisError.server(message)
        }
        return replies[0]
    }

    /// An empty command gets no reply from Redis, so waiting for one would hang.
    private static func validate(_ command: [[UInt8]]) throws {
        if command.isEmpty { throw RedisError.server("ERR empty command (client side)") }
    }
}

extension RedisConnection {
    /// `send("SET", "key", "value")`.
    public func send(_ arguments: String...) async throws -> RedisReply {
        try await send(arguments)
    }
}
