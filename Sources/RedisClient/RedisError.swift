/// Why a Redis command failed.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Could not connect (refused, no such socket, AUTH or SELECT rejected, ...).
    case connectionFailed(String)
    /// The connection died during a command (closed, reset, timed out): the command's fate is unknown.
    case connectionLost(String)
    /// The server answered with an error reply, e.g. "WRONGTYPE ...".
    case server(String)

    /// Error codes a server answers while it cannot serve for a moment: after a restart
    /// (`LOADING`), during a long script (`BUSY`), on a replica cut off from or demoted from its
    /// master (`MASTERDOWN`, `READONLY`, and `UNBLOCKED` to a blocking read the demotion ended),
    /// or while a cluster settles (`TRYAGAIN`, `CLUSTERDOWN`). Nothing was done, so the same
    /// command can be sent again once the server is back.
    public static let transientCodes: Set<String> = ["LOADING", "BUSY", "MASTERDOWN", "READONLY", "UNBLOCKED", "TRYAGAIN", "CLUSTERDOWN"]

    /// True for `connectionFailed` and `connectionLost`.
    public var isConnectionError: Bool {
        switch self {
        case .connectionFailed, .connectionLost: true
        case .server: false
        }
    }

    /// The error reply's code (its first word, e.g. `LOADING`, `WRONGTYPE`); nil for connection errors.
    public var code: Substring? {
        guard case let .server(message) = self else { return nil }
        return Self.code(of: message)
    }

    /// True for an error reply that a retry can cure (see `transientCodes`).
    public var isTransient: Bool {
        guard case let .server(message) = self else { return false }
        return Self.isTransient(message)
    }

    /// True when sending the command again may succeed: a connection error or a transient reply.
    public var isRetryable: Bool { isConnectionError || isTransient }

    /// The first word of an error reply's text.
    public static func code(of message: String) -> Substring {
        message.prefix(while: { $0 != " " })
    }

    /// True for the text of an error reply whose code is in `transientCodes`.
    public static func isTransient(_ message: String) -> Bool {
        transientCodes.contains(String(code(of: message)))
    }

    public var description: String {
        switch self {
        case let .connectionFailed(message): "redis connection failed: \(message)"
        case let .connectionLost(message): "redis connection lost: \(message)"
        case let .server(message): "redis error reply: \(message)"
        }
    }
}

extension Array where Element == RedisReply {
    /// Checks every reply of a write pipeline, returning them when none is an error.
    ///
    /// A transient error anywhere (including an `EXECABORT` whose queueing hit one, or an EXEC
    /// answering nil) throws a transient `RedisError.server`, so `withRedisRetry` sends the whole
    /// pipeline again; any other error reply, also one inside an EXEC's results, throws a
    /// non-transient one. `accepting` names error replies that mean the write is already done
    /// (e.g. a retried `XADD` with an explicit id).
    public func checkedForWrite(accepting: (String) -> Bool = { _ in false }) throws -> [RedisReply] {
        // In a MULTI/EXEC pipeline the last reply is EXEC's: an array of results when it ran.
        let transaction = contains(.status("QUEUED")) || contains { $0.errorCode == "EXECABORT" }
        var firstError: String?
        for (index, reply) in enumerated() {
            switch reply {
            case let .error(message) where accepting(message):
                continue
            case let .error(message):
                if RedisError.isTransient(message) { throw RedisError.server(message) }
                firstError = firstError ?? message
            case let .array(results) where transaction && index == count - 1:
                // The transaction ran, so an error among its results will not go away.
                for case let .error(message) in results where !accepting(message) {
                    firstError = firstError ?? message
                }
            case .null where transaction && index == count - 1:
                // EXEC answering nil: nothing ran (a watched key changed), so it can run again.
                throw RedisError.server("TRYAGAIN the transaction did not run (EXEC returned nil)")
            default:
                continue
            }
        }
        if let firstError { throw RedisError.server(firstError) }
        return self
    }
}

extension RedisReply {
    /// An error reply's code (`LOADING`, `WRONGTYPE`, ...); nil for other replies.
    public var errorCode: Substring? {
        if case let .error(message) = self { RedisError.code(of: message) } else { nil }
    }
}

extension RedisConnection {
    /// Sends a write pipeline and checks every reply (see `checkedForWrite`): a transient error
    /// reply throws a retryable error, any other error reply a final one.
    public func checkedPipeline(_ commands: [[String]], accepting: (String) -> Bool = { _ in false }) async throws -> [RedisReply] {
        try await pipeline(commands).checkedForWrite(accepting: accepting)
    }

    /// Binary-safe `checkedPipeline`.
    public func checkedPipeline(bytes commands: [[[UInt8]]], accepting: (String) -> Bool = { _ in false }) async throws -> [RedisReply] {
        try await pipeline(bytes: commands).checkedForWrite(accepting: accepting)
    }
}
