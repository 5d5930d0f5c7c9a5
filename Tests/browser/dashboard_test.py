#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by Selenium 4, against a running tworker master (or Tests/browser/stub_api.py).

It checks, in order, and stops at the first failure:
  login     with --token: the login form sets the cookie and leads to the pool page
  pool      / shows one row per worker (--workers N), no value runs as HTML; at 1280 px and on
            a phone-sized viewport the page itself never scrolls sideways
  pause     with --pause-vm VM: Pause turns that worker `paused`, Resume turns it back
  log       /jobs/<--running-job> shows the running job's log, and it grows
            (with --expect-fold NAME / --expect-ansi / --expect-line TEXT: a collapsible stage
            NAME, coloured text, a line reading TEXT once \r and escapes are rendered)
  cancel    its Cancel button ends the job `cancelled`, the button goes, the live log stops
            (with --redis-cli-args: the job's record in Redis says `cancelled` too)
  xss       /jobs/<--xss-job>, whose log holds <script>window.xss=1</script> and
            <img src=x onerror=window.xss=1>, shows both as text and window.xss stays undefined
Screenshots of each step go to --screenshots DIR (created if missing; failure.png on a failure).

Exit status: 0 when every check passed; 1 with `dashboard test FAILED at <step>: <why>` on
stderr otherwise; 2 for a usage error.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

XSS_SCRIPT = "<script>window.xss=1</script>"
XSS_IMG = "<img src=x onerror=window.xss=1>"
FINAL_STATES = {"passed", "failed", "errored", "cancelled"}


class Failure(Exception):
    """A check that did not hold; the message says what was expected and what was seen."""


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="dashboard_test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the listener, e.g. http://127.0.0.1:9252")
    parser.add_argument("--workers", type=int, required=True, help="worker rows the pool must show")
    parser.add_argument("--running-job", required=True, help="id of a job that runs and writes its log meanwhile")
    parser.add_argument("--xss-job", required=True, help=f"id of a job whose log holds {XSS_SCRIPT} and {XSS_IMG}")
    parser.add_argument("--screenshots", required=True, help="directory for the PNG screenshots")
    parser.add_argument("--token", default="", help="http.token, entered in the login form first")
    parser.add_argument("--pause-vm", default="", help="a worker (idle) to pause and resume from the pool page")
    parser.add_argument("--expect-fold", default="", metavar="NAME", help="the running log has a travis_fold stage NAME")
    parser.add_argument("--expect-ansi", action="store_true", help="the running log has coloured (ANSI) text")
    parser.add_argument("--expect-line", action="append", default=[], metavar="TEXT",
                        help="the running log shows a line reading exactly TEXT (repeatable)")
    parser.add_argument("--redis-cli-args", default="",
                        help="redis-cli arguments reaching the master's Redis, e.g. '-p 6390'; "
                             "then the cancelled job's record is read from Redis too")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each wait may take (default 30)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver", help="the driver binary")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.base_url = args.base_url.rstrip("/")
    return args


# MARK: - Browser


def start_browser(args, profile):
    # Imported here so a missing Selenium is one clear message rather than a traceback.
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise Failure("Selenium is not installed (scripts/install-deps installs it: pip install selenium)")
    for path in (args.chromium, args.chromedriver):
        if not os.access(path, os.X_OK):
            raise Failure(f"{path} is missing (scripts/install-deps installs chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=args.chromedriver))
    except Exception as error:  # Selenium wraps every start failure differently
        raise Failure(f"headless Chromium did not start: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}")
    driver.set_page_load_timeout(args.timeout)
    driver.set_script_timeout(args.timeout)
    return driver


class Run:
    def __init__(self, args, driver):
        self.args = args
        self.driver = driver
        self.step = "start"
        self.checks = 0
        os.makedirs(args.screenshots, exist_ok=True)

    # MARK: - Helpers

    def ok(self, message):
        self.checks += 1
        print(f"ok: {self.step}: {message}", flush=True)

    def js(self, script, *arguments):
        return self.driver.execute_script(script, *arguments)

    def wait_for(self, what, condition, timeout=None):
        """Polls `condition` until it returns something truthy; fails naming `what` and the last value."""
        deadline = time.monotonic() + (timeout or self.args.timeout)
        value = None
        while True:
            try:
                value = condition()
            except Failure:
                raise
            except Exception as error:  # the page may be reloading between polls
                value = f"error: {error.__class__.__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                if time.monotonic() >= deadline:
                    raise Failure(f"timed out after {timeout or self.args.timeout:g} s waiting for {what} (last: {value})")
                time.sleep(0.2)
                continue
            if value and not (isinstance(value, str) and value.startswith("error: ")):
                return value
            if time.monotonic() >= deadline:
                raise Failure(f"timed out after {timeout or self.args.timeout:g} s waiting for {what} (last: {value!r})")
            time.sleep(0.2)

    def screenshot(self, name):
        path = os.path.join(self.args.screenshots, name)
        if not self.driver.save_screenshot(path):
            raise Failure(f"could not save the screenshot {path}")
        return path

    def open(self, path):
        self.driver.get(self.args.base_url + path)

    def job_path(self, job_id):
        return "/jobs/" + urllib.parse.quote(job_id, safe="")

    def banner(self):
        return self.js("const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : '';")

    def assert_no_injection(self, where):
        """Nothing from the data became markup: no xss flag, no injected script or img element."""
        time.sleep(0.5)  # an injected <img onerror> would fire once its load failed
        xss = self.js("return typeof window.xss === 'undefined' ? null : String(window.xss);")
        if xss is not None:
            raise Failure(f"{where}: window.xss is {xss}: a payload ran as HTML")
        injected = self.js("""
            const scripts = [...document.scripts].filter((s) => !s.src.endsWith('/assets/dashboard.js'));
            const images = [...document.images];
            return scripts.length + images.length;""")
        if injected:
            raise Failure(f"{where}: {injected} script or img element(s) in the page, which has none of its own")

    # MARK: - Steps

    def login(self):
        self.step = "login"
        self.open("/login")
        field = self.wait_for("the token field of /login", lambda: self.driver.find_elements("css selector", "input[name=token]"))[0]
        field.send_keys(self.args.token)
        self.screenshot("login.png")
        field.submit()
        self.wait_for("the pool page after logging in",
                      lambda: urllib.parse.urlsplit(self.driver.current_url).path == "/"
                      and self.js("return document.body.dataset.page;") == "pool")
        self.ok("the login form set the cookie and led to the pool page")

    def pool(self):
        self.step = "pool"
        self.open("/")

        def rows():
            count = self.js("return document.querySelectorAll('#pool-rows tr.worker').length;")
            return count == self.args.workers and count

        try:
            self.wait_for(f"{self.args.workers} worker rows in the pool", rows)
        except Failure as failure:
            banner = self.banner()
            raise Failure(f"{failure}{'; the page says: ' + banner if banner else ''}")
        vms = self.js("return [...document.querySelectorAll('#pool-rows tr.worker')].map((r) => r.dataset.vm + '=' + r.dataset.state);")
        self.ok(f"{len(vms)} worker rows: {', '.join(vms)}")
        self.wait_for("the queues, jobs and hosts sections filled in", lambda: self.js("""
            return document.querySelectorAll('#queue-rows tr').length > 0
                && document.querySelectorAll('#job-rows tr').length > 0
                && document.querySelectorAll('#host-list .host, #host-list p').length > 0;"""))
        self.ok("queues, jobs and hosts are shown")
        self.assert_no_injection("the pool page")
        self.check_width("at 1280 px")
        self.screenshot("pool-1280.png")
        self.phone(lambda: self.screenshot("pool-phone.png"))
        self.ok("no sideways scrolling of the page at 1280 px or on a phone")

    def check_width(self, where):
        overflow = self.js("return document.documentElement.scrollWidth - window.innerWidth;")
        if overflow > 1:
            raise Failure(f"{where} the page is {overflow} px wider than the window (a table should scroll in its own box)")

    def phone(self, then):
        """Runs `then` in a phone's viewport (390 x 844, mobile), after checking the width."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        try:
            time.sleep(0.3)
            self.check_width("on a phone (390 px)")
            then()
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def worker_state(self, vm):
        return self.js("""
            const row = [...document.querySelectorAll('#pool-rows tr.worker')].find((r) => r.dataset.vm === arguments[0]);
            return row ? row.dataset.state : null;""", vm)

    def click_worker_button(self, vm, kind):
        button = self.wait_for(f"the {kind} button of {vm}", lambda: self.js("""
            const row = [...document.querySelectorAll('#pool-rows tr.worker')].find((r) => r.dataset.vm === arguments[0]);
            return row ? row.querySelector('button.' + arguments[1]) : null;""", vm, kind))
        button.click()

    def pause(self):
        self.step = "pause"
        vm = self.args.pause_vm
        if self.worker_state(vm) is None:
            raise Failure(f"no row for {vm} in the pool")
        self.click_worker_button(vm, "pause")
        self.wait_for(f"{vm} to show paused", lambda: self.worker_state(vm) == "paused" or self.banner_failure())
        self.screenshot("pool-paused.png")
        self.ok(f"Pause turned {vm} paused")
        self.click_worker_button(vm, "resume")
        self.wait_for(f"{vm} to leave paused", lambda: self.worker_state(vm) not in ("paused", None) or self.banner_failure())
        self.ok(f"Resume turned {vm} {self.worker_state(vm)}")

    def banner_failure(self):
        banner = self.banner()
        if banner:
            raise Failure(f"the page reports: {banner}")
        return False

    def log_lines(self):
        return self.js("return document.querySelectorAll('#log .log-line:not(.live)').length;")

    def running_log(self):
        self.step = "log"
        job = self.args.running_job
        self.open(self.job_path(job))
        state = self.wait_for("the running job's record", lambda: self.js("return document.getElementById('job-state').textContent;") or self.banner_failure())
        if state in FINAL_STATES:
            raise Failure(f"job {job} is already {state}: it must still be running to watch its log grow")
        shown_id = self.js("return document.getElementById('job-id').textContent;")
        if shown_id != job:
            raise Failure(f"the page names the job {shown_id!r}, not {job!r}")
        first = self.wait_for("the first log line", lambda: self.log_lines())
        started = time.monotonic()
        second = self.wait_for(f"the log to grow past {first} lines", lambda: (self.log_lines() > first and self.log_lines()) or self.banner_failure())
        self.ok(f"the log grew from {first} to {second} lines in {time.monotonic() - started:.1f} s")
        text = self.js("return document.getElementById('log').textContent;")
        if "\x1b" in text:
            raise Failure("an escape character (ESC) shows in the rendered log")
        if self.args.expect_fold:
            fold = self.wait_for(f"the fold {self.args.expect_fold}", lambda: self.js("""
                return [...document.querySelectorAll('#log details.fold')].find((d) => d.dataset.fold === arguments[0]) || null;""",
                self.args.expect_fold))
            if "travis_fold:" in text:
                raise Failure("a travis_fold marker shows as text in the log")
            summary = fold.find_element("css selector", "summary")
            was_open = fold.get_attribute("open") is not None
            summary.click()
            now_open = fold.get_attribute("open") is not None
            if was_open == now_open:
                raise Failure(f"clicking the fold {self.args.expect_fold} did not toggle it")
            self.ok(f"the stage {self.args.expect_fold} is a collapsible fold")
        if self.args.expect_ansi:
            colours = self.wait_for("coloured text", lambda: self.js(
                "return [...new Set([...document.querySelectorAll('#log span')].map((s) => s.className))].filter((c) => /ansi-fg-/.test(c));"))
            self.ok(f"ANSI colours rendered as classes: {', '.join(sorted(colours)[:5])}")
        for expected in self.args.expect_line:
            self.wait_for(f"a log line reading {expected!r}", lambda: self.js("""
                return [...document.querySelectorAll('#log .log-line:not(.live)')].some((l) => l.textContent === arguments[0]);""",
                expected))
            self.ok(f"a line reads {expected!r}")
        self.screenshot("job-running.png")
        self.phone(lambda: self.screenshot("job-phone.png"))

    def cancel(self):
        self.step = "cancel"
        job = self.args.running_job
        buttons = self.driver.find_elements("css selector", "#cancel")
        if not buttons or not buttons[0].is_displayed():
            raise Failure("the running job's page shows no Cancel button")
        buttons[0].click()
        self.wait_for("the job page to show cancelled", lambda: self.js(
            "return document.getElementById('job-state').textContent;") == "cancelled" or self.banner_failure())
        self.wait_for("the Cancel button to go", lambda: not self.driver.find_element("css selector", "#cancel").is_displayed())
        self.wait_for("the live log to end (its final event)", lambda: self.js("return document.getElementById('job-page').dataset.logFinal === 'true';"))
        self.ok("Cancel ended the job cancelled; the button is gone and the live log ended")
        self.screenshot("job-cancelled.png")
        if self.args.redis_cli_args:
            command = ["redis-cli", *shlex.split(self.args.redis_cli_args), "HGET", f"tworker:job:{job}", "state"]

            def redis_state():
                result = subprocess.run(command, capture_output=True, text=True, timeout=10)
                return result.stdout.strip() == "cancelled" or f"{result.stdout.strip()!r} {result.stderr.strip()}"

            value = self.wait_for(f"tworker:job:{job} state = cancelled in Redis", redis_state)
            if value is not True:
                raise Failure(f"Redis says {value}")
            self.ok("Redis agrees: the job's record is cancelled")

    def xss(self):
        self.step = "xss"
        job = self.args.xss_job
        self.open(self.job_path(job))

        def payloads_shown():
            text = self.js("return document.getElementById('log').textContent;")
            return XSS_SCRIPT in text and XSS_IMG in text

        try:
            self.wait_for("both payloads shown as text in the log", lambda: payloads_shown() or self.banner_failure())
        except Failure as failure:
            text = self.js("return document.getElementById('log').textContent;")
            raise Failure(f"{failure}; the log shows {text[-300:]!r}")
        shown_id = self.js("return document.getElementById('job-id').textContent;")
        if shown_id != job:
            raise Failure(f"the page names the job {shown_id!r}, not {job!r}")
        self.assert_no_injection("the job page")
        self.screenshot("job-xss.png")
        self.ok("the payloads show as text; window.xss stays undefined")

    def console_errors(self):
        """Uncaught exceptions and CSP violations in the browser's console fail the run."""
        self.step = "console"
        try:
            entries = self.driver.get_log("browser")
        except Exception:
            return
        bad = [entry["message"] for entry in entries if entry.get("level") == "SEVERE"
               and ("Uncaught" in entry["message"] or "Content Security Policy" in entry["message"])]
        if bad:
            raise Failure("the page logged errors:\n  " + "\n  ".join(bad))
        self.ok("no script errors or CSP violations in the console")

    def run(self):
        if self.args.token:
            self.login()
        self.pool()
        if self.args.pause_vm:
            self.pause()
        self.running_log()
        self.cancel()
        self.xss()
        self.console_errors()


def main(argv):
    args = parse_arguments(argv)
    profile = tempfile.mkdtemp(prefix="tworker-chromium-")
    driver = None
    run = None
    try:
        driver = start_browser(args, profile)
        run = Run(args, driver)
        run.run()
    except Failure as failure:
        step = run.step if run else "start"
        if run:
            try:
                run.screenshot("failure.png")
            except Exception:
                pass
        print(f"dashboard test FAILED at {step}: {failure}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # a Selenium or driver error: still one clear line
        step = run.step if run else "start"
        print(f"dashboard test FAILED at {step}: {error.__class__.__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"dashboard test passed: {run.checks} checks; screenshots in {args.screenshots}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
