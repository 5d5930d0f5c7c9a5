/// Where and how to reach one Redis server (TCP or unix socket, credentials, database).
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// The transport address of the server.
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
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
        }
    }
}

/// A Redis URL that could not be parsed; `description` is one line naming the problem.
public struct RedisURLError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { "redis.url: \(message)" }

    init(_ message: String) { self.message = message }
}

/// Hand-written parser: Foundation's URL accepts too much and its errors say nothing useful.
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
            throw fail("'\(shown)' uses TLS (rediss://), which is not supported")
        }
        let isUnix: Bool
        let rest: Substring
        if url.hasPrefix("redis://") {
            isUnix = false
            rest = url.dropFirst("redis://".count)
        } else if url.hasPrefix("unix://") {
            isUnix = true
            rest = url.dropFirst("unix://".count)
        } else {
            throw fail("'\(shown)' is not a redis:// or unix:// URL")
        }
        if rest.contains("#") {
            throw fail("'\(shown)' must not contain a fragment ('#')")
        }
        if rest.contains(where: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            throw fail("'\(shown)' contains whitespace")
        }

        // Split "authority/path?query".
        let beforeQuery: Substring
        var query: Substring?
        if let q = rest.firstIndex(of: "?") {
            beforeQuery = rest[..<q]
            query = rest[rest.index(after: q)...]
        } else {
            beforeQuery = rest
        }
        let authority: Substring
        let path: Substring
        if let slash = beforeQuery.firstIndex(of: "/") {
            authority = beforeQuery[..<slash]
            path = beforeQuery[slash...]
        } else {
            authority = beforeQuery
            path = ""
        }

        // Userinfo: everything before the last '@' of the authority.
        var username: String?
        var password: String?
        let hostPart: Substring
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            hostPart = authority[authority.index(after: at)...]
            guard let colon = userinfo.firstIndex(of: ":") else {
                throw fail("'\(shown)' has credentials without a password; write ':password@' or 'user:password@'")
            }
            let user = try decode(userinfo[..<colon], what: "user")
            let pass = try decode(userinfo[userinfo.index(after: colon)...], what: "password")
            username = user.isEmpty ? nil : user
            password = pass.isEmpty ? nil : pass
        } else {
            hostPart = authority
        }

        var database: Int?
        if let query {
            for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = parts[0]
                let value = parts.count > 1 ? parts[1] : ""
                switch key {
                case "db":
                    if database != nil { throw fail("'\(shown)' gives the database twice") }
                    database = try parseDatabase(value)
                case "password":
                    if password != nil { throw fail("'\(shown)' gives the password twice") }
                    let pass = try decode(value, what: "password")
                    password = pass.isEmpty ? nil : pass
                default:
                    throw fail("'\(shown)' has unknown query parameter '\(key)' (known: db, password)")
                }
            }
        }

        let address: RedisEndpoint.Address
        if isUnix {
            guard hostPart.isEmpty else {
                throw fail("'\(shown)' names a host; a unix URL looks like unix:///path/to/redis.sock")
            }
            guard path.count > 1, !path.hasSuffix("/") else {
                throw fail("'\(shown)' has no socket path; a unix URL looks like unix:///path/to/redis.sock")
            }
            address = .unix(path: String(path))
        } else {
            address = try parseHostPort(hostPart)
            if path.count > 1 {
                if database != nil { throw fail("'\(shown)' gives the database twice") }
                database = try parseDatabase(path.dropFirst())
            }
        }
        return RedisEndpoint(address: address, password: password, database: database ?? 0, username: username)
    }

    private func parseHostPort(_ text: Substring) throws -> RedisEndpoint.Address {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            // Bracketed IPv6 literal, e.g. [::1]:6379.
            guard let close = text.firstIndex(of: "]") else {
                throw fail("'\(shown)' has an unclosed '[' in the host")
            }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("'\(shown)' has junk after the IPv6 host") }
                portText = after.dropFirst()
            }
        } else {
            let colons = text.filter { $0 == ":" }.count
            if colons > 1 {
                throw fail("'\(shown)' has more than one ':' in host:port (put IPv6 hosts in brackets)")
            }
            if let colon = text.firstIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            } else {
                host = text
            }
        }
        guard !host.isEmpty else { throw fail("'\(shown)' has no host") }
        var port = 6379
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), portText.count <= 5,
                  let value = Int(portText), (1...65535).contains(value)
            else {
                throw fail("'\(shown)' has port '\(portText)', which is not in 1-65535")
            }
            port = value
        }
        return .tcp(host: String(host), port: port)
    }

    private func parseDatabase(_ text: Substring) throws -> Int {
        guard !text.isEmpty, text.allSatisfy(\.isASCIIDigit), text.count <= 9, let value = Int(text) else {
            throw fail("'\(shown)' has database '\(text)', which is not a non-negative integer")
        }
        return value
    }

    /// Percent-decodes one URL component; bad escapes or bad UTF-8 are errors, not silently kept.
    private func decode(_ text: Substring, what: String) throws -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(Self.hexValue),
                      let low = iterator.next().flatMap(Self.hexValue)
                else {
                    throw fail("'\(shown)' has a bad percent-escape in the \(what)")
                }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw fail("'\(shown)' has a \(what) that is not UTF-8 after percent-decoding")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
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
