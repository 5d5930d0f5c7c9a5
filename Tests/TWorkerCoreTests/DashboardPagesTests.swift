import Testing
@testable import TWorkerCore

/// The dashboard's HTML as rendered: escaping of the one value it holds, and nothing from the
/// network. The pages' behaviour in a browser is Tests/browser/dashboard_test.py's.
@Suite struct DashboardPagesTests {
    static let hostile = #"<script>alert("x")</script>&'"#

    @Test func jobPageEscapesTheIdEverywhereItAppears() {
        let page = DashboardPages.job(id: Self.hostile)
        #expect(!page.contains("<script>alert"))
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        #expect(page.contains(#"data-job-id="\#(escaped)""#))
        #expect(page.contains(#"<code id="job-id">\#(escaped)</code>"#))
        #expect(page.contains("<title>Job \(escaped) · tworker</title>"))
    }

    @Test func loginPageShowsAnEscapedErrorOnlyWhenThereIsOne() {
        let withError = DashboardPages.login(error: "<b>wrong</b> token")
        #expect(withError.contains(#"<p id="login-error" class="error">&lt;b&gt;wrong&lt;/b&gt; token</p>"#))
        #expect(withError.contains(#"<form method="post" action="/login">"#))
        #expect(withError.contains(#"name="token""#))
        for page in [DashboardPages.login(error: nil), DashboardPages.login(error: "")] {
            #expect(!page.contains("login-error"))
        }
    }

    @Test func pagesLoadOnlyTworkersOwnAssets() {
        for page in [DashboardPages.index(), DashboardPages.job(id: "1"), DashboardPages.login(error: nil)] {
            #expect(page.hasPrefix("<!DOCTYPE html>"))
            #expect(page.contains(#"<link rel="stylesheet" href="/assets/dashboard.css">"#))
            #expect(!page.contains("src=\"http"))
            #expect(!page.contains("href=\"http"))
            #expect(!page.contains("//cdn"))
        }
        #expect(DashboardPages.index().contains(#"<script src="/assets/dashboard.js" defer></script>"#))
        #expect(DashboardPages.index().contains(#"<body data-page="pool">"#))
        #expect(DashboardPages.job(id: "1").contains(#"<body data-page="job">"#))
        #expect(!DashboardPages.script.contains("http://") && !DashboardPages.script.contains("https://"))
        #expect(!DashboardPages.stylesheet.contains("http://") && !DashboardPages.stylesheet.contains("https://"))
    }

    /// The script builds the page with textContent only: no HTML parser entry point appears.
    @Test func scriptNeverParsesValuesAsHTML() {
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            #expect(!DashboardPages.script.contains(sink), "dashboard.js uses \(sink)")
        }
        #expect(DashboardPages.script.contains("credentials: 'same-origin'"))
        #expect(DashboardPages.script.contains("new EventSource("))
    }
}
