import Foundation

/// `http.listen` taken apart: `127.0.0.1:9252`, `[::1]:9252`, `0.0.0.0:9252`, `localhost:9252`.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public init(_ text: String) throws(Invalid) {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw Invalid(description: "'\(text)' is not [address]:port")
            }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw Invalid(description: "'\(text)' is not host:port (e.g. 127.0.0.1:9252)")
            }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw Invalid(description: "'\(text)' names no address (e.g. 127.0.0.1:9252)") }
        guard let number = Int(port), (1...65535).contains(number) else {
            throw Invalid(description: "'\(text)': the port must be 1-65535")
        }
        self.host = String(host)
        self.port = number
    }

    /// Only this machine can connect.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
