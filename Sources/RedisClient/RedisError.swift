/// Why a Redis command failed.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Could not connect (refused, no such socket, AUTH or SELECT rejected, ...).
    case connectionFailed(String)
    /// The connection died during a command (closed, reset, timed out): the command's fate is unknown.
    case connectionLost(String)
    /// The server answered with an error reply, e.g. "WRONGTYPE ...".
    case server(String)

    /// True for `connectionFailed` and `connectionLost`, the errors worth retrying.
    public var isConnectionError: Bool {
        switch self {
        case .connectionFailed, .connectionLost: true
        case .server: false
        }
    }

    public var description: String {
        switch self {
        case let .connectionFailed(message): "redis connection failed: \(message)"
        case let .connectionLost(message): "redis connection lost: \(message)"
        case let .server(message): "redis error reply: \(message)"
        }
    }
}
