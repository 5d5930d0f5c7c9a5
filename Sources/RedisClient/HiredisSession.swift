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
    /// Sentinel endpoint: the sentinels, the one that last named the master first.
    private var sentinelOrder: [RedisEndpoint.HostPort]?
    /// Sentinel endpoint: registered with the process's `+switch-master` watch.
    private var watching = false

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
        defer { sockets.endCall() }
        let timeout = socketTimeout ?? commandTimeout
        if socketTimeout != nil {
            redisSetTimeout(ctx, Self.makeTimeval(timeout))
        }
        let replies = try roundTrip(ctx, commands, timeout: timeout)
        if socketTimeout != nil, context == ctx {
            redisSetTimeout(ctx, Self.makeTimeval(commandTimeout))
        }
        if case .sentinel = endpoint.address, SentinelDiscovery.mentionsReadOnly(replies) {
            // The server was demoted (a failover): drop it, so the retry asks the sentinels again.
            logger.warning("redis master turned replica (READONLY); asking the sentinels again", metadata: ["endpoint": "\(endpoint)"])
            disconnect()
        }
        return replies
    }

    /// Reads one reply the server pushes without a command (pub/sub messages); waits without
    /// a socket timeout, so only the server, a network error or an interrupt ends the wait.
    func readPushed() throws -> RedisReply {
        let ctx = try connectedContext()
        defer { sockets.endCall() }
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

    /// The live context, opened if needed, with a call begun on it (`sockets.endCall()` ends it).
    private func connectedContext() throws -> UnsafeMutablePointer<redisContext> {
        if let context {
            if sockets.beginCall() { return context }
            // A failover made this connection stale (SentinelWatch): move to the new master.
            logger.info("redis master changed; reconnecting", metadata: ["endpoint": "\(endpoint)"])
            disconnect()
        }
        let (ctx, master) = try openConnection()
        context = ctx
        if connectedBefore { RedisConnection.reconnects.add(1, ordering: .relaxed) }
        connectedBefore = true
        sockets.publish(ctx.pointee.fd, master: master)
        _ = sockets.beginCall()
        if case let .sentinel(sentinels, masterName) = endpoint.address, !watching {
            watching = true
            SentinelWatch.register(sockets, sentinels: sentinels, masterName: masterName, logger: logger)
        }
        logger.debug("redis connected", metadata: ["endpoint": "\(endpoint)", "master": "\(master?.description ?? "-")"])
        return ctx
    }

    /// A connection with AUTH/SELECT done; for a Sentinel endpoint, to the confirmed master
    /// (which it returns too).
    private func openConnection() throws -> (UnsafeMutablePointer<redisContext>, RedisEndpoint.HostPort?) {
        switch endpoint.address {
        case let .tcp(host, port):
            return (try openPrepared(.tcp(host: host, port: port)), nil)
        case let .unix(path):
            return (try openPrepared(.unix(path: path)), nil)
        case let .sentinel(sentinels, masterName):
            let ordered = sentinelOrder ?? sentinels
            let found = try SentinelDiscovery.discover(
                sentinels: ordered, masterName: masterName,
                ask: { sentinel in try askSentinel(sentinel, masterName: masterName) },
                open: { master in try openPrepared(.tcp(host: master.host, port: master.port)) },
                role: { ctx in try SentinelDiscovery.role(from: try roundTrip(ctx, [[Array("ROLE".utf8)]], timeout: commandTimeout, owned: false)[0]) },
                close: { ctx in redisFree(ctx) })
            if found.sentinelIndex > 0 {
                // The sentinel that knew is asked first next time.
                var reordered = ordered
                reordered.insert(reordered.remove(at: found.sentinelIndex), at: 0)
                sentinelOrder = reordered
            }
            return (found.connection, found.master)
        }
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel, over a connection of its own.
    private func askSentinel(_ sentinel: RedisEndpoint.HostPort, masterName: String) throws -> RedisEndpoint.HostPort? {
        let ctx = try openSocket(.tcp(host: sentinel.host, port: sentinel.port))
        defer { redisFree(ctx) }
        // A sentinel answers from memory: a short limit keeps a hung one from stalling discovery.
        if connectTimeout > .zero { redisSetTimeout(ctx, Self.makeTimeval(connectTimeout)) }
        let command = ["SENTINEL", "get-master-addr-by-name", masterName].map { Array($0.utf8) }
        let reply = try roundTrip(ctx, [command], timeout: connectTimeout, owned: false)[0]
        return try SentinelDiscovery.masterAddress(from: reply)
    }

    /// Opens a socket and does AUTH/SELECT; frees it on any failure.
    private func openPrepared(_ address: RedisEndpoint.Address) throws -> UnsafeMutablePointer<redisContext> {
        let ctx = try openSocket(address)
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
            redisFree(ctx)
            throw error
        }
        return ctx
    }

    private func openSocket(_ address: RedisEndpoint.Address) throws -> UnsafeMutablePointer<redisContext> {
        let maybeContext: UnsafeMutablePointer<redisContext>?
        // A zero timeval would make hiredis give up at once, so zero means "no connect timeout".
        let limited = connectTimeout > .zero
        let shown: String
        switch address {
        case let .tcp(host, port):
            shown = RedisEndpoint.HostPort(host: host, port: port).description
            maybeContext = limited
                ? redisConnectWithTimeout(host, Int32(port), Self.makeTimeval(connectTimeout))
                : redisConnect(host, Int32(port))
        case let .unix(path):
            shown = path
            maybeContext = limited
                ? redisConnectUnixWithTimeout(path, Self.makeTimeval(connectTimeout))
                : redisConnectUnix(path)
        case .sentinel:
            throw RedisError.connectionFailed("\(endpoint): a sentinel address has no socket of its own")
        }
        // For a Sentinel endpoint the server in question is the one named, not the endpoint.
        let what = if case .sentinel = endpoint.address { shown } else { "\(endpoint)" }
        guard let ctx = maybeContext else {
            throw RedisError.connectionFailed("\(what): cannot allocate a hiredis context")
        }
        if ctx.pointee.err != 0 {
            let message = Self.errorText(ctx)
            redisFree(ctx)
            throw RedisError.connectionFailed("\(what): \(message)")
        }
        redisSetTimeout(ctx, Self.makeTimeval(commandTimeout))
        return ctx
    }

    /// AUTH/SELECT: any failure, reply or transport, means we could not connect.
    private func handshake(_ ctx: UnsafeMutablePointer<redisContext>, _ command: [[UInt8]], what: String) throws {
        let reply: RedisReply
        do {
            reply = try roundTrip(ctx, [command], timeout: commandTimeout, owned: false)[0]
        } catch let RedisError.connectionLost(message) {
            throw RedisError.connectionFailed("\(what) failed: \(message)")
        }
        if case let .error(message) = reply {
            throw RedisError.connectionFailed("\(endpoint): \(what) rejected: \(message)")
        }
    }

    // MARK: - Round trip

    /// `owned: false` for a context not (yet) the session's own: a failure leaves freeing it
    /// to the caller.
    private func roundTrip(
        _ ctx: UnsafeMutablePointer<redisContext>, _ commands: [[[UInt8]]], timeout: Duration, owned: Bool = true
    ) throws -> [RedisReply] {
        for command in commands where Self.append(ctx, command) != REDIS_OK {
            throw lost(ctx, timeout: timeout, owned: owned)
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(ctx, &raw) == REDIS_OK, let raw else {
                throw lost(ctx, timeout: timeout, owned: owned)
            }
            replies.append(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
            freeReplyObject(raw)
        }
        return replies
    }

    /// A failed read/write leaves the context unusable: free it (when `owned`) and describe why.
    private func lost(_ ctx: UnsafeMutablePointer<redisContext>, timeout: Duration, owned: Bool = true) -> RedisError {
        var message = Self.errorText(ctx)
        if message.isEmpty || message == String(cString: strerror(EAGAIN)) {
            message = timeout > .zero ? "no reply within \(timeout)" : "no reply"
        }
        logger.debug("redis connection lost", metadata: ["endpoint": "\(endpoint)", "error": "\(message)"])
        if context == ctx {
            disconnect()
        } else if owned {
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
