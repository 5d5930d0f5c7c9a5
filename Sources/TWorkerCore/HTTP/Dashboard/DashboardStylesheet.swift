extension DashboardPages {
    /// `GET /assets/dashboard.css` (text/css). Laid out for 1280 px and for a phone: tables keep
    /// their columns and scroll sideways inside their section rather than squeezing the page.
    public static let stylesheet: String = #"""
        :root {
          --bg: #f5f6f8; --fg: #1d2430; --muted: #667085; --line: #dde2ea; --card: #fff;
          --accent: #2457c5; --ok: #1a7f37; --bad: #c62828; --warn: #a15c00;
          --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
        }
        * { box-sizing: border-box; }
        html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
        body {
          margin: 0; background: var(--bg); color: var(--fg); font-size: 15px; line-height: 1.4;
          font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
        }
        a { color: var(--accent); }
        code { font-family: var(--mono); font-size: .95em; }
        [hidden] { display: none !important; }

        header.top {
          position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; align-items: center;
          gap: .3rem 1rem; padding: .55rem 1rem; background: #1d2430; color: #fff;
        }
        header.top a { color: #fff; text-decoration: none; }
        header.top nav { display: flex; flex-wrap: wrap; gap: .9rem; }
        header.top nav a { opacity: .8; }
        header.top nav a:hover { opacity: 1; }
        .brand { font-weight: 700; letter-spacing: .02em; }
        .host-name { opacity: .85; overflow-wrap: anywhere; }
        .updated { margin-left: auto; font-size: .85em; opacity: .7; }

        .banner { padding: .6rem 1rem; background: #fee2e2; color: #7f1d1d; border-bottom: 1px solid #fca5a5; }
        .banner a { color: inherit; font-weight: 600; }

        main { max-width: 1440px; margin: 0 auto; padding: 1rem; }
        main.login { max-width: 28rem; }
        section {
          background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: .8rem 1rem; margin-bottom: 1rem; min-width: 0;
        }
        h1 { font-size: 1.25rem; margin: .1rem 0 .7rem; overflow-wrap: anywhere; }
        h2 { font-size: 1.1rem; margin: 0 0 .6rem; display: flex; flex-wrap: wrap; align-items: baseline; gap: .3rem .8rem; }
        h3 { font-size: 1rem; margin: 1rem 0 .4rem; display: flex; flex-wrap: wrap; align-items: baseline; gap: .3rem .8rem; }
        h2 .muted, h3 .muted { font-size: .85rem; font-weight: 400; }
        .muted { color: var(--muted); }
        .error { color: var(--bad); font-size: .9em; white-space: normal; overflow-wrap: anywhere; }

        .table-wrap { max-width: 100%; overflow-x: auto; -webkit-overflow-scrolling: touch; }
        table { border-collapse: collapse; width: 100%; min-width: 640px; }
        table.narrow { min-width: 0; width: auto; }
        th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; vertical-align: top; }
        th { font-size: .78rem; font-weight: 600; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
        td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 14rem; max-width: 40rem; }
        .num { text-align: right; font-variant-numeric: tabular-nums; }
        tr.empty td { color: var(--muted); font-style: italic; }
        td details summary { cursor: pointer; color: var(--accent); }
        td pre { margin: .3rem 0 0; max-width: 40rem; white-space: pre-wrap; overflow-wrap: anywhere; font-family: var(--mono); font-size: .85em; }

        .state {
          display: inline-block; padding: .05rem .55rem; border-radius: 999px; font-size: .85rem;
          font-weight: 600; background: #e8ebf0; color: #344054; vertical-align: middle;
        }
        .state:empty { display: none; }
        .state-busy, .state-started, .state-received { background: #dbe7ff; color: #1d4ed8; }
        .state-idle, .state-passed { background: #dcfce7; color: var(--ok); }
        .state-paused, .state-maintenance, .state-queued, .state-requeued,
        .state-stopping, .state-starting, .state-draining { background: #fef3c7; color: var(--warn); }
        .state-broken, .state-failed, .state-errored { background: #fee2e2; color: var(--bad); }
        .state-cancelled { background: #e5e7eb; color: #374151; }

        button {
          font: inherit; font-size: .9rem; padding: .2rem .8rem; border-radius: 6px; cursor: pointer;
          border: 1px solid var(--line); background: #fff; color: var(--fg);
        }
        button:hover { border-color: var(--accent); }
        button.danger { border-color: var(--bad); color: var(--bad); }
        button:disabled { opacity: .5; cursor: default; }
        .actions { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem; margin-bottom: .7rem; }
        .actions:has(button[hidden]) { margin-bottom: .3rem; }

        .host { margin-bottom: 1rem; }
        .host h3 { margin-top: .2rem; }

        dl.record { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .25rem 1rem; margin: 0; }
        dl.record dt { font-weight: 600; color: var(--muted); }
        dl.record dd { margin: 0; font-family: var(--mono); font-size: .9em; white-space: pre-wrap; overflow-wrap: anywhere; }

        form { display: grid; gap: .5rem; }
        input[type=password] { font: inherit; padding: .4rem .5rem; border: 1px solid var(--line); border-radius: 6px; }

        /* The log: a terminal-like box that scrolls on its own, so the record above stays put. */
        .log {
          background: #0d1117; color: #d0d7de; font: 13px/1.45 var(--mono); padding: .5rem 0;
          border-radius: 6px; max-height: 75vh; overflow: auto;
        }
        .log:empty::before { content: "(no output yet)"; color: #6e7681; padding: 0 1rem; }
        .log-line { position: relative; min-height: 1.45em; padding: 0 .8rem 0 4rem; white-space: pre-wrap; overflow-wrap: anywhere; }
        .log-line::before {
          content: attr(data-n); position: absolute; left: 0; width: 3.2rem; text-align: right;
          color: #6e7681; user-select: none; -webkit-user-select: none;
        }
        .log-line.live { opacity: .85; }
        details.fold > summary { display: flex; align-items: baseline; cursor: pointer; list-style: none; }
        details.fold > summary::-webkit-details-marker { display: none; }
        details.fold > summary:hover { background: #161b22; }
        details.fold > summary .log-line { flex: 1; min-width: 0; }
        .fold-name {
          flex: none; margin: 0 .8rem; padding: 0 .45rem; border-radius: 4px; font-size: .8em;
          background: #30363d; color: #c9d1d9;
        }
        .fold-name::before { content: "\25B8  "; }
        details.fold[open] > summary .fold-name::before { content: "\25BE  "; }

        .ansi-bold { font-weight: 700; }
        .ansi-fg-30 { color: #6e7681; } .ansi-fg-31 { color: #ff7b72; } .ansi-fg-32 { color: #3fb950; }
        .ansi-fg-33 { color: #d29922; } .ansi-fg-34 { color: #58a6ff; } .ansi-fg-35 { color: #bc8cff; }
        .ansi-fg-36 { color: #39c5cf; } .ansi-fg-37 { color: #b1bac4; }
        .ansi-fg-90 { color: #8b949e; } .ansi-fg-91 { color: #ffa198; } .ansi-fg-92 { color: #56d364; }
        .ansi-fg-93 { color: #e3b341; } .ansi-fg-94 { color: #79c0ff; } .ansi-fg-95 { color: #d2a8ff; }
        .ansi-fg-96 { color: #56d4dd; } .ansi-fg-97 { color: #ffffff; }
        .ansi-bg-40 { background: #484f58; } .ansi-bg-41 { background: #8e1519; } .ansi-bg-42 { background: #116329; }
        .ansi-bg-43 { background: #7d4e00; } .ansi-bg-44 { background: #0c2d6b; } .ansi-bg-45 { background: #5a32a3; }
        .ansi-bg-46 { background: #0b5d63; } .ansi-bg-47 { background: #8b949e; }
        .ansi-bg-100 { background: #6e7681; } .ansi-bg-101 { background: #b62324; } .ansi-bg-102 { background: #1a7f37; }
        .ansi-bg-103 { background: #9a6700; } .ansi-bg-104 { background: #1f6feb; } .ansi-bg-105 { background: #8250df; }
        .ansi-bg-106 { background: #1b7c83; } .ansi-bg-107 { background: #d0d7de; }

        @media (max-width: 700px) {
          body { font-size: 14px; }
          main { padding: .5rem 0; }
          section { border-radius: 0; border-left: 0; border-right: 0; padding: .6rem .7rem; }
          .updated { margin-left: 0; width: 100%; }
          dl.record { grid-template-columns: minmax(0, 1fr); gap: 0; }
          dl.record dd { margin-bottom: .4rem; }
          .log { font-size: 12px; max-height: 70vh; }
          .log-line { padding-left: 2.9rem; }
          .log-line::before { width: 2.3rem; }
        }

        """#
}
