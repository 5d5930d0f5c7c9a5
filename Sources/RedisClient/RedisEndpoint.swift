import Foundation

/// Where and how to reach one Redis server (TCP or unix socket, or the master that Redis
/// Sentinel names; credentials, database).
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// The transport address of the server.
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
        /// Whichever server the sentinels name as `masterName`'s master, asked on every
        /// (re)connect, so a failover moves every connection to the new master.
        case sentinel(sentinels: [HostPort], masterName: String)
    }

    /// A `host:port` pair (a sentinel, or the master a sentinel names).
    public struct HostPort: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `host:port` or `[ipv6]:port`; the port is required (1-65535). The error is
        /// one line quoting the text.
        public init(parsing text: String) throws(RedisURLError) {
            let hostPart: Substring
            let portPart: Substring
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                    throw RedisURLError("'\(text)' is not host:port ([ipv6]:port for an IPv6 address)")
                }
                hostPart = text[text.index(after: text.startIndex)..<close]
                portPart = text[text.index(close, offsetBy: 2)...]
            } else {
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw RedisURLError("'\(text)' is not host:port ([ipv6]:port for an IPv6 address)")
                }
                (hostPart, portPart) = (parts[0], parts[1])
            }
            guard !hostPart.isEmpty, !hostPart.contains(where: { $0 == " " || $0 == "/" || $0 == "@" }) else {
                throw RedisURLError("'\(text)' has no valid host")
            }
            guard !portPart.isEmpty, portPart.count <= 5, portPart.allSatisfy(\.isASCIIDigit),
                  let port = Int(portPart), (1...65535).contains(port) else {
                throw RedisURLError("'\(text)' has port '\(portPart)', which is not in 1-65535")
            }
            self.init(host: String(hostPart), port: port)
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public var address: Address
    public var password: String?
    public var database: Int
    /// ACL user for `AUTH user password`; nil means the plain `AUTH password` form.
    public var username: String?

    /// Builds an endpoint from its parts.
    public init(address: Address, password: String? = nil, database: Int = 0, username: String? = nil) {
        self.address = address
        self.password = password
        self.database = database
        self.username = username
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]` and `unix://[[user]:password@]/path[?db=N]`.
    ///
    /// Both forms also accept the query parameters `db=N` and `password=P`. Percent-escapes in
    /// the user and password are decoded. A non-empty user selects the ACL form of AUTH.
    public init(url: String) throws {
        self = try RedisURLParser(url: url).parse()
    }

    /// The endpoint as a URL with the password masked, for logs.
    public var description: String {
        var credentials = ""
        if password != nil {
            credentials = "\(username ?? ""):***@"
        }
        switch address {
        case let .tcp(host, port):
            let shownHost = host.contains(":") ? "[\(host)]" : host
            return "redis://\(credentials)\(shownHost):\(port)/\(database)"
        case let .unix(path):
            return "unix://\(credentials)\(path)" + (database == 0 ? "" : "?db=\(database)")
        case let .sentinel(sentinels, masterName):
            return "sentinel://\(credentials)\(sentinels.map(\.description).joined(separator: ","))/\(masterName)/\(database)"
        }
    }

    /// The master `masterName` that `sentinels` name, with the credentials and database of
    /// `base` (whose own address is dropped: Sentinel says where the master is).
    public static func sentinel(_ sentinels: [HostPort], masterName: String, credentialsFrom base: RedisEndpoint? = nil) -> RedisEndpoint {
        RedisEndpoint(address: .sentinel(sentinels: sentinels, masterName: masterName), password: base?.password,
                      database: base?.database ?? 0, username: base?.username)
    }
}

/// A Redis URL that could not be parsed; `description` is one line naming the problem.
public struct RedisURLError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { "redis.url: \(message)" }

    init(_ message: String) { self.message = message }
}

/// URLComponents decomposes the URL; the checks around it cover what it returns nil for or
/// quietly accepts (a stray '%' re-encoded as "%25", an empty or out-of-range port, a fragment),
/// so that every error names the problem in one line.
private struct RedisURLParser {
    let url: String
    /// The URL with any password replaced, so errors can quote it safely.
    let shown: String

    init(url: String) {
        self.url = url
        self.shown = Self.mask(url)
    }

    func fail(_ message: String) -> RedisURLError { RedisURLError(message) }

    func parse() throws -> RedisEndpoint {
        if url.hasPrefix("rediss://") {
            throw fail("'\(shown)' uses TLS (rediss://), which hiredis 0.14 cannot speak; put Redis behind spiped or stunnel and use redis:// to the local end (README: \"Redis across hosts: spiped or stunnel\")")
        }
        // Exact, case-sensitive prefixes (URLComponents would take "REDIS:" or "redis:host").
        let isUnix = url.hasPrefix("unix://")
        guard isUnix || url.hasPrefix("redis://") else {
            throw fail("'\(shown)' is not a redis:// or unix:// URL")
        }
        if url.contains("#") {
            throw fail("'\(shown)' must not contain a fragment ('#')")
        }
        if url.contains(where: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            throw fail("'\(shown)' contains whitespace")
        }
        try checkPercentEscapes()
        let hostPort = Self.authority(of: url).hostPort
        guard let components = URLComponents(string: url) else { throw whyRejected(hostPort) }

        var username: String?
        var password: String?
        if let user = components.percentEncodedUser {
            guard let pass = components.percentEncodedPassword else {
                throw fail("'\(shown)' has credentials without a password; write ':password@' or 'user:password@'")
            }
            let decodedUser = try decode(user, what: "user")
            let decodedPass = try decode(pass, what: "password")
            username = decodedUser.isEmpty ? nil : decodedUser
            password = decodedPass.isEmpty ? nil : decodedPass
        }

        var database: Int?
        for item in components.percentEncodedQueryItems ?? [] where !(item.name.isEmpty && item.value == nil) {
            let value = item.value ?? ""
            switch item.name {
            case "db":
                if database != nil { throw fail("'\(shown)' gives the database twice") }
                database = try parseDatabase(Substring(value))
            case "password":
                if password != nil { throw fail("'\(shown)' gives the password twice") }
                let pass = try decode(value, what: "password")
                password = pass.isEmpty ? nil : pass
            default:
                throw fail("'\(shown)' has unknown query parameter '\(item.name)' (known: db, password)")
            }
        }

        let path = components.path
        let host = components.host ?? ""
        let address: RedisEndpoint.Address
        if isUnix {
            guard host.isEmpty else {
                throw fail("'\(shown)' names a host; a unix URL looks like unix:///path/to/redis.sock")
            }
            guard path.count > 1, !path.hasSuffix("/") else {
                throw fail("'\(shown)' has no socket path; a unix URL looks like unix:///path/to/redis.sock")
            }
            address = .unix(path: path)
        } else {
            guard !host.isEmpty else { throw fail("'\(shown)' has no host") }
            // URLComponents keeps the brackets of an IPv6 literal; getaddrinfo wants it bare.
            let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            address = .tcp(host: bare, port: try parsePort(hostPort))
            if path.count > 1 {
                if database != nil { throw fail("'\(shown)' gives the database twice") }
                database = try parseDatabase(Substring(path.dropFirst()))
            }
        }
        return RedisEndpoint(address: address, password: password, database: database ?? 0, username: username)
    }

    /// The raw `user:password` and `host:port` parts. URLComponents hides the port's text when
    /// it is empty or out of range, and says nothing when it rejects a URL.
    static func authority(of url: String) -> (userinfo: Substring?, hostPort: Substring) {
        guard let schemeEnd = url.range(of: "://") else { return (nil, "") }
        let rest = url[schemeEnd.upperBound...]
        let authority = rest[..<(rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex)]
        guard let at = authority.lastIndex(of: "@") else { return (nil, authority) }
        return (authority[..<at], authority[authority.index(after: at)...])
    }

    /// The port of a `host:port` text, 6379 when absent.
    private func parsePort(_ hostPort: Substring) throws -> Int {
        let afterHost = hostPort.hasPrefix("[") ? hostPort[(hostPort.firstIndex(of: "]") ?? hostPort.startIndex)...].dropFirst() : hostPort
        guard let colon = afterHost.firstIndex(of: ":") else { return 6379 }
        let portText = afterHost[afterHost.index(after: colon)...]
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), portText.count <= 5,
              let value = Int(portText), (1...65535).contains(value)
        else {
            throw fail("'\(shown)' has port '\(portText)', which is not in 1-65535")
        }
        return value
    }

    /// Why URLComponents refused the URL, in the terms of the one part that is wrong.
    private func whyRejected(_ hostPort: Substring) -> RedisURLError {
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                return fail("'\(shown)' has an unclosed '[' in the host")
            }
            if !hostPort[hostPort.index(after: close)...].hasPrefix(":") {
                return fail("'\(shown)' has junk after the IPv6 host")
            }
        } else if hostPort.filter({ $0 == ":" }).count > 1 {
            return fail("'\(shown)' has more than one ':' in host:port (put IPv6 hosts in brackets)")
        }
        do { _ = try parsePort(hostPort) } catch { return error as? RedisURLError ?? fail("'\(shown)' is not a valid URL") }
        return fail("'\(shown)' is not a valid URL")
    }

    private func parseDatabase(_ text: Substring) throws -> Int {
        guard !text.isEmpty, text.allSatisfy(\.isASCIIDigit), text.count <= 9, let value = Int(text) else {
            throw fail("'\(shown)' has database '\(text)', which is not a non-negative integer")
        }
        return value
    }

    /// A '%' without two hex digits is an error, not a literal: URLComponents would quietly
    /// re-encode it as "%25" and the server would see a different password.
    private func checkPercentEscapes() throws {
        let bytes = Array(url.utf8)
        for (i, byte) in bytes.enumerated() where byte == UInt8(ascii: "%") {
            let hex = bytes.dropFirst(i + 1).prefix(2)
            if hex.count == 2, hex.allSatisfy({ Self.isHexDigit($0) }) { continue }
            // Name the part: in the credentials, the user ends at the first ':'.
            var what = "URL"
            let offset = url.utf8.index(url.utf8.startIndex, offsetBy: i)
            if let userinfo = Self.authority(of: url).userinfo, userinfo.startIndex <= offset, offset < userinfo.endIndex {
                what = userinfo[..<offset].contains(":") ? "password" : "user"
            } else if let query = url.firstIndex(of: "?"), query < offset {
                let pair = url[..<offset].split(whereSeparator: { $0 == "?" || $0 == "&" }).last ?? ""
                what = pair.hasPrefix("password=") ? "password" : "query"
            }
            throw fail("'\(shown)' has a bad percent-escape in the \(what)")
        }
    }

    /// Percent-decodes one component (escapes already checked); bad UTF-8 is an error.
    private func decode(_ text: String, what: String) throws -> String {
        guard let decoded = text.removingPercentEncoding else {
            throw fail("'\(shown)' has a \(what) that is not UTF-8 after percent-decoding")
        }
        return decoded
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"): true
        default: false
        }
    }

    /// Replaces the password in `scheme://user:password@...` and `password=` query values with `***`.
    static func mask(_ url: String) -> String {
        var result = url
        if let schemeEnd = result.range(of: "://") {
            let afterScheme = result[schemeEnd.upperBound...]
            let authorityEnd = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? afterScheme.endIndex
            let authority = afterScheme[..<authorityEnd]
            if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
                result.replaceSubrange(result.index(after: colon)..<at, with: "***")
            }
        }
        if let query = result.firstIndex(of: "?") {
            let head = result[...query]
            let pairs = result[result.index(after: query)...].split(separator: "&", omittingEmptySubsequences: false)
            let masked = pairs.map { $0.hasPrefix("password=") ? "password=***" : String($0) }
            result = head + masked.joined(separator: "&")
        }
        return result
    }
}

private extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}
