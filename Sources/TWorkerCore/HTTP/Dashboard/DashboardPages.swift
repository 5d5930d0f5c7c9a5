import Mustache

/// The dashboard's HTML pages and assets, served by the master's HTTP listener.
///
/// The pages are shells: every value from Redis or a log reaches the browser through the JSON
/// API and is put into the page by `script` with `textContent`, never parsed as HTML. The only
/// value rendered here is a job id in `job(id:)`, which Mustache escapes (`{{id}}`).
/// Nothing is loaded from the network: the script and stylesheet are served by tworker itself.
public enum DashboardPages {
    /// `GET /`: the pool, queues, recent jobs and hosts, filled in and refreshed by the script.
    public static func index() -> String {
        Templates.index.render([String: Any]())
    }

    /// `GET /jobs/<id>`: one job's record and its live log.
    public static func job(id: String) -> String {
        Templates.job.render(["id": id])
    }

    /// `GET /login`: the form that posts `token` to `/login`; `error` is shown above it.
    public static func login(error: String?) -> String {
        var context: [String: Any] = [:]
        if let error, !error.isEmpty { context["error"] = error }
        return Templates.login.render(context)
    }

    /// The templates, parsed once. They are constants of this file's module: a parse error is a
    /// programming error that the unit tests and the first request show at once.
    enum Templates {
        static let index = parse(DashboardPages.indexTemplate, name: "index")
        static let job = parse(DashboardPages.jobTemplate, name: "job")
        static let login = parse(DashboardPages.loginTemplate, name: "login")

        private static func parse(_ text: String, name: String) -> MustacheTemplate {
            do {
                return try MustacheTemplate(string: text)
            } catch {
                fatalError("dashboard template \(name) does not parse: \(error)")
            }
        }
    }
}
