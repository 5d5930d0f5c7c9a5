import Logging
import Synchronization

/// Finding the master through Redis Sentinel, apart from any socket so the order and the
/// checks can be tested with fakes (`HiredisSession` plugs in real hiredis calls).
///
/// Each sentinel is asked in turn (`SENTINEL get-master-addr-by-name`); the server it names is
/// connected to (AUTH/SELECT included) and must say `master` to `ROLE` before it is trusted:
/// a sentinel that has not yet seen a failover names the old master, which may be back as a
/// replica. Anything short of a confirmed master moves on to the next sentinel.
public enum SentinelDiscovery {
    /// What one sentinel said and what came of it, for the error when none led to a master.
    public struct Attempt: Sendable, Equatable, CustomStringConvertible {
        public var sentinel: RedisEndpoint.HostPort
        public var outcome: String
        public var description: String { "\(sentinel): \(outcome)" }
    }

    /// The master's connection, where it is, and which sentinel (index into `sentinels`) named it.
    public struct Found<Connection> {
        public var connection: Connection
        public var master: RedisEndpoint.HostPort
        public var sentinelIndex: Int
    }

    /// Tries `sentinels` in order. `ask` returns the address a sentinel gives (nil: it does not
    /// know `masterName`); `open` connects to it (with AUTH/SELECT); `role` returns the first
    /// element of `ROLE`; `close` drops a connection that was not the master. Throws
    /// `RedisError.connectionFailed` (retryable) naming every sentinel's outcome.
    public static func discover<Connection>(
        sentinels: [RedisEndpoint.HostPort], masterName: String,
        ask: (RedisEndpoint.HostPort) throws -> RedisEndpoint.HostPort?,
        open: (RedisEndpoint.HostPort) throws -> Connection,
        role: (Connection) throws -> String,
        close: (Connection) -> Void
    ) throws -> Found<Connection> {
        var attempts: [Attempt] = []
        for (index, sentinel) in sentinels.enumerated() {
            let master: RedisEndpoint.HostPort
            do {
                guard let named = try ask(sentinel) else {
                    attempts.append(Attempt(sentinel: sentinel, outcome: "does not know master '\(masterName)'"))
                    continue
                }
                master = named
            } catch {
                attempts.append(Attempt(sentinel: sentinel, outcome: "\(error)"))
                continue
            }
            let connection: Connection
            do {
                connection = try open(master)
            } catch {
                attempts.append(Attempt(sentinel: sentinel, outcome: "names \(master): \(error)"))
                continue
            }
            do {
                let found = try role(connection)
                if found == "master" {
                    return Found(connection: connection, master: master, sentinelIndex: index)
                }
                attempts.append(Attempt(sentinel: sentinel, outcome: "names \(master), whose ROLE is \(found.isEmpty ? "unknown" : found)"))
            } catch {
                attempts.append(Attempt(sentinel: sentinel, outcome: "names \(master): ROLE failed: \(error)"))
            }
            close(connection)
        }
        let detail = attempts.map(\.description).joined(separator: "; ")
        throw RedisError.connectionFailed("no sentinel led to master '\(masterName)' (\(detail.isEmpty ? "no sentinels" : detail))")
    }

    /// The address in a `SENTINEL get-master-addr-by-name` reply; nil for the nil reply (an
    /// unknown master name). A malformed reply throws.
    public static func masterAddress(from reply: RedisReply) throws -> RedisEndpoint.HostPort? {
        if reply.isNull { return nil }
        if case let .error(message) = reply { throw RedisError.server(message) }
        guard let parts = reply.array, parts.count == 2, let host = parts[0].string, !host.isEmpty,
              let port = parts[1].int, (1...65535).contains(port) else {
            throw RedisError.server("unexpected reply to SENTINEL get-master-addr-by-name: \(reply)")
        }
        return RedisEndpoint.HostPort(host: host, port: Int(port))
    }

    /// The first element of a `ROLE` reply (`master`, `slave`, `sentinel`); "" when there is none.
    public static func role(from reply: RedisReply) throws -> String {
        if case let .error(message) = reply { throw RedisError.server(message) }
        return reply.array?.first?.string ?? ""
    }

    /// The new master in a `+switch-master` message for `masterName`
    /// (`<name> <old-ip> <old-port> <new-ip> <new-port>`); nil for another master or junk.
    public static func switchedMaster(in message: String, masterName: String) -> RedisEndpoint.HostPort? {
        let words = message.split(separator: " ")
        guard words.count == 5, words[0] == masterName, let port = Int(words[4]), (1...65535).contains(port) else { return nil }
        return RedisEndpoint.HostPort(host: String(words[3]), port: port)
    }

    /// True when a reply (or one inside an EXEC's results) is a `READONLY` error, or the
    /// `UNBLOCKED` a demotion gives a blocked read: the server was demoted under us, so the
    /// connection must go and the next call rediscover.
    public static func mentionsReadOnly(_ replies: [RedisReply]) -> Bool {
        let demoted: (RedisReply) -> Bool = { $0.errorCode == "READONLY" || $0.errorCode == "UNBLOCKED" }
        return replies.contains { reply in
            switch reply {
            case .error: demoted(reply)
            case let .array(inner): inner.contains(where: demoted)
            default: false
            }
        }
    }
}

/// One `+switch-master` subscription per process and sentinel set: on a failover it marks
/// every connection still on another master stale and interrupts any call blocked on one
/// (BLMOVE, XREAD BLOCK, a subscription), so it moves to the new master at once instead of
/// after a socket timeout. A lost subscription is made again on the next sentinel.
final class SentinelWatch: Sendable {
    private struct Key: Hashable {
        var sentinels: [RedisEndpoint.HostPort]
        var masterName: String
    }

    /// The registries of connections that use one master name; weak, so a closed connection
    /// needs no unregistering.
    private struct Members {
        var sockets: [WeakSockets] = []
    }

    private struct WeakSockets {
        weak var value: SocketRegistry?
    }

    private static let watches = Mutex<[Key: SentinelWatch]>([:])

    private let key: Key
    private let logger: Logger
    private let members = Mutex(Members())

    private init(key: Key, logger: Logger) {
        self.key = key
        self.logger = logger
    }

    /// Adds `sockets` to the watch of `sentinels`/`masterName`, starting the watch if none runs.
    static func register(_ sockets: SocketRegistry, sentinels: [RedisEndpoint.HostPort], masterName: String, logger: Logger) {
        let key = Key(sentinels: sentinels, masterName: masterName)
        let (watch, isNew) = watches.withLock { all -> (SentinelWatch, Bool) in
            if let running = all[key] { return (running, false) }
            let watch = SentinelWatch(key: key, logger: logger)
            all[key] = watch
            return (watch, true)
        }
        watch.members.withLock { members in
            members.sockets.removeAll { $0.value == nil }
            if !members.sockets.contains(where: { $0.value === sockets }) {
                members.sockets.append(WeakSockets(value: sockets))
            }
        }
        if isNew {
            Task.detached { await watch.run() }
        }
    }

    /// Every registered connection not on `master` is stale from now on.
    func masterSwitched(to master: RedisEndpoint.HostPort) {
        let live = members.withLock { members in
            members.sockets.removeAll { $0.value == nil }
            return members.sockets.compactMap(\.value)
        }
        for sockets in live { sockets.masterSwitched(to: master) }
    }

    /// Subscribes on one sentinel after another until no registered connection is left.
    private func run() async {
        var index = 0
        var delay: Duration = .milliseconds(100)
        while true {
            let done = Self.watches.withLock { all -> Bool in
                let empty = members.withLock { members in
                    members.sockets.removeAll { $0.value == nil }
                    return members.sockets.isEmpty
                }
                if empty { all[key] = nil }
                return empty
            }
            if done { return }
            let sentinel = key.sentinels[index % key.sentinels.count]
            index += 1
            let connection = RedisConnection(endpoint: RedisEndpoint(address: .tcp(host: sentinel.host, port: sentinel.port)),
                                             connectTimeout: .seconds(2), commandTimeout: .seconds(5), logger: logger)
            let started = ContinuousClock.now
            do {
                try await connection.subscribe("+switch-master") { [self] payload in
                    let message = String(decoding: payload, as: UTF8.self)
                    guard let master = SentinelDiscovery.switchedMaster(in: message, masterName: key.masterName) else { return }
                    logger.warning("redis failover: sentinel \(sentinel) says the master of '\(key.masterName)' is now \(master)")
                    masterSwitched(to: master)
                }
            } catch {
                logger.debug("+switch-master subscription on sentinel \(sentinel) lost", metadata: ["error": "\(error)"])
            }
            connection.close()
            // A subscription that held for a while starts the backoff afresh.
            if ContinuousClock.now - started > .seconds(10) { delay = .milliseconds(100) }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }
}
