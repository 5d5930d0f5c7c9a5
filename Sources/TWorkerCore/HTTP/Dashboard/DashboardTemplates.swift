// The pages' Mustache templates. `{{x}}` is HTML-escaped by Mustache; nothing here uses the
// unescaped forms. The Content-Security-Policy allows only this origin's script and styles, so a
// value that ever slipped into the markup could still not run (defence in depth, not the
// escaping itself). Tests/browser/stub_api.py reads these literals too: keep each one a
// `static let NAME = #"""` literal with no interpolation.

extension DashboardPages {
    static let indexTemplate = #"""
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'">
        <title>tworker</title>
        <link rel="icon" href="data:,">
        <link rel="stylesheet" href="/assets/dashboard.css">
        <script src="/assets/dashboard.js" defer></script>
        </head>
        <body data-page="pool">
        <header class="top">
          <a class="brand" href="/">tworker</a>
          <span id="host-name" class="host-name"></span>
          <nav><a href="#pool">Pool</a><a href="#queues">Queues</a><a href="#jobs">Jobs</a><a href="#hosts">Hosts</a></nav>
          <span id="updated" class="updated"></span>
        </header>
        <div id="banner" class="banner" role="alert" hidden></div>
        <main>
          <section id="pool">
            <h2>Pool <span id="pool-summary" class="muted"></span></h2>
            <div class="table-wrap"><table>
              <thead><tr><th>VM</th><th>State</th><th>Job</th><th>Elapsed</th><th class="num">Jobs done</th><th class="num">RSS</th><th class="num">PID</th><th>Heartbeat</th><th></th></tr></thead>
              <tbody id="pool-rows"></tbody>
            </table></div>
          </section>
          <section id="queues">
            <h2>Queues</h2>
            <div class="table-wrap"><table class="narrow">
              <thead><tr><th>Queue</th><th class="num">Depth</th></tr></thead>
              <tbody id="queue-rows"></tbody>
            </table></div>
            <h3>Failed <span id="failed-count" class="muted"></span></h3>
            <div class="table-wrap"><table>
              <thead><tr><th>Queue</th><th>Failed</th><th>Reason</th><th>Payload</th></tr></thead>
              <tbody id="failed-rows"></tbody>
            </table></div>
          </section>
          <section id="jobs">
            <h2>Jobs
              <label class="filter">state
                <select id="job-filter">
                  <option value="">all</option>
                  <option>queued</option><option>received</option><option>started</option>
                  <option>passed</option><option>failed</option><option>errored</option>
                  <option>cancelled</option><option>requeued</option>
                </select>
              </label>
            </h2>
            <div class="table-wrap"><table>
              <thead><tr><th>Job</th><th>State</th><th>Queue</th><th>Worker</th><th class="num">Attempts</th><th>Queued</th><th class="num">Duration</th><th class="num">Exit</th><th>Error</th></tr></thead>
              <tbody id="job-rows"></tbody>
            </table></div>
          </section>
          <section id="hosts">
            <h2>Hosts</h2>
            <div id="host-list"></div>
          </section>
        </main>
        <noscript><p class="banner">This page needs JavaScript; the JSON API is under /api/.</p></noscript>
        </body>
        </html>

        """#

    static let jobTemplate = #"""
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'">
        <title>Job {{id}} · tworker</title>
        <link rel="icon" href="data:,">
        <link rel="stylesheet" href="/assets/dashboard.css">
        <script src="/assets/dashboard.js" defer></script>
        </head>
        <body data-page="job">
        <header class="top">
          <a class="brand" href="/">tworker</a>
          <nav><a href="/#pool">Pool</a><a href="/#jobs">Jobs</a></nav>
          <span id="updated" class="updated"></span>
        </header>
        <div id="banner" class="banner" role="alert" hidden></div>
        <main id="job-page" data-job-id="{{id}}">
          <section>
            <h1>Job <code id="job-id">{{id}}</code> <span id="job-state" class="state"></span></h1>
            <div class="actions">
              <button id="cancel" type="button" class="danger" hidden>Cancel</button>
              <span id="action-status" class="muted"></span>
            </div>
            <dl id="record" class="record"></dl>
          </section>
          <section>
            <h2>Log <span id="log-status" class="muted"></span></h2>
            <div id="log" class="log"></div>
          </section>
        </main>
        <noscript><p class="banner">This page needs JavaScript; the JSON API is under /api/.</p></noscript>
        </body>
        </html>

        """#

    static let loginTemplate = #"""
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'">
        <title>Log in · tworker</title>
        <link rel="icon" href="data:,">
        <link rel="stylesheet" href="/assets/dashboard.css">
        </head>
        <body data-page="login">
        <header class="top"><a class="brand" href="/">tworker</a></header>
        <main class="login">
          <section>
            <h1>Log in</h1>
            {{#error}}<p id="login-error" class="error">{{error}}</p>{{/error}}
            <form method="post" action="/login">
              <label for="token">Token (<code>http.token</code>)</label>
              <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
              <button type="submit">Log in</button>
            </form>
          </section>
        </main>
        </body>
        </html>

        """#
}
