import Foundation

/// Who may do what over HTTP, decided without a server: `/health` is open to every caller
/// (autohealing and watchdogs poll it); with `http.token` set everything else needs
/// `Authorization: Bearer <token>` or the `tworker_token` cookie the login form sets; and a
/// request that changes something must come from the dashboard's own origin (no cross-site
/// form or fetch can cancel a job), token or not.
public struct HTTPAccess: Sendable {
    public enum Decision: Equatable, Sendable {
        case allowed
        /// 401: no token, or a wrong one.
        case unauthorized
        /// 403: a browser request from another origin.
        case crossOrigin(String)
    }

    public static let cookieName = "tworker_token"

    public var token: String?

    public init(token: String?) {
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// `headers` by lower-case name.
    public func decide(method: String, path: String, headers: [String: String]) -> Decision {
        if path == "/health" || path == "/login" || path.hasPrefix("/assets/") { return originCheck(method: method, headers: headers) }
        if let token {
            let bearer = headers["authorization"].flatMap { value -> String? in
                value.lowercased().hasPrefix("bearer ") ? String(value.dropFirst(7)).trimmingCharacters(in: .whitespaces) : nil
            }
            let cookie = headers["cookie"].flatMap { Self.cookie(Self.cookieName, in: $0) }
            guard [bearer, cookie].contains(where: { $0.map { Self.constantTimeEqual($0, token) } == true }) else { return .unauthorized }
        }
        return originCheck(method: method, headers: headers)
    }

    /// Browsers send `Origin` (and `Sec-Fetch-Site`) on every POST; a command-line client sends
    /// neither and is judged by its token alone.
    private func originCheck(method: String, headers: [String: String]) -> Decision {
        guard !["GET", "HEAD", "OPTIONS"].contains(method.uppercased()) else { return .allowed }
        if let site = headers["sec-fetch-site"], site != "same-origin", site != "none" {
            return .crossOrigin("Sec-Fetch-Site: \(site)")
        }
        if let origin = headers["origin"] {
            guard let host = headers["host"], origin == "http://\(host)" || origin == "https://\(host)" else {
                return .crossOrigin("Origin \(origin) is not this dashboard's")
            }
        }
        return .allowed
    }

    static func cookie(_ name: String, in header: String) -> String? {
        for part in header.split(separator: ";") {
            let pair = part.trimmingCharacters(in: .whitespaces)
            guard let equals = pair.firstIndex(of: "="), pair[..<equals] == name else { continue }
            return String(pair[pair.index(after: equals)...]).removingPercentEncoding
        }
        return nil
    }

    /// A comparison whose time does not tell how much of a guess was right.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for index in 0..<max(x.count, y.count) {
            difference |= (index < x.count ? x[index] : 0) ^ (index < y.count ? y[index] : 0)
        }
        return difference == 0
    }
}
