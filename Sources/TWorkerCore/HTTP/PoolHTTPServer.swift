import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The master's one HTTP listener (`http.listen`): `/health`, `/metrics`, the JSON API, the
/// live log stream and the dashboard. A `Service` in the master's `ServiceGroup`.
public struct PoolHTTPServer: Service {
    public let address: ListenAddress
    public let api: PoolAPI
    public let metrics: PoolMetrics
    public let followers: LogFollowers
    public let access: HTTPAccess
    public let feed: MetricsFeed?
    public let logger: Logger

    public init(address: ListenAddress, api: PoolAPI, metrics: PoolMetrics, followers: LogFollowers, token: String?,
                feed: MetricsFeed?, logger: Logger) {
        self.feed = feed
        self.address = address
        self.api = api
        self.metrics = metrics
        self.followers = followers
        access = HTTPAccess(token: token)
        self.logger = logger
    }

    /// A clear error before anything starts: `http.listen: 127.0.0.1:9252 is in use`.
    public static func checkAvailable(_ address: ListenAddress) throws {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(address.host, String(address.port), &hints, &found) == 0, let info = found else {
            throw ListenAddress.Invalid(description: "http.listen: cannot resolve \(address.host)")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            let reason = errno == EADDRINUSE ? "is in use" : "cannot be bound: \(String(cString: strerror(errno)))"
            throw ListenAddress.Invalid(description: "http.listen: \(address) \(reason)")
        }
    }

    public func run() async throws {
        let router = Router()
        router.add(middleware: AccessMiddleware(access: access))
        routes(router)
        let app = Application(router: router, configuration: .init(address: .hostname(address.host, port: address.port), serverName: "tworker"),
                              logger: logger)
        logger.info("HTTP listener on http://\(address)/ (metrics, health, API, dashboard)")
        let feedTask = feed.map { feed in Task { await feed.run() } }
        defer { feedTask?.cancel() }
        try await app.runService()
    }

    static func json(_ reply: PoolAPI.Reply) -> Response {
        Response(status: .init(code: reply.status), headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(string: reply.json)))
    }

    static func text(_ body: String, type: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: type], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    private func routes(_ router: Router<BasicRequestContext>) {
        let api = api
        let metrics = metrics
        let followers = followers
        router.get("/health") { _, _ in
            let health = await api.health()
            let workers = (try? await api.statusReport().workers.count) ?? 0
            return Self.json(.init(status: health.statusCode, json: health.json(host: api.keys.host, workers: workers)))
        }
        router.get("/metrics") { _, _ in
            if let report = try? await api.statusReport() { metrics.update(queues: report.queues, workers: report.workers) }
            return Self.text(metrics.render(), type: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("/api/status") { _, _ in Self.json(await api.statusJSON()) }
        router.get("/api/queues") { _, _ in Self.json(await api.queues()) }
        router.get("/api/hosts") { _, _ in Self.json(await api.hosts()) }
        router.get("/api/jobs") { request, _ in
            let query = request.uri.queryParameters
            let state = query.get("state").flatMap { $0.isEmpty ? nil : String($0) }
            return Self.json(await api.jobs(state: state, limit: query.get("limit").flatMap { Int($0) } ?? 100))
        }
        router.get("/api/jobs/:id") { _, context in Self.json(await api.job(try context.parameters.require("id"))) }
        router.get("/api/jobs/:id/log") { request, context in
            let from = request.uri.queryParameters.get("from").flatMap { Int($0) } ?? 1
            return Self.json(await api.log(try context.parameters.require("id"), from: from))
        }
        router.get("/api/jobs/:id/log/stream") { request, context in
            let id = try context.parameters.require("id")
            let lastSeen = request.headers[.init("Last-Event-ID")!].flatMap { Int($0) }.map { $0 + 1 }
            let from = lastSeen ?? request.uri.queryParameters.get("from").flatMap { Int($0) } ?? 1
            let chunks = await followers.follow(id, from: from, history: LogReader(redis: api.redis, keys: api.keys))
            let body = ResponseBody { writer in
                for await chunk in chunks {
                    try await writer.write(ByteBuffer(string: Self.serverSentEvent(chunk)))
                }
                try await writer.finish(nil)
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"], body: body)
        }
        router.post("/api/jobs/:id/cancel") { _, context in Self.json(await api.cancel(try context.parameters.require("id"))) }
        router.post("/api/workers/:vm/pause") { _, context in Self.json(await api.worker(try context.parameters.require("vm"), .pause)) }
        router.post("/api/workers/:vm/resume") { _, context in Self.json(await api.worker(try context.parameters.require("vm"), .resume)) }
        router.get("/") { _, _ in Self.text(DashboardPages.index(), type: "text/html; charset=utf-8") }
        router.get("/jobs/:id") { _, context in Self.text(DashboardPages.job(id: try context.parameters.require("id")), type: "text/html; charset=utf-8") }
        router.get("/assets/dashboard.js") { _, _ in Self.text(DashboardPages.script, type: "application/javascript; charset=utf-8") }
        router.get("/assets/dashboard.css") { _, _ in Self.text(DashboardPages.stylesheet, type: "text/css; charset=utf-8") }
        router.get("/login") { _, _ in Self.text(DashboardPages.login(error: nil), type: "text/html; charset=utf-8") }
        let token = access.token
        router.post("/login") { request, _ in
            var request = request
            let body = String(buffer: try await request.collectBody(upTo: 4096))
            let fields = Dictionary(body.split(separator: "&").compactMap { pair -> (String, String)? in
                let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "" }
                return parts.count == 2 ? (parts[0], parts[1]) : nil
            }, uniquingKeysWith: { $1 })
            guard let token, let given = fields["token"], HTTPAccess.constantTimeEqual(given, token) else {
                return Self.text(DashboardPages.login(error: "That token is not this master's."), type: "text/html; charset=utf-8", status: .unauthorized)
            }
            let cookie = "\(HTTPAccess.cookieName)=\(given.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""); Path=/; HttpOnly; SameSite=Strict"
            return Response(status: .seeOther, headers: [.location: "/", .setCookie: cookie])
        }
    }

    /// One log entry as an SSE event; the final entry is an `event: final`.
    static func serverSentEvent(_ chunk: LogChunk) -> String {
        var event = ""
        if !chunk.text.isEmpty {
            event += "id: \(chunk.number)\nevent: log\ndata: " + JSONValue.object(["n": .int(Int64(chunk.number)), "text": .string(chunk.text)]).jsonText + "\n\n"
        }
        if chunk.final { event += "id: \(chunk.number)\nevent: final\ndata: {\"n\":\(chunk.number)}\n\n" }
        return event
    }
}

/// `HTTPAccess` on every request: 401 without the token, 403 across origins.
struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    let access: HTTPAccess

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        // HTTP/1.1's Host header arrives as the request's authority, not among the fields.
        if let authority = request.head.authority { headers["host"] = authority }
        switch access.decide(method: request.method.rawValue, path: request.uri.path, headers: headers) {
        case .allowed:
            return try await next(request, context)
        case .unauthorized:
            if request.method == .get, !request.uri.path.hasPrefix("/api/"), request.uri.path != "/metrics" {
                return Response(status: .seeOther, headers: [.location: "/login"])
            }
            return PoolHTTPServer.json(PoolAPI.error(401, "a token is needed: Authorization: Bearer <http.token>"))
        case .crossOrigin(let why):
            return PoolHTTPServer.json(PoolAPI.error(403, "refused: \(why)"))
        }
    }
}
