#!/usr/bin/env python3
"""A stand-in for the master's HTTP listener: the dashboard's real pages and assets, and the
JSON/SSE API of issue 12 over canned data, so the front-end runs in a real browser without
building tworker.

The pages, script and stylesheet are read from the Swift sources
(Sources/TWorkerCore/HTTP/Dashboard/*.swift, their `static let NAME = #\"\"\"` literals), so this
serves exactly what the master serves; only the Mustache rendering of `{{id}}` is redone here
(escaped the same way). One job ("running-1") writes its log while the stub runs, in chunks that
split lines, with ANSI colours, travis_fold stages and \\r progress; cancelling it ends it
`cancelled`. Another job's id and log carry XSS payloads.

    stub_api.py --port-file FILE [--port 0] [--workers 3] [--token T]

It binds 127.0.0.1 only, writes the port it got to --port-file once it listens, and runs until
it gets SIGTERM/SIGINT.
"""

import argparse
import html
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD_SOURCES = os.path.join(ROOT, "Sources", "TWorkerCore", "HTTP", "Dashboard")

RUNNING_JOB = "running-1"
XSS_JOB = "xss-<img src=x onerror=window.xss=1>"
FINAL_STATES = {"passed", "failed", "errored", "cancelled"}
# A server-sent stream gives up after this long, so a forgotten browser never pins a thread.
STREAM_LIMIT_SECONDS = 600


# MARK: - The Swift literals


def swift_literals(folder):
    """Every `static let NAME = #\"\"\"...\"\"\"#` in the folder, with Swift's indentation stripping."""
    pattern = re.compile(
        r'static let (\w+)(?:\s*:\s*String)?\s*=\s*#"""\n(.*?)\n([ \t]*)"""#', re.DOTALL
    )
    literals = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".swift"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as source:
            text = source.read()
        for match in pattern.finditer(text):
            indent = match.group(3)
            lines = match.group(2).split("\n")
            literals[match.group(1)] = "\n".join(
                line[len(indent):] if line.startswith(indent) else line.lstrip(" \t") for line in lines
            )
    missing = {"indexTemplate", "jobTemplate", "loginTemplate", "script", "stylesheet"} - literals.keys()
    if missing:
        sys.exit(f"stub_api: no Swift literal named {', '.join(sorted(missing))} in {folder}")
    return literals


def render(template, context):
    """The Mustache subset the templates use: {{#name}}...{{/name}} sections and escaped {{name}}."""

    def section(match):
        return render(match.group(2), context) if context.get(match.group(1)) else ""

    template = re.sub(r"\{\{#(\w+)\}\}(.*?)\{\{/\1\}\}", section, template, flags=re.DOTALL)
    return re.sub(r"\{\{(\w+)\}\}", lambda m: html.escape(str(context.get(m.group(1), "")), quote=True), template)


# MARK: - Canned pool


def iso(moment):
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now():
    return datetime.now(timezone.utc)


class Pool:
    """The stub's whole state, behind one lock: workers, job records and logs."""

    def __init__(self, workers, log_interval):
        self.lock = threading.Lock()
        self.log_interval = log_interval
        started = now()
        self.workers = []
        for index in range(1, workers + 1):
            self.workers.append({
                "vm": f"worker-{index}", "state": "idle", "pid": 4000 + index, "job": "",
                "job_started_at": None, "jobs_done": 10 * index, "rss_kib": 28000 + 700 * index,
                "heartbeat_at": iso(started), "error": "",
            })
        self.workers[0].update(state="busy", job=RUNNING_JOB, job_started_at=iso(started - timedelta(seconds=75)))
        if workers >= 3:
            self.workers[2].update(error="<b>not bold</b>: a worker error shown as text")
        self.jobs = {}
        self.logs = {}
        self.final = {}
        base = started - timedelta(minutes=30)
        for index, (state, exit_code) in enumerate([("passed", "0"), ("failed", "1"), ("errored", ""), ("passed", "0")]):
            queued = base + timedelta(minutes=index * 5)
            self.add_job(f"done-{index + 1}", state=state, exit_code=exit_code, queued=queued,
                         started=queued + timedelta(seconds=2), finished=queued + timedelta(seconds=64),
                         log=[f"build done-{index + 1}\n", f"\x1b[{'32' if state == 'passed' else '31'}mresult: {state}\x1b[0m\n"])
        self.add_job(XSS_JOB, state="failed", exit_code="1", queued=started - timedelta(minutes=3),
                     started=started - timedelta(minutes=3), finished=started - timedelta(minutes=2),
                     error="<script>window.xss=1</script>",
                     log=["$ echo payloads\n", "<script>window.xss=1</script>\n",
                          "<img src=x onerror=window.xss=1>\n", "\x1b[31m</div><b>still text</b>\x1b[0m\n"])
        self.add_job(RUNNING_JOB, state="started", exit_code="", queued=started - timedelta(seconds=80),
                     started=started - timedelta(seconds=75), finished=None, log=[])
        self.jobs[RUNNING_JOB]["worker"] = "h1:worker-1"
        self.script = running_log_script()
        self.writer = threading.Thread(target=self.write_running_log, daemon=True)
        self.writer.start()

    def add_job(self, job_id, state, exit_code, queued, started, finished, log, error=""):
        self.jobs[job_id] = {
            "id": job_id, "state": state, "queue": "builds", "worker": "h1:worker-2", "attempts": "1",
            "queued_at": iso(queued), "started_at": iso(started), "finished_at": iso(finished) if finished else "",
            "exit_code": exit_code, "error": error, "repository": "https://example.invalid/acme/app.git",
        }
        self.logs[job_id] = list(log)
        self.final[job_id] = state in FINAL_STATES

    def write_running_log(self):
        """Appends the running job's next chunk every interval until it is cancelled (bounded)."""
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            time.sleep(self.log_interval)
            with self.lock:
                if self.final[RUNNING_JOB]:
                    return
                self.logs[RUNNING_JOB].append(next(self.script))
                for worker in self.workers:
                    worker["heartbeat_at"] = iso(now())

    def cancel(self, job_id):
        with self.lock:
            if job_id not in self.jobs:
                return 404, {"error": f"no job {job_id}"}
            if self.final[job_id]:
                return 409, {"error": f"job {job_id} is already {self.jobs[job_id]['state']}"}
            self.logs[job_id].append("\n\x1b[31;1mCancelled from the dashboard.\x1b[0m\n")
            self.jobs[job_id].update(state="cancelled", finished_at=iso(now()), error="cancelled")
            self.final[job_id] = True
            for worker in self.workers:
                if worker["job"] == job_id:
                    worker.update(state="idle", job="", job_started_at=None, jobs_done=worker["jobs_done"] + 1)
            return 200, {"ok": True}

    def set_paused(self, vm, paused):
        with self.lock:
            worker = next((w for w in self.workers if w["vm"] == vm), None)
            if worker is None:
                return 404, {"error": f"no worker {vm}"}
            if paused and worker["state"] == "busy":
                return 409, {"error": f"{vm} is busy: stub pauses idle workers only"}
            worker["state"] = "paused" if paused else "idle"
            return 200, {"ok": True}

    def status(self):
        with self.lock:
            # The shape of `tworker status --json` (StatusReport), which /api/status serves.
            workers = []
            for worker in self.workers:
                shown = {k: v for k, v in worker.items() if k not in ("job_started_at", "error")}
                shown["host"] = "h1"
                if worker["job_started_at"]:
                    started = datetime.fromisoformat(worker["job_started_at"].replace("Z", "+00:00"))
                    shown["job_elapsed"] = (now() - started).total_seconds()
                if worker["error"]:
                    shown["last_error"] = worker["error"]
                workers.append(shown)
            return {"source": "master", "host": "h1", "master": {"pid": os.getpid(), "env": "test", "uptime": 1.0,
                    "started_at": iso(now())}, "paused": False, "workers": workers, "queues": [], "failed": 0}

    def queues(self):
        return {
            "queues": [{"name": "builds", "depth": 3}, {"name": "builds.linux", "depth": 0}],
            "failed": [{
                "queue": "builds", "error": "<script>window.xss=1</script> payload did not decode",
                "failed_at": iso(now() - timedelta(minutes=7)),
                "payload": json.dumps({"class": "Travis::Build", "args": [{"id": "bad<i>1</i>"}]}),
            }],
        }

    def job_list(self, state, limit):
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda job: job["queued_at"], reverse=True)
            rows = []
            for job in jobs:
                if state and job["state"] != state:
                    continue
                duration = None
                if job["started_at"] and job["finished_at"]:
                    duration = (parse_iso(job["finished_at"]) - parse_iso(job["started_at"])).total_seconds()
                rows.append({key: job[key] for key in (
                    "id", "state", "queue", "worker", "attempts", "queued_at", "started_at", "finished_at",
                    "exit_code", "error")} | {"duration_seconds": duration})
            return {"jobs": rows[:limit]}

    def job(self, job_id):
        with self.lock:
            record = self.jobs.get(job_id)
            return dict(record) if record else None

    def log(self, job_id, start):
        """(entries from `start`, final, next) or None for an unknown job."""
        with self.lock:
            if job_id not in self.logs:
                return None
            chunks = self.logs[job_id]
            start = max(1, start)
            entries = [{"n": n, "text": chunks[n - 1]} for n in range(start, len(chunks) + 1)]
            return entries, self.final[job_id], len(chunks) + 1

    def hosts(self):
        with self.lock:
            beat = max(worker["heartbeat_at"] for worker in self.workers)
            return {"hosts": [
                {"host": "h1", "last_heartbeat": beat, "draining": False,
                 "workers": [{key: w[key] for key in ("vm", "state", "job", "pid", "heartbeat_at")} for w in self.workers]},
                {"host": "h2<script>", "last_heartbeat": iso(now() - timedelta(seconds=40)), "draining": True,
                 "workers": [{"vm": "worker-1", "state": "stopping", "job": "", "pid": 777, "heartbeat_at": iso(now() - timedelta(seconds=40))}]},
            ]}


def parse_iso(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def running_log_script():
    """The running build's output, chunk by chunk: split lines, colours, folds, \\r progress."""
    yield "travis_fold:start:system_info\r\x1b[0K\x1b[33;1mBuild system information\x1b[0m\n"
    yield "Build language: swift\nBuild image: tworker-stub\n"
    yield "travis_fold:end:system_info\r\x1b[0K\n"
    yield "travis_fold:start:git.checkout\r\x1b[0K\x1b[32;1m$ git clone --depth=50 https://example.invalid/acme/app.git\x1b[0m\n"
    yield "Receiving objects:  12% (1/8)\rReceiving objects:  50% (4/8)\r"
    yield "Receiving objects: 100% (8/8), done.\n"
    yield "travis_fold:end:git.checkout\r\x1b[0K\n"
    yield "\x1b]0;window title\x07\x1b[1m$ make test\x1b[0m\n"
    step = 0
    while True:
        step += 1
        yield f"test {step:03d} ... "
        yield f"\x1b[{'32' if step % 7 else '33'}m{'ok' if step % 7 else 'slow'}\x1b[0m\n"


# MARK: - HTTP


class Handler(BaseHTTPRequestHandler):
    server_version = "tworker-stub"
    pool: Pool
    literals: dict
    token: str

    def log_message(self, format, *args):
        if os.environ.get("STUB_VERBOSE"):
            super().log_message(format, *args)

    # Responses

    def send(self, status, body, content_type, headers=()):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def json(self, status, body):
        self.send(status, json.dumps(body), "application/json")

    def redirect(self, location, headers=()):
        self.send(303, "", "text/plain", [("Location", location), *headers])

    # Auth: the master's rules, as far as the browser sees them.

    def authorized(self):
        if not self.token:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.token}":
            return True
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        return "tworker_token" in cookie and cookie["tworker_token"].value == self.token

    def same_origin(self):
        origin = self.headers.get("Origin")
        return origin is not None and origin == f"http://{self.headers.get('Host', '')}"

    # Routes

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        if path == "/health":
            return self.json(200, {"status": "ok"})
        if path == "/login":
            return self.send(200, render(self.literals["loginTemplate"], {}), "text/html; charset=utf-8")
        if path == "/assets/dashboard.js":
            return self.send(200, self.literals["script"], "application/javascript; charset=utf-8")
        if path == "/assets/dashboard.css":
            return self.send(200, self.literals["stylesheet"], "text/css; charset=utf-8")
        if not self.authorized():
            if path.startswith("/api/"):
                return self.json(401, {"error": "a token is needed: log in"})
            return self.redirect("/login")
        if path == "/":
            return self.send(200, render(self.literals["indexTemplate"], {}), "text/html; charset=utf-8")
        if path.startswith("/jobs/"):
            return self.send(200, render(self.literals["jobTemplate"], {"id": path[len("/jobs/"):]}), "text/html; charset=utf-8")
        if path == "/api/status":
            return self.json(200, self.pool.status())
        if path == "/api/queues":
            return self.json(200, self.pool.queues())
        if path == "/api/hosts":
            return self.json(200, self.pool.hosts())
        if path == "/api/jobs":
            limit = int(query.get("limit", ["100"])[0])
            return self.json(200, self.pool.job_list(query.get("state", [""])[0], limit))
        match = re.fullmatch(r"/api/jobs/(.+?)(/log|/log/stream)?", path)
        if match:
            job_id, tail = match.group(1), match.group(2)
            start = int(query.get("from", ["1"])[0])
            if tail is None:
                record = self.pool.job(job_id)
                return self.json(200, record) if record else self.json(404, {"error": f"no job {job_id}"})
            if tail == "/log":
                log = self.pool.log(job_id, start)
                if log is None:
                    return self.json(404, {"error": f"no job {job_id}"})
                entries, final, next_entry = log
                return self.json(200, {"entries": entries, "final": final, "next": next_entry})
            return self.stream(job_id, start)
        return self.json(404, {"error": f"no route {path}"})

    def stream(self, job_id, start):
        if self.pool.log(job_id, start) is None:
            return self.json(404, {"error": f"no job {job_id}"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        deadline = time.monotonic() + STREAM_LIMIT_SECONDS
        next_entry = max(1, start)
        try:
            while time.monotonic() < deadline:
                entries, final, _ = self.pool.log(job_id, next_entry)
                for entry in entries:
                    self.wfile.write(f"id: {entry['n']}\nevent: log\ndata: {json.dumps(entry)}\n\n".encode())
                    next_entry = entry["n"] + 1
                if final:
                    self.wfile.write(f"event: final\ndata: {json.dumps({'n': next_entry - 1})}\n\n".encode())
                    self.wfile.flush()
                    return
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_POST(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        if path == "/login":
            token = urllib.parse.parse_qs(body).get("token", [""])[0]
            if self.token and token != self.token:
                return self.send(401, render(self.literals["loginTemplate"], {"error": "That token is not http.token."}),
                                 "text/html; charset=utf-8")
            return self.redirect("/", [("Set-Cookie", f"tworker_token={token}; Path=/; HttpOnly; SameSite=Strict")])
        if not self.same_origin():
            return self.json(403, {"error": "cross-origin request refused"})
        if not self.authorized():
            return self.json(401, {"error": "a token is needed: log in"})
        match = re.fullmatch(r"/api/jobs/(.+)/cancel", path)
        if match:
            return self.json(*self.pool.cancel(match.group(1)))
        match = re.fullmatch(r"/api/workers/([^/]+)/(pause|resume)", path)
        if match:
            return self.json(*self.pool.set_paused(match.group(1), match.group(2) == "pause"))
        return self.json(404, {"error": f"no route {path}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--port-file", required=True, help="where to write the port once listening")
    parser.add_argument("--workers", type=int, default=3, help="workers in the pool (default 3)")
    parser.add_argument("--token", default="", help="require this token, as http.token does")
    parser.add_argument("--log-interval", type=float, default=0.4, help="seconds between the running job's log chunks")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    Handler.pool = Pool(args.workers, args.log_interval)
    Handler.literals = swift_literals(DASHBOARD_SOURCES)
    Handler.token = args.token
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    temporary = args.port_file + ".tmp"
    with open(temporary, "w") as port_file:
        port_file.write(str(server.server_address[1]))
    os.replace(temporary, args.port_file)  # whole, so a reader never sees a partial number
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
