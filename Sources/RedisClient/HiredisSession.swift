import CHiredis
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The hiredis context of one connection. Confined to the connection's worker thread (that is
/// what makes the `@unchecked Sendable` sound); only `sockets` is touched from elsewhere.
final class HiredisSession: @unchecked Sendable {
    let endpoint: RedisEndpoint
    let connectTimeout: Duration
    let commandTimeout: Duration
    let logger: Logger
    let sockets = SocketRegistry()
    private var context: UnsafeMutablePointer<redisContext>?
    /// A connection opened after one was lost counts as a reconnect.
    private var connectedBefore = false

    init(endpoint: RedisEndpoint, connectTimeout: Duration, commandTimeout: Duration, logger: Logger) {
        self.endpoint = endpoint
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.logger = logger
    }

    deinit { disconnect() }

    /// Sends `commands` as one pipeline and reads one reply per command (connecting first if
    /// needed). `socketTimeout` replaces the command timeout for this call; `.zero` means none.
    func execute(_ commands: [[[UInt8]]], socketTimeout: Duration? = nil) throws -> [RedisReply] {
        let ctx = try connectedContext()
        let timeout = socketTimeout ?? commandTimeout
        if socketTimeout != nil {
            redisSetTimeout(ctx, Self.makeTimeval(timeout))
        }
        let replies = try roundTrip(ctx, commands, timeout: timeout)
        if socketTimeout != nil, context == ctx {
            redisSetTimeout(ctx, Self.makeTimeval(commandTimeout))
        }
        return replies
    }

    /// Reads one reply the server pushes without a command (pub/sub messages); waits without
    /// a socket timeout, so only the server, a network error or an interrupt ends the wait.
    func readPushed() throws -> RedisReply {
        let ctx = try connectedContext()
        redisSetTimeout(ctx, Self.makeTimeval(.zero))
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(ctx, &raw) == REDIS_OK, let raw else {
            throw lost(ctx, timeout: .zero)
        }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Frees the context (closing its socket); the next call reconnects.
    func disconnect() {
        guard let ctx = context else { return }
        context = nil
        sockets.retire { redisFree(ctx) }
    }

    // MARK: - Connecting

    private func connectedContext() throws -> UnsafeMutablePointer<redisContext> {
        if let context { return context }
        let ctx = try openSocket()
        context = ctx
        if connectedBefore { RedisConnection.reconnects.add(1, ordering: .relaxed) }
        connectedBefore = true
        sockets.publish(ctx.pointee.fd)
        do {
            if let password = endpoint.password {
                var auth: [[UInt8]] = [Array("AUTH".utf8)]
                if let user = endpoint.username { auth.append(Array(user.utf8)) }
                auth.append(Array(password.utf8))
                try handshake(ctx, auth, what: "AUTH")
            }
            if endpoint.database != 0 {
                try handshake(ctx, [Array("SELECT".utf8), Array(String(endpoint.database).utf8)], what: "SELECT")
            }
        } catch {
            disconnect()
            throw error
        }
        logger.debug("redis connected", metadata: ["endpoint": "\(endpoint)"])
        return ctx
    }

    private func openSocket() throws -> UnsafeMutablePointer<redisContext> {
        let maybeContext: UnsafeMutablePointer<redisContext>?
        // A zero timeval would make hiredis give up at once, so zero means "no connect timeout".
        let limited = connectTimeout > .zero
        switch endpoint.address {
        case let .tcp(host, port):
            maybeContext = limited
                ? redisConnectWithTimeout(host, Int32(port), Self.makeTimeval(connectTimeout))
                : redisConnect(host, Int32(port))
        case let .unix(path):
            maybeContext = limited
                ? redisConnectUnixWithTimeout(path, Self.makeTimeval(connectTimeout))
                : redisConnectUnix(path)
        }
        guard let ctx = maybeContext else {
            throw RedisError.connectionFailed("\(endpoint): cannot allocate a hiredis context")
        }
        if ctx.pointee.err != 0 {
            let message = Self.errorText(ctx)
            redisFree(ctx)
            throw RedisError.connectionFailed("\(endpoint): \(message)")
        }
        redisSetTimeout(ctx, Self.makeTimeval(commandTimeout))
        return ctx
    }

    /// AUTH/SELECT: any failure, reply or transport, means we could not connect.
    private func handshake(_ ctx: UnsafeMutablePointer<redisContext>, _ command: [[UInt8]], what: String) throws {
        let reply: RedisReply
        do {
            reply = try roundTrip(ctx, [command], timeout: commandTimeout)[0]
        } catch let RedisError.connectionLost(message) {
            throw RedisError.connectionFailed("\(what) failed: \(message)")
        }
        if case let .error(message) = reply {
            throw RedisError.connectionFailed("\(endpoint): \(what) rejected: \(message)")
        }
    }

    // MARK: - Round trip

    private func roundTrip(
        _ ctx: UnsafeMutablePointer<redisContext>, _ commands: [[[UInt8]]], timeout: Duration
    ) throws -> [RedisReply] {
        for command in commands where Self.append(ctx, command) != REDIS_OK {
            throw lost(ctx, timeout: timeout)
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(ctx, &raw) == REDIS_OK, let raw else {
                throw lost(ctx, timeout: timeout)
            }
            replies.append(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
            freeReplyObject(raw)
        }
        return replies
    }

    /// A failed read/write leaves the context unusable: free it and describe why.
    private func lost(_ ctx: UnsafeMutablePointer<redisContext>, timeout: Duration) -> RedisError {
        var message = Self.errorText(ctx)
        if message.isEmpty || message == String(cString: strerror(EAGAIN)) {
            message = timeout > .zero ? "no reply within \(timeout)" : "no reply"
        }
        logger.debug("redis connection lost", metadata: ["endpoint": "\(endpoint)", "error": "\(message)"])
        if context == ctx {
            disconnect()
        } else {
            sockets.retire { redisFree(ctx) }
        }
        return .connectionLost("\(endpoint): \(message)")
    }

    /// Appends one command with explicit lengths, so arguments may hold any bytes.
    private static func append(_ ctx: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) -> Int32 {
        // One contiguous buffer (plus a trailing byte so it is never empty) keeps every argv
        // pointer valid for the call; hiredis copies the formatted command before returning.
        var storage: [UInt8] = []
        storage.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        for argument in arguments { storage.append(contentsOf: argument) }
        storage.append(0)
        var lengths = arguments.map(\.count)
        return storage.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            var offset = 0
            for argument in arguments {
                pointers.append(base + offset)
                offset += argument.count
            }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeMutableBufferPointer { argvlen in
                    redisAppendCommandArgv(ctx, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
        }
    }

    private static func convert(_ pointer: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let reply = pointer.pointee
        switch reply.type {
        case REDIS_REPLY_STRING:
            return .bulk(bytes(reply.str, reply.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(reply.str, reply.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(reply.str, reply.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(reply.elements)
            for index in 0..<reply.elements {
                if let element = reply.element[index] {
                    elements.append(convert(element))
                } else {
                    elements.append(.null)
                }
            }
            return .array(elements)
        default:
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    private static func errorText(_ ctx: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: ctx.pointee.errstr) { raw in
            let bytes = raw.prefix(while: { $0 != 0 })
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    private static func makeTimeval(_ duration: Duration) -> timeval {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, duration > .zero else { return timeval(tv_sec: 0, tv_usec: 0) }
        // Round up so a tiny positive timeout never becomes 0, which means "no timeout".
        var micros = (attoseconds + 999_999_999_999) / 1_000_000_000_000
        var wholeSeconds = seconds
        if micros >= 1_000_000 {
            wholeSeconds += 1
            micros -= 1_000_000
        }
        return timeval(tv_sec: Int(wholeSeconds), tv_usec: Int(micros))
    }
}
