/// One RESP2 reply from the server.
public enum RedisReply: Sendable, Equatable {
    case null
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case array([RedisReply])

    /// Status or bulk reply as UTF-8 text (invalid bytes are replaced); nil for other kinds.
    public var string: String? {
        switch self {
        case let .status(text): text
        case let .bulk(bytes): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// Integer reply, or a bulk/status reply holding a decimal integer.
    public var int: Int64? {
        switch self {
        case let .integer(value): value
        case .bulk, .status: string.flatMap { Int64($0) }
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisReply]? {
        if case let .array(elements) = self { elements } else { nil }
    }

    /// The raw bytes of a bulk reply.
    public var bytes: [UInt8]? {
        if case let .bulk(bytes) = self { bytes } else { nil }
    }

    /// True for the nil bulk / nil array reply.
    public var isNull: Bool {
        if case .null = self { true } else { false }
    }
}
