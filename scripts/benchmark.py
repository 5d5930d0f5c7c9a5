#!/usr/bin/env python3
"""Benchmark of tworker against a private redis-server on 127.0.0.1 (python3 stdlib only).

Sections, each printed with its goal and PASS/MISS:
  1. throughput       500 `script: true` jobs, one `work --burst` worker (best of --rounds)
  2. checkout         50 jobs cloning a local git repo, beside a plain bash loop doing the same (best of --rounds)
  3. latency          200 jobs enqueued ~20 ms apart to a running worker: queued_at -> started_at
  4. log              one job printing 64 MiB: MiB/s, log stream size, peak and idle RSS
  4b. log-secrets     the same job with 6 secrets (secure, redacted by name, secrets.env), each line
                      printing one of them: MiB/s and that no secret reached the stream
  7. master           `tworker start` with vms.count 8: start -> all idle in Redis, total RSS of master + workers
  8. qemu             provider: qemu with the test guest (boxes/qemu/build-test-image): `tworker vms import`
                      of 2 workers (boot-to-SSH per VM); one worker, jobs one at a time to a VM restored and
                      paused: enqueue -> first log entry; jobs back to back: finished_at -> next started_at
                      (reset-to-SSH); qemu RSS per VM; two workers: jobs/min.  Skipped without qemu.
  9. replication      the same `script: true` jobs as section 1 with a replica attached, without and with
                      `redis.wait_replicas: 1` (WAIT after the move into processing and after the final
                      commit): the cost per job; and one write + `WAIT 1` against the write alone

Everything lives in a temp dir (redis-server, config, state, git repo, VM overlays) removed at the
end; redis-server, every worker and every qemu are stopped by PID, always.  Exit code: 0 when every section
ran (goals may still be missed), 1 when a section could not run, 2 on a usage error.
"""

import argparse
import getpass
import json
import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

QUEUE = "builds"
QUEUE_KEY = "resque:queue:" + QUEUE
QUEUES_KEY = "resque:queues"
HOST = "benchhost"
VM = "worker-1"
ENV = "bench"
MiB = 1024 * 1024
FINAL_STATES = {"passed", "failed", "errored", "cancelled"}
# Variables the worker would read instead of the config file.
WORKER_ENV_OVERRIDES = ("REDIS_URL", "QUEUE", "VM", "VERBOSE", "TWORKER_ENV", "TRAVIS_ENV", "TWORKER_CONFIG_DIR")


# ---------------------------------------------------------------------------------------------
# A tiny RESP2 client
# ---------------------------------------------------------------------------------------------

class RedisError(Exception):
    pass


class Redis:
    """Blocking RESP2 client: one socket, commands encoded by hand, replies parsed from a buffer."""

    def __init__(self, port=None, unix_path=None, timeout=30.0):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix_path)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n" % len(a))
            out.append(a)
            out.append(b"\r\n")
        return b"".join(out)

    def _fill(self):
        if self.pos > 0 and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        data = self.sock.recv(1 << 20)
        if not data:
            raise RedisError("connection closed by redis-server")
        self.buf += data

    def _line(self):
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n + 2
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RedisError("unexpected reply line %r" % line)

    def pipeline(self, commands):
        """Sends all commands, returns all replies (error replies as RedisError values)."""
        self.sock.sendall(b"".join(self.encode(c) for c in commands))
        return [self._reply() for _ in commands]

    def __call__(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply


def as_hash(reply):
    it = iter(reply or [])
    return {k.decode(): v.decode() for k, v in zip(it, it)}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def now_iso():
    """UTC now as tworker writes it: ISO 8601 with milliseconds and Z."""
    t = dt.datetime.now(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def parse_iso(text):
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def percentile(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def free_port():
    """A free port on 127.0.0.1 below the kernel's ephemeral range, so that no outgoing connection
    (ssh, redis clients) takes it between this pick and the bind of whatever is given it."""
    import random
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ceiling = min(int(f.read().split()[0]), 65000)
    except (OSError, ValueError, IndexError):
        ceiling = 32768
    for _ in range(200):
        port = random.randrange(10000, ceiling - 16)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port on 127.0.0.1 below %d" % ceiling)


def proc_status(pid, field):
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reap(proc, timeout):
    """Waits for a Popen child with wait4 so its rusage is known; returns (exit code, max RSS KiB).
    A child still running after `timeout` seconds is killed (by its PID) and reported."""
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if killed:
                raise RuntimeError("worker %d still running after %d s; killed" % (proc.pid, timeout))
            return proc.returncode, usage.ru_maxrss
        if not killed and time.monotonic() > deadline:
            proc.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.002)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def envelope(payload, queued_at=None):
    import json
    env = {"class": "TWorker::Build", "args": [payload]}
    if queued_at is not None:
        env["queued_at"] = queued_at
    return json.dumps(env, separators=(",", ":"))


class Results:
    """Rows of the final summary table."""

    def __init__(self):
        self.rows = []
        self.errors = []

    def add(self, section, metric, value, goal="-", ok=None):
        verdict = "-" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append((section, metric, value, goal, verdict))
        suffix = "" if goal == "-" else "   (goal %s)  %s" % (goal, verdict)
        print("  %-44s %s%s" % (metric + ":", value, suffix), flush=True)

    def table(self):
        headers = ("section", "metric", "value", "goal", "result")
        widths = [max(len(str(r[i])) for r in self.rows + [headers]) for i in range(5)]
        line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers))
        print(line)
        print("  ".join("-" * w for w in widths))
        for r in self.rows:
            print("  ".join("%-*s" % (w, str(v)) for w, v in zip(widths, r)))


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tworker = os.path.abspath(args.tworker)
        self.tmp = tempfile.mkdtemp(prefix="tworker-bench-")
        self.redis_proc = None
        self.port = None
        self.sock_path = os.path.join(self.tmp, "redis.sock")
        self.children = []  # worker Popens still to be stopped
        self.r = None
        self.results = Results()
        self.worker_env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV_OVERRIDES}
        self.run_no = 0

    # -- redis ------------------------------------------------------------------------------

    def start_redis(self):
        self.port = free_port()
        rdir = os.path.join(self.tmp, "redis")
        os.makedirs(rdir)
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
               "--unixsocket", self.sock_path, "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", rdir,
               "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
               "--logfile", os.path.join(rdir, "redis.log")]
        self.redis_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.r = Redis(port=self.port)
                if self.r("PING") == "PONG":
                    break
            except (OSError, RedisError):
                if self.redis_proc.poll() is not None:
                    raise RuntimeError("redis-server exited with %s (see %s/redis.log)" % (self.redis_proc.returncode, rdir))
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING within 10 s")
                time.sleep(0.05)
        while not os.path.exists(self.sock_path):
            time.sleep(0.02)
        info = self.r("INFO", "server").decode()
        version = next((l.split(":")[1] for l in info.splitlines() if l.startswith("redis_version:")), "?")
        print("redis-server %s pid %d on 127.0.0.1:%d and %s" % (version, self.redis_proc.pid, self.port, self.sock_path))

    def stop_redis(self):
        if self.r:
            self.r.close()
        p = self.redis_proc
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- config and workers -----------------------------------------------------------------

    def write_config(self, name, transport="tcp", log_length=None, log_silence=None, provider="local", redis_extra=()):
        cdir = os.path.join(self.tmp, "config-" + name)
        os.makedirs(cdir, exist_ok=True)
        url = "redis://127.0.0.1:%d" % self.port if transport == "tcp" else "unix://" + self.sock_path
        lines = [
            "provider: %s" % provider,
            "host: %s" % HOST,
            "queue: %s" % QUEUE,
            "state_dir: %s" % os.path.join(self.tmp, "state-" + name),
            "redis:",
            '  url: "%s"' % url,
        ] + list(redis_extra) + [
            "heartbeat:",
            "  interval: 10",
        ]
        if log_length:
            lines += ["limits:", "  log_length: %d" % log_length]
        if log_silence:
            lines += ["timeouts:", "  log_silence: %d" % log_silence, "  script: 3600", "  hard_limit: 3600"]
        with open(os.path.join(cdir, "worker.%s.yml" % ENV), "w") as f:
            f.write("\n".join(lines) + "\n")
        return cdir

    def spawn_worker(self, cdir, burst, env=None, vm=VM):
        self.run_no += 1
        log_path = os.path.join(self.tmp, "worker-%d.log" % self.run_no)
        cmd = [self.tworker, "work", "--env", ENV, "--config-dir", cdir, "--vm", vm]
        if burst:
            cmd.append("--burst")
        logf = open(log_path, "wb")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             env=env or self.worker_env, cwd=self.tmp)
        logf.close()
        p.log_path = log_path
        self.children.append(p)
        return p

    def run_burst(self, cdir, env=None):
        """Runs `work --burst` to completion; returns (wall seconds, exit code, max RSS KiB, log path)."""
        t0 = time.monotonic()
        p = self.spawn_worker(cdir, burst=True, env=env)
        try:
            code, maxrss = reap(p, self.args.burst_timeout)
        finally:
            if p.returncode is not None:
                self.children.remove(p)
        wall = time.monotonic() - t0
        if code != 0:
            raise RuntimeError("worker exited %d; its log: %s\n%s" % (code, p.log_path, tail(p.log_path)))
        return wall, maxrss, p.log_path

    def wait_ready(self, p, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError("worker exited %s before it was ready:\n%s" % (p.returncode, tail(p.log_path)))
            with open(p.log_path, "rb") as f:
                if b"worker ready" in f.read():
                    return
            time.sleep(0.01)
        raise RuntimeError("worker not ready after %d s:\n%s" % (timeout, tail(p.log_path)))

    def stop_worker(self, p, timeout=15):
        """SIGTERM by PID; returns (exit code, max RSS KiB from wait4)."""
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid == p.pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.children.remove(p)
                    return p.returncode, usage.ru_maxrss
                if time.monotonic() > deadline:
                    print("  worker %d ignored SIGTERM for %d s; sending SIGKILL" % (p.pid, timeout))
                    p.kill()
                    deadline = time.monotonic() + 5
                time.sleep(0.02)
        self.children.remove(p)
        return p.returncode, None

    def kill_children(self):
        for p in list(self.children):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
            self.children.remove(p)

    # -- jobs -------------------------------------------------------------------------------

    def reset(self):
        self.r("FLUSHALL")

    def enqueue_all(self, payloads, queued_at=None):
        cmds = [("SADD", QUEUES_KEY, QUEUE)]
        for i in range(0, len(payloads), 100):
            cmds.append(("RPUSH", QUEUE_KEY) + tuple(envelope(p, queued_at) for p in payloads[i:i + 100]))
        for reply in self.r.pipeline(cmds):
            if isinstance(reply, RedisError):
                raise reply

    def records(self, ids):
        replies = self.r.pipeline([("HGETALL", "tworker:job:" + i) for i in ids])
        return {i: as_hash(rep) for i, rep in zip(ids, replies)}

    def check_states(self, recs, label):
        states = {}
        for rec in recs.values():
            states[rec.get("state", "<none>")] = states.get(rec.get("state", "<none>"), 0) + 1
        bad = {s: n for s, n in states.items() if s != "passed"}
        if bad:
            print("  WARNING: %s: not every job passed: %s" % (label, states))
        return sum(n for s, n in states.items() if s == "passed")

    def leftovers(self):
        queued = self.r("LLEN", QUEUE_KEY)
        processing = self.r("LLEN", "tworker:processing:%s:%s" % (HOST, VM))
        failed = self.r("LLEN", "resque:failed")
        if queued or processing or failed:
            print("  WARNING: after the run: %d queued, %d in the processing list, %d in resque:failed"
                  % (queued, processing, failed))

    def wait_final(self, ids, timeout, worker=None):
        deadline = time.monotonic() + timeout
        pending = list(ids)
        while pending:
            states = self.r.pipeline([("HGET", "tworker:job:" + i, "state") for i in pending])
            pending = [i for i, s in zip(pending, states) if not (s and s.decode() in FINAL_STATES)]
            if not pending:
                return True
            if worker is not None and worker.poll() is not None:
                raise RuntimeError("worker exited %s while %d jobs were pending:\n%s"
                                   % (worker.returncode, len(pending), tail(worker.log_path)))
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- sections ---------------------------------------------------------------------------

    def throughput_round(self, transport, tag):
        """One burst run over `n` queued jobs; returns a dict of what it measured."""
        n = self.args.jobs
        self.reset()
        cdir = self.write_config("throughput-" + transport, transport=transport)
        ids = ["tp-%s-%s-%04d" % (transport, tag, i) for i in range(n)]
        self.enqueue_all([{"id": i, "config": {"script": ["true"]}} for i in ids])
        wall, maxrss, _ = self.run_burst(cdir)
        recs = self.records(ids)
        passed = self.check_states(recs, "throughput " + transport)
        self.leftovers()
        received = [parse_iso(r.get("received_at")) for r in recs.values() if r.get("received_at")]
        finished = [parse_iso(r.get("finished_at")) for r in recs.values() if r.get("finished_at")]
        span = max(finished) - min(received) if received and finished else float("nan")
        return {"cdir": cdir, "wall": wall, "span": span, "rate_wall": n / wall,
                "rate_rec": n / span if span > 0 else float("nan"), "passed": passed, "maxrss": maxrss,
                "phases": self.phases([recs[i] for i in ids])}

    def throughput(self):
        n = self.args.jobs
        rounds = self.args.rounds
        section = "1 throughput"
        print("\n== 1. Throughput: %d jobs, script: true, one worker --burst (best of %d rounds) ==" % (n, rounds), flush=True)
        runs = [self.throughput_round("tcp", str(k)) for k in range(rounds)]
        best = max(runs, key=lambda r: r["rate_wall"])
        every = ", ".join("%.0f" % r["rate_wall"] for r in runs)
        self.results.add(section, "jobs/s, %d / worker wall time" % n,
                         "%.1f (%.3f s; rounds: %s)" % (best["rate_wall"], best["wall"], every), ">= 300", best["rate_wall"] >= 300)
        self.results.add(section, "jobs/s, records: last finished - first received",
                         "%.1f (%.3f s)" % (best["rate_rec"], best["span"]), ">= 300", best["rate_rec"] >= 300)
        self.results.add(section, "per job, from records", "%.2f ms" % (1000 * best["span"] / n))
        self.results.add(section, "  of which received->started (mean)", "%.2f ms" % best["phases"][0])
        self.results.add(section, "  of which started->finished (mean)", "%.2f ms" % best["phases"][1])
        self.results.add(section, "  of which finished->next received (mean)", "%.2f ms" % best["phases"][2])
        floor = self.bash_floor(best["cdir"], n)
        if floor:
            self.results.add(section, "floor: %d x bash <tworker's build script>" % n,
                             "%.1f jobs/s (%.2f ms each)" % (n / floor, 1000 * floor / n))
        passed = min(r["passed"] for r in runs)
        self.results.add(section, "jobs passed (worst round)", "%d / %d" % (passed, n), "%d" % n, passed == n)
        self.results.add(section, "worker max RSS (wait4)", "%.1f MiB" % (max(r["maxrss"] for r in runs) / 1024))
        unix = self.throughput_round("unix", "u")
        self.results.add(section, "jobs/s over the unix socket (info, 1 round)",
                         "%.1f wall, %.1f records" % (unix["rate_wall"], unix["rate_rec"]))
        self.startup_time()

    @staticmethod
    def phases(recs):
        """Mean ms of received->started, started->finished and finished->next received (jobs in order)."""
        rs, sf, fr = [], [], []
        prev_fin = None
        for r in recs:
            rcv, st, fin = parse_iso(r.get("received_at")), parse_iso(r.get("started_at")), parse_iso(r.get("finished_at"))
            if rcv is None or st is None or fin is None:
                prev_fin = None
                continue
            rs.append(st - rcv)
            sf.append(fin - st)
            if prev_fin is not None:
                fr.append(rcv - prev_fin)
            prev_fin = fin
        mean = lambda v: 1000 * sum(v) / len(v) if v else float("nan")
        return mean(rs), mean(sf), mean(fr)

    def bash_floor(self, cdir, n):
        """Seconds for n sequential `bash <script>` runs of the build script tworker left behind."""
        script = os.path.join(self.tmp, "state-" + os.path.basename(cdir)[len("config-"):], "local", VM + ".build.sh")
        if not os.path.exists(script):
            print("  (no build script at %s: floor not measured)" % script)
            return None
        loop = 'for i in $(seq "$1"); do /bin/bash "$2" >/dev/null 2>&1 </dev/null; done'
        t0 = time.monotonic()
        subprocess.run(["bash", "-c", loop, "bash", str(n), script], check=False, cwd=self.tmp,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.tmp, "LANG": "C.UTF-8"})
        return time.monotonic() - t0

    def startup_time(self):
        """Wall time of a --burst worker on an empty queue: the fixed cost inside figure 1."""
        self.reset()
        cdir = self.write_config("throughput-tcp")
        walls = []
        for _ in range(3):
            wall, _, _ = self.run_burst(cdir)
            walls.append(wall)
        self.results.add("1 throughput", "worker start+exit on an empty queue (min of 3)", "%.0f ms" % (1000 * min(walls)))

    def make_repo(self):
        repo = os.path.join(self.tmp, "src", "o", "n")
        os.makedirs(repo)
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"]
        env = dict(self.worker_env, HOME=self.tmp, GIT_CONFIG_NOSYSTEM="1")
        subprocess.run(git + ["init", "-q", "-b", "main", repo], check=True, env=env)
        for c in range(3):
            for f in range(4):
                with open(os.path.join(repo, "file%d.txt" % f), "a") as fh:
                    fh.write(("commit %d file %d\n" % (c, f)) * 50)
            with open(os.path.join(repo, "README"), "a") as fh:
                fh.write("revision %d\n" % c)
            subprocess.run(git + ["-C", repo, "add", "-A"], check=True, env=env)
            subprocess.run(git + ["-C", repo, "commit", "-q", "-m", "commit %d" % c], check=True, env=env)
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env,
                             capture_output=True, text=True).stdout.strip()
        return repo, sha

    def checkout(self):
        n = self.args.checkout_jobs
        rounds = self.args.rounds
        section = "2 checkout"
        print("\n== 2. With a checkout: %d jobs cloning a local repo (3 commits), script: true (best of %d rounds) =="
              % (n, rounds), flush=True)
        repo, sha = self.make_repo()

        # The plain loop: the same git work per job, one bash process, output discarded.
        loop_dir = os.path.join(self.tmp, "plain-loop")
        os.makedirs(loop_dir)
        script = (
            'set -e; base="$1"; repo="$2"; sha="$3"; n="$4"\n'
            'for i in $(seq "$n"); do\n'
            '  cd "$base"\n'
            '  rm -rf ws && mkdir ws && cd ws && git clone --depth 50 --branch main "$repo" o/n && cd o/n && git checkout -qf "$sha"\n'
            'done\n'
        )
        loop_env = dict(self.worker_env, HOME=loop_dir, LANG="C.UTF-8")
        loop_cmd = ["bash", "-c", script, "bash", loop_dir, repo, sha]
        subprocess.run(loop_cmd + ["1"], check=True, env=loop_env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # warm-up
        cdir = self.write_config("checkout")
        loop_walls, walls, spans, phases, passed = [], [], [], [], n
        for k in range(rounds):
            # Alternate the two so a change in the machine's load hits both alike.
            t0 = time.monotonic()
            subprocess.run(loop_cmd + [str(n)], check=True, env=loop_env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            loop_walls.append(time.monotonic() - t0)

            self.reset()
            ids = ["co-%d-%04d" % (k, i) for i in range(n)]
            self.enqueue_all([{"id": i, "repository": {"slug": "o/n", "source_url": repo}, "commit": sha, "branch": "main",
                               "config": {"script": ["true"]}} for i in ids])
            wall, _, _ = self.run_burst(cdir)
            walls.append(wall)
            recs = self.records(ids)
            passed = min(passed, self.check_states(recs, "checkout"))
            self.leftovers()
            received = [parse_iso(r.get("received_at")) for r in recs.values() if r.get("received_at")]
            finished = [parse_iso(r.get("finished_at")) for r in recs.values() if r.get("finished_at")]
            spans.append(max(finished) - min(received) if received and finished else float("nan"))
            phases.append(self.phases([recs[i] for i in ids]))
            # Did the checkout really happen? The log of one job shows git's steps.
            log = b"".join(self.log_data(ids[0]))
            if b"git checkout -qf" not in log or b"Done. Your build exited with 0" not in log:
                print("  WARNING: job %s's log shows no checkout:\n%s" % (ids[0], log.decode(errors="replace")[-2000:]))

        loop_rate = n / min(loop_walls)
        rate = n / min(walls)
        rate_rec = n / min(spans)
        pct = 100 * rate / loop_rate
        self.results.add(section, "plain bash loop jobs/s", "%.1f (%.3f s; rounds: %s)"
                         % (loop_rate, min(loop_walls), ", ".join("%.1f" % (n / w) for w in loop_walls)))
        self.results.add(section, "tworker jobs/s, %d / worker wall time" % n, "%.1f (%.3f s; rounds: %s)"
                         % (rate, min(walls), ", ".join("%.1f" % (n / w) for w in walls)))
        self.results.add(section, "tworker as % of the plain loop (wall)", "%.0f%% (%+.1f ms per job)"
                         % (pct, 1000 * (min(walls) - min(loop_walls)) / n), ">= 90%", pct >= 90)
        self.results.add(section, "tworker jobs/s, records", "%.1f (%.0f%% of loop)" % (rate_rec, 100 * rate_rec / loop_rate),
                         ">= 90%", rate_rec / loop_rate >= 0.9)
        best = phases[walls.index(min(walls))]
        self.results.add(section, "tworker per job: received->started / started->finished / between (mean)",
                         "%.1f / %.1f / %.1f ms" % best)
        self.results.add(section, "jobs passed (worst round)", "%d / %d" % (passed, n), "%d" % n, passed == n)

    def latency(self):
        n = self.args.latency_jobs
        gap = self.args.gap_ms / 1000
        section = "3 latency"
        print("\n== 3. Enqueue-to-start latency: %d jobs, one every %d ms, to a running worker ==" % (n, self.args.gap_ms),
              flush=True)
        self.reset()
        cdir = self.write_config("latency")
        p = self.spawn_worker(cdir, burst=False)
        try:
            self.wait_ready(p)
            time.sleep(0.2)
            ids = ["lat-%04d" % i for i in range(n)]
            self.r("SADD", QUEUES_KEY, QUEUE)
            next_at = time.monotonic()
            for i in ids:
                self.r("RPUSH", QUEUE_KEY, envelope({"id": i, "config": {"script": ["true"]}}, queued_at=now_iso()))
                next_at += gap
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            done = self.wait_final(ids, timeout=30, worker=p)
        finally:
            code, _ = self.stop_worker(p)
        if not done:
            print("  WARNING: not every job reached a final state within 30 s")
        if code != 0:
            print("  WARNING: worker exited %d on SIGTERM" % code)
        recs = self.records(ids)
        passed = self.check_states(recs, "latency")
        self.leftovers()
        start_lat, recv_lat = [], []
        for r in recs.values():
            q, rcv, st = parse_iso(r.get("queued_at")), parse_iso(r.get("received_at")), parse_iso(r.get("started_at"))
            if q is not None and st is not None:
                start_lat.append(1000 * (st - q))
            if q is not None and rcv is not None:
                recv_lat.append(1000 * (rcv - q))
        self.results.add(section, "started_at - queued_at p50 / p99",
                         "%.0f / %.0f ms (max %.0f)" % (percentile(start_lat, 50), percentile(start_lat, 99), max(start_lat)),
                         "report; lower is better")
        self.results.add(section, "received_at - queued_at p50 / p99",
                         "%.0f / %.0f ms (max %.0f)" % (percentile(recv_lat, 50), percentile(recv_lat, 99), max(recv_lat)),
                         "report; lower is better")
        self.results.add(section, "jobs passed", "%d / %d" % (passed, n), "%d" % n, passed == n)

    def queues(self):
        """Idle CPU of a worker on one queue and on five, and how soon it takes a job pushed to
        its lowest queue (a plain RPUSH, as a Resque client or `tworker enqueue` pushes)."""
        section = "3b queues"
        idle_s, n, gap = 10.0, 50, 0.1
        print("\n== 3b. Queue lists: idle CPU over %.0f s, and pickup of %d jobs pushed to the last queue ==" % (idle_s, n),
              flush=True)
        redis_pid = getattr(getattr(self, "redis_proc", None), "pid", None)
        for label, queues in [("1 queue", QUEUE), ("5 queues", "q1,q2,q3,q4," + QUEUE)]:
            self.reset()
            cdir = self.write_config("queues-%d" % len(queues.split(",")))
            p = self.spawn_worker(cdir, burst=False, env=dict(self.worker_env, QUEUES=queues))
            try:
                self.wait_ready(p)
                time.sleep(1.0)
                w0, r0, t0 = self.cpu_ns(p.pid), self.cpu_ns(redis_pid) if redis_pid else None, time.monotonic()
                time.sleep(idle_s)
                w1, r1, t1 = self.cpu_ns(p.pid), self.cpu_ns(redis_pid) if redis_pid else None, time.monotonic()
                worker_pct = 100.0 * (w1 - w0) / 1e9 / (t1 - t0)
                redis_pct = 100.0 * (r1 - r0) / 1e9 / (t1 - t0) if r0 is not None and r1 is not None else float("nan")
                self.results.add(section, "idle CPU, worker on %s" % label, "%.2f %% (redis-server %.2f %%)" % (worker_pct, redis_pct),
                                 "report; 5 queues <= 1 queue")
                self.r("SADD", QUEUES_KEY, QUEUE)
                for how in ("RPUSH",):
                    ids = ["qp-%s-%s-%03d" % (label[0], how[0], i) for i in range(n)]
                    for i in ids:
                        raw = envelope({"id": i, "config": {"script": ["true"]}}, queued_at=now_iso())
                        self.r("RPUSH", QUEUE_KEY, raw)
                        time.sleep(gap)
                    self.wait_final(ids, timeout=30, worker=p)
                    lat = []
                    for r in self.records(ids).values():
                        q, rcv = parse_iso(r.get("queued_at")), parse_iso(r.get("received_at"))
                        if q is not None and rcv is not None:
                            lat.append(1000 * (rcv - q))
                    if lat:
                        self.results.add(section, "pickup (received_at - queued_at), %s, %s" % (label, how),
                                         "p50 %.0f / p99 %.0f / max %.0f ms" % (percentile(lat, 50), percentile(lat, 99), max(lat)),
                                         "<= 50 ms", max(lat) <= 50)
            finally:
                self.stop_worker(p)
            self.leftovers()

    def log_data(self, job_id):
        """The `data` fields of a job's log stream, read with XRANGE in pages."""
        key = "tworker:job:%s:log" % job_id
        last = "-"
        chunks = []
        while True:
            page = self.r("XRANGE", key, last, "+", "COUNT", "1000")
            if not page:
                return chunks
            for entry_id, fields in page:
                it = iter(fields)
                for k, v in zip(it, it):
                    if k == b"data":
                        chunks.append(v)
                last = "(" + entry_id.decode()
            if len(page) < 1000:
                return chunks

    def log_throughput_with_secrets(self):
        self.log_throughput(secrets=True)

    def log_throughput(self, secrets=False):
        size = self.args.log_mib * MiB
        section = "4b log-secrets" if secrets else "4 log"
        print("\n== %s. Log throughput: one job printing %d MiB (128-byte lines)%s ==" % (
            section.split()[0], self.args.log_mib, ", each with a secret to mask" if secrets else ""), flush=True)
        line = ("0123456789abcdef" * 8)[:127]
        env = []
        secret_values = []
        if secrets:
            secret_values = ["bench-secure-value-%d" % i for i in range(4)] + ["ghp_benchTokenByName", "host-secret-from-file"]
            env = [{"name": "SECURE_%d" % i, "value": secret_values[i], "secure": True} for i in range(4)]
            env.append("GITHUB_TOKEN=%s" % secret_values[4])
            # A line of 127 bytes, 20 of them a secret, masked to 8 ([secure]).
            line = ("key=" + secret_values[0] + " " + "0123456789abcdef" * 8)[:127]
        build_cmd = "yes %s | head -c %d" % (line, size)

        # The command alone, to /dev/null.
        t0 = time.monotonic()
        subprocess.run(["bash", "-c", build_cmd + " >/dev/null"], check=True)
        alone = time.monotonic() - t0

        self.reset()
        cdir = self.write_config("log-secrets" if secrets else "log", log_length=128 * MiB, log_silence=86400)
        if secrets:
            path = os.path.join(cdir, "secrets.env")
            with open(path, "w") as f:
                f.write("HOST_SECRET=%s\n" % secret_values[5])
            os.chmod(path, 0o600)
        p = self.spawn_worker(cdir, burst=False)
        job = "log-secrets-0001" if secrets else "log-0001"
        try:
            self.wait_ready(p)
            time.sleep(0.5)
            idle_rss = proc_status(p.pid, "VmRSS")
            idle_hwm = proc_status(p.pid, "VmHWM")
            idle_anon = proc_status(p.pid, "RssAnon")
            idle_file = proc_status(p.pid, "RssFile")
            config = {"script": [build_cmd]}
            if env:
                config["env"] = env
            self.enqueue_all([{"id": job, "config": config}])
            done = self.wait_final([job], timeout=self.args.log_timeout, worker=p)
            peak = proc_status(p.pid, "VmHWM")
            after_anon = proc_status(p.pid, "RssAnon")
        finally:
            code, maxrss = self.stop_worker(p)
        if code != 0:
            print("  WARNING: worker exited %d on SIGTERM" % code)
        rec = self.records([job])[job]
        if not done:
            print("  WARNING: the job was not final after %d s (state %s)" % (self.args.log_timeout, rec.get("state")))
        self.check_states({job: rec}, "log")
        self.leftovers()
        st, fin = parse_iso(rec.get("started_at")), parse_iso(rec.get("finished_at"))
        chunks = self.log_data(job)
        data = b"".join(chunks)
        shown_line = line.replace(secret_values[0], "[secure]") if secrets else line
        payload_lines = data.count((shown_line + "\n").encode())
        if secrets:
            leaked = [v for v in secret_values if v.encode() in data]
            self.results.add(section, "secrets in the log stream", ", ".join(leaked) or "none", "none", not leaked)
        expected_lines = size // 128
        logged = len(data)
        if st is not None and fin is not None and fin > st:
            mibps = self.args.log_mib / (fin - st)
            self.results.add(section, "MiB/s, %d MiB / (finished_at - started_at)" % self.args.log_mib,
                             "%.1f (%.2f s)" % (mibps, fin - st), ">= 50", mibps >= 50)
        else:
            self.results.add(section, "MiB/s", "n/a (job %s)" % rec.get("state"), ">= 50", False)
        self.results.add(section, "build command alone, to /dev/null", "%.2f s (%.0f MiB/s)" % (alone, self.args.log_mib / alone))
        self.results.add(section, "log stream: data bytes / entries", "%d / %d" % (logged, len(chunks)))
        self.results.add(section, "log stream holds the whole output",
                         "%d / %d lines (%.2f MiB)" % (payload_lines, expected_lines, logged / MiB),
                         "all %d" % expected_lines, payload_lines == expected_lines)
        if idle_rss is not None:
            self.results.add(section, "idle RSS (VmRSS after startup)", "%.1f MiB (anon %.1f, file-backed %.1f)"
                             % (idle_rss / 1024, (idle_anon or 0) / 1024, (idle_file or 0) / 1024))
        if peak is not None:
            self.results.add(section, "peak RSS during the job (VmHWM)", "%.1f MiB" % (peak / 1024), "<= 30 MiB", peak <= 30 * 1024)
            if after_anon is not None and idle_anon is not None:
                self.results.add(section, "anon RSS still held after the job", "%.1f MiB (idle %.1f)" % (after_anon / 1024, idle_anon / 1024))
        else:
            self.results.add(section, "peak RSS during the job (VmHWM)", "n/a (worker gone)", "<= 30 MiB", False)

    # -- driver -----------------------------------------------------------------------------

    def virtualbox(self):
        """Jobs on the fake VBoxManage (real sshd guests): tworker's own cost per job on top of
        the fake's simulated resume delay and the time spent inside VBoxManage itself."""
        print("\n== 5. VirtualBox provider on the fake VBoxManage ==", flush=True)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        fake = os.path.join(repo, "Tests", "Fixtures", "fakes", "VBoxManage")
        if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
            raise RuntimeError("sshd is not installed (openssh-server); scripts/install-deps installs it")
        home = os.path.join(self.tmp, "fakevbox")
        os.makedirs(home)
        key = os.path.join(home, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, stdin=subprocess.DEVNULL)
        shutil.copy(key + ".pub", os.path.join(home, "authorized_keys"))
        resume_delay, boot_delay = 0.1, 0.5
        with open(os.path.join(home, "settings.json"), "w") as f:
            json.dump({"resume_delay": resume_delay, "boot_delay": boot_delay, "lock_window": 0.2}, f)
        env = dict(self.worker_env, FAKE_VBOX_HOME=home)
        port_base = free_port() - 1
        prefix = "tworker-bench-"
        try:
            subprocess.run([fake, "__fake", "create", prefix + VM, "--port", str(port_base + int(VM.split("-")[1])),
                            "--snapshot", "sandbox", "--online"], check=True, env=env, stdout=subprocess.DEVNULL)
            cdir = self.write_config("vbox")
            with open(os.path.join(cdir, "worker.yml"), "w") as f:
                f.write("\n".join([
                    "provider: virtualbox",
                    "vms:", "  name_prefix: %s" % prefix,
                    "ssh:", "  user: %s" % getpass.getuser(), "  key: %s" % key, "  port_base: %d" % port_base,
                    "virtualbox:", "  vboxmanage: %s" % fake,
                ]) + "\n")
            jobs = self.args.vbox_jobs
            ids = ["vbox-%d" % i for i in range(jobs)]
            self.enqueue_all([{"id": i, "config": {"script": ["true"]}} for i in ids])
            wall, _, _ = self.run_burst(cdir, env=env)
            recs = list(self.records(ids).values())
            passed = self.check_states(dict(enumerate(recs)), "virtualbox")
            calls = [json.loads(line) for line in open(os.path.join(home, "calls.jsonl")) if line.strip()]
            calls = [c for c in calls if c["argv"][:1] != ["__fake"]]
            reads = [c for c in calls if c["argv"][0] in ("showvminfo", "list", "--version")]
            changes = [c for c in calls if c not in reads]
            retries = sum(1 for c in changes if c["exit"] != 0)

            # What the fake itself costs, measured outside tworker: one VBoxManage call, a
            # guest coming up after startvm (resume delay + sshd start), one ssh session.
            vm = prefix + VM
            def timed(cmd):
                t = time.monotonic()
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                return time.monotonic() - t
            call_wall = sorted(timed([fake, "showvminfo", vm, "--machinereadable"]) for _ in range(5))[2]
            port = port_base + int(VM.split("-")[1])
            ssh = ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                   "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-l", getpass.getuser(), "127.0.0.1", "true"]
            ups, sessions = [], []
            for _ in range(3):
                t = time.monotonic()
                subprocess.run([fake, "startvm", vm, "--type", "headless"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while True:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                            if conn.recv(4) == b"SSH-":
                                break
                    except OSError:
                        pass
                    time.sleep(0.005)
                ups.append(time.monotonic() - t)
                sessions.append(timed(ssh))
                subprocess.run([fake, "controlvm", vm, "poweroff"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                subprocess.run([fake, "snapshot", vm, "restore", "sandbox"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            guest_up = sorted(ups)[1]
            session = sorted(sessions)[1]

            job_path = sorted(parse_iso(r["finished_at"]) - parse_iso(r["received_at"]) for r in recs)[len(recs) // 2]
            # On the job's path: one read, startvm + the guest coming up, one ssh session.
            fake_path = call_wall + guest_up + session
            first = min(parse_iso(r["received_at"]) for r in recs)
            last = max(parse_iso(r["finished_at"]) for r in recs)
            cycle = (last - first) / max(1, jobs - 1) if jobs > 1 else job_path
            fake_cycle = fake_path + (len(calls) / jobs - 2) * call_wall + retries / jobs * 0.2
            res = self.results
            res.add("5 virtualbox", "jobs passed", "%d / %d in %.1f s" % (passed, jobs, wall), str(jobs), passed == jobs)
            res.add("5 virtualbox", "fake's cost: one VBoxManage call / guest up after startvm / one ssh session",
                    "%.0f / %.0f / %.0f ms" % (call_wall * 1000, guest_up * 1000, session * 1000))
            res.add("5 virtualbox", "job path, received -> finished (median)", "%.0f ms" % (job_path * 1000))
            res.add("5 virtualbox", "tworker's own overhead on the job path", "%.0f ms" % ((job_path - fake_path) * 1000),
                    "<= 150 ms", job_path - fake_path <= 0.150)
            res.add("5 virtualbox", "whole cycle per job incl. poweroff + restore", "%.0f ms" % (cycle * 1000))
            res.add("5 virtualbox", "tworker's own overhead per cycle", "%.0f ms" % ((cycle - fake_cycle) * 1000),
                    "<= 150 ms", cycle - fake_cycle <= 0.150)
            res.add("5 virtualbox", "VBoxManage calls per job: changes / reads",
                    "%.2f / %.2f" % (len(changes) / jobs, len(reads) / jobs), "-")
            # The first job also restores the VM it finds; after that each job is startvm,
            # poweroff, restore.
            steady = (len(changes) - retries - 1) / jobs
            res.add("5 virtualbox", "  successful changes per job in steady state", "%.2f" % steady, "<= 3", steady <= 3.0 + 1e-9)
            res.add("5 virtualbox", "  of which lock-error retries (restore inside the lock window)", "%.2f" % (retries / jobs))
        finally:
            subprocess.run([fake, "__fake", "stop-all"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def make_box(self, path, payload_bytes):
        """A .box like a real one: metadata.json, box.ovf and a disk (for the fake: a tar of the guest's files)."""
        import io
        import tarfile
        disk = io.BytesIO()
        with tarfile.open(fileobj=disk, mode="w") as tar:
            for name, data in (("etc/os-release", b"NAME=bench\n"), ("opt/payload.bin", os.urandom(payload_bytes))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        disk_bytes = disk.getvalue()
        ovf = ('<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
               'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References>'
               '<File ovf:id="file1" ovf:href="box-disk001.vmdk" ovf:size="%d"/></References>'
               '<VirtualSystem ovf:id="bench"><Info>A virtual machine</Info></VirtualSystem></Envelope>\n' % len(disk_bytes)).encode()
        with tarfile.open(path, "w") as box:
            for name, data in (("metadata.json", b'{"provider":"virtualbox"}'), ("box.ovf", ovf), ("box-disk001.vmdk", disk_bytes)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                box.addfile(info, io.BytesIO(data))
        return len(disk_bytes)

    def lifecycle(self):
        """`tworker vagrant import` of 1, 3 and 6 workers, and both reprovision strategies, on the fake."""
        print("\n== 6. VM lifecycle on the fake VBoxManage ==", flush=True)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        fake = os.path.join(repo, "Tests", "Fixtures", "fakes", "VBoxManage")
        res = self.results
        for count in (1, 3, 6):
            home = os.path.join(self.tmp, "lifecycle-%d" % count)
            os.makedirs(os.path.join(home, "boxes", "provision"))
            key = os.path.join(home, "id_ed25519")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, stdin=subprocess.DEVNULL)
            shutil.copy(key + ".pub", os.path.join(home, "authorized_keys"))
            with open(os.path.join(home, "boxes", "provision", "base.sh"), "w") as f:
                f.write("#!/bin/bash\necho provisioned > provision-marker\n")
            disk = self.make_box(os.path.join(home, "boxes", "base.box"), 4 << 20)
            env = dict(self.worker_env, FAKE_VBOX_HOME=home)
            port_base = free_port() - 1
            cdir = self.write_config("lifecycle-%d" % count)
            with open(os.path.join(cdir, "worker.yml"), "w") as f:
                f.write("\n".join([
                    "provider: virtualbox",
                    "vms:", "  count: %d" % count, "  name_prefix: tworker-bench-", "  base_box: %s/boxes/base.box" % home,
                    "ssh:", "  user: %s" % getpass.getuser(), "  key: %s" % key, "  port_base: %d" % port_base,
                    "virtualbox:", "  vboxmanage: %s" % fake,
                    "vagrant:", "  directory: %s/boxes" % home,
                ]) + "\n")
            def vagrant(*args):
                t = time.monotonic()
                r = subprocess.run([self.tworker, "vagrant"] + list(args) + ["--env", ENV, "--config-dir", cdir], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.tmp)
                if r.returncode != 0:
                    raise RuntimeError("tworker vagrant %s failed:\n%s" % (" ".join(args), r.stderr.decode(errors="replace")[-2000:]))
                return time.monotonic() - t, r.stdout.decode(errors="replace")
            def calls():
                path = os.path.join(home, "calls.jsonl")
                return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
            try:
                took, _ = vagrant("import")
                made = [c for c in calls() if c["argv"][:1] != ["__fake"]]
                copied = int(open(os.path.join(home, "bytes_copied")).read().strip() or 0)
                res.add("6 lifecycle", "import of %d workers: time, VBoxManage calls" % count, "%.1f s, %d calls" % (took, len(made)))
                res.add("6 lifecycle", "import of %d workers: bytes copied (disk %d)" % (count, disk), "%d (%.2f disks)" % (copied, copied / disk),
                        "one disk", copied < 2 * disk)
                if count == 3:
                    for strategy in ("each", "base", "each", "base"):
                        took, out = vagrant("reprovision", "--strategy", strategy)
                        estimate = next((l for l in out.splitlines() if l.startswith("Estimated")), "")
                        guess = re.search(r"--strategy %s ([0-9.]+ s|[0-9]+m [0-9]+s|unknown)" % strategy, estimate)
                        res.add("6 lifecycle", "reprovision --strategy %s of 3: estimated / actual" % strategy,
                                "%s / %.1f s" % (guess.group(1) if guess else "?", took))
            finally:
                subprocess.run([fake, "__fake", "stop-all"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def http_listener(self, section, master_pid, port):
        """The master's listener (on in the master section): the CPU a scrape of /metrics every
        second adds, and 200 concurrent SSE followers of one running log."""
        import json
        import threading
        import urllib.request

        def cpu_seconds(pid):
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        base = "http://127.0.0.1:%d" % port
        window = 20
        quiet_start = cpu_seconds(master_pid)
        time.sleep(window)
        quiet = cpu_seconds(master_pid) - quiet_start
        scraped_start = cpu_seconds(master_pid)
        sizes = []
        for _ in range(window):
            t = time.monotonic()
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                sizes.append(len(response.read()))
            time.sleep(max(0, 1 - (time.monotonic() - t)))
        scraped = cpu_seconds(master_pid) - scraped_start
        added = max(0.0, scraped - quiet) / window * 100
        self.results.add(section, "/metrics scraped every second: master CPU added (%d s, %d B a scrape)" % (window, sizes[-1]),
                         "%.2f%% of a core (idle %.2f%%)" % (added, quiet / window * 100), "<= 1%", added <= 1.0)

        # One job printing 200 numbered lines over ~4 s, followed by 200 readers at once.
        lines = 200
        job = "sse-bench-%d" % os.getpid()
        self.enqueue_all([{"id": job, "config": {"script": ["for i in $(seq 1 %d); do echo entry-$i; sleep 0.02; done" % lines]}}])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.r("HGET", "tworker:job:" + job, "state") not in (b"started", b"passed"):
            time.sleep(0.01)
        followers = 200
        results = [None] * followers

        def follow(index):
            seen, numbers, final = [], [], False
            try:
                with urllib.request.urlopen(base + "/api/jobs/%s/log/stream?from=1" % job, timeout=60) as response:
                    event = {}
                    for raw in response:
                        line = raw.decode().rstrip("\n")
                        if line:
                            name, _, value = line.partition(": ")
                            event[name] = value
                            continue
                        if event.get("event") == "log":
                            entry = json.loads(event["data"])
                            numbers.append(entry["n"])
                            seen.append(entry["text"])
                        elif event.get("event") == "final":
                            final = True
                        event = {}
                results[index] = (numbers, "".join(seen), final)
            except Exception as error:  # reported as a follower that did not get everything
                results[index] = ([], str(error), False)

        threads = [threading.Thread(target=follow, args=(i,)) for i in range(followers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        took = time.monotonic() - t0
        expected = ["entry-%d" % i for i in range(1, lines + 1)]
        complete = 0
        for result in results:
            if not result:
                continue
            numbers, text, final = result
            got = [l for l in text.split("\n") if l.startswith("entry-")]
            if final and got == expected and numbers == sorted(set(numbers)):
                complete += 1
        self.results.add(section, "%d concurrent SSE followers of one log (%d lines, %.1f s)" % (followers, lines, took),
                         "%d got every entry in order, then final" % complete, "all %d" % followers, complete == followers)

    def master(self):
        """`tworker start` with vms.count 8: time until all 8 workers report idle in Redis, total RSS."""
        print("\n== 7. master: `tworker start` with 8 workers ==", flush=True)
        section = "7 master"
        count = 8
        self.reset()
        cdir = self.write_config("master")
        http_port = free_port()
        with open(os.path.join(cdir, "worker.%s.yml" % ENV), "a") as f:
            f.write("vms:\n  count: %d\nhttp:\n  listen: 127.0.0.1:%d\n" % (count, http_port))
        # Benchmarks run as root on CI hosts: the workers may run as root here.
        env = dict(self.worker_env, TWORKER_ALLOW_ROOT="1")
        keys = ["tworker:worker:%s:worker-%d" % (HOST, n) for n in range(1, count + 1)]
        log_path = os.path.join(self.tmp, "master.log")
        logf = open(log_path, "wb")
        t0 = time.monotonic()
        p = subprocess.Popen([self.tworker, "start", "--env", ENV, "--config-dir", cdir], stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        logf.close()
        p.log_path = log_path
        self.children.append(p)
        workers = []
        clean = False
        try:
            ready = None
            deadline = t0 + 15
            while time.monotonic() < deadline:
                if p.poll() is not None:
                    raise RuntimeError("the master exited %s:\n%s" % (p.returncode, tail(log_path)))
                beats = self.r.pipeline([("HMGET", k, "state", "pid") for k in keys])
                if all(b and b[0] == b"idle" for b in beats):
                    ready = time.monotonic() - t0
                    workers = [int(b[1]) for b in beats]
                    break
                time.sleep(0.002)
            if ready is None:
                raise RuntimeError("not all %d workers idle after 15 s:\n%s" % (count, tail(log_path)))
            self.results.add(section, "start -> all %d workers idle in Redis" % count, "%.3f s" % ready, "< 1 s", ready < 1.0)
            time.sleep(2)  # idle for a while: what a quiet host holds
            master_rss = proc_status(p.pid, "VmRSS") or 0
            rss = [proc_status(pid, "VmRSS") or 0 for pid in workers]
            total = master_rss + sum(rss)
            # Memory the pool really holds: PSS splits the pages the nine processes share (the
            # binary's code) among them; a plain sum of VmRSS counts those pages nine times.
            def rollup(pid, field):
                try:
                    with open("/proc/%d/smaps_rollup" % pid) as f:
                        return next((int(l.split()[1]) for l in f if l.startswith(field + ":")), 0)
                except OSError:
                    return 0
            pids = [p.pid] + workers
            pss = sum(rollup(x, "Pss") for x in pids)
            self.results.add(section, "memory of master + %d idle workers (sum of PSS)" % count, "%.1f MiB" % (pss / 1024),
                             "<= 80 MiB", pss <= 80 * 1024)
            self.results.add(section, "  sum of VmRSS (shared code counted in each process) / sum of RssAnon",
                             "%.1f MiB / %.1f MiB" % (total / 1024, sum(proc_status(x, "RssAnon") or 0 for x in pids) / 1024))
            self.results.add(section, "  master / each worker VmRSS (min..max)", "%.1f MiB / %.1f..%.1f MiB"
                             % (master_rss / 1024, min(rss) / 1024, max(rss) / 1024))
            self.http_listener(section, p.pid, http_port)
            t1 = time.monotonic()
            p.send_signal(signal.SIGQUIT)
            try:
                p.wait(15)
                clean = p.returncode == 0
                self.results.add(section, "QUIT -> master and workers exited", "%.3f s (exit %d)" % (time.monotonic() - t1, p.returncode))
            except subprocess.TimeoutExpired:
                print("  master ignored QUIT for 15 s; killing it")
        finally:
            # The workers run in their own sessions: stop each by PID, never by name.
            if p.poll() is None:
                p.kill()
                p.wait()
            if p in self.children:
                self.children.remove(p)
            for pid in ([] if clean else workers):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    # -- 8. qemu ----------------------------------------------------------------------------

    QEMU_PREFIX = "tworker-bench-"

    def qemu_image(self):
        """The test guest's directory (built with boxes/qemu/build-test-image when it holds no
        complete image) and its worker.yml fragment."""
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        image = os.path.abspath(self.args.qemu_image or os.path.join(repo, ".build-qemu-image"))
        # A complete image is only read: the build script would take its lock file for writing.
        if not os.path.exists(os.path.join(image, ".complete")):
            print("  building the test guest into %s (boxes/qemu/build-test-image)" % image, flush=True)
            r = subprocess.run([os.path.join(repo, "boxes", "qemu", "build-test-image"), image], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
            if r.returncode != 0:
                raise RuntimeError("boxes/qemu/build-test-image %s exited %d:\n%s"
                                   % (image, r.returncode, r.stdout.decode(errors="replace")[-3000:]))
        with open(os.path.join(image, "worker.yml")) as f:
            return image, f.read()

    @staticmethod
    def free_port_base(count):
        """A port_base whose next `count` ports are free on 127.0.0.1 (ssh.port_base + N)."""
        for _ in range(50):
            base = free_port() - 1
            try:
                for n in range(1, count + 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                        s.bind(("127.0.0.1", base + n))
                return base
            except OSError:
                continue
        raise RuntimeError("no %d consecutive free ports found" % count)

    def qemu_pid(self, state_dir, vm):
        """The pid of this run's qemu for `vm` (from its pid file, checked against its -name), or None."""
        try:
            with open(os.path.join(state_dir, "qemu", vm, "qemu.pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if (self.QEMU_PREFIX + vm).encode() in argv else None

    @staticmethod
    def cpu_ns(pid):
        """CPU time of all of a process's threads in ns (/proc/<pid>/task/*/schedstat), or None when it is gone."""
        total = 0
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return None
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total

    def wait_paused(self, pid, quiet=0.5, timeout=30):
        """Waits until qemu's CPU time stops growing (a paused guest costs ~0.05% of a core, a
        running idle one ~14%, a loadvm a whole core) and returns the wall time at which it
        stopped: the end of the last 10 ms sample in which it used more than 0.5 ms of CPU."""
        deadline = time.monotonic() + timeout
        prev = self.cpu_ns(pid)
        last_busy = time.time()
        while True:
            time.sleep(0.01)
            now, c = time.time(), self.cpu_ns(pid)
            if c is None or prev is None:
                raise RuntimeError("qemu %d is gone" % pid)
            if c - prev > 500_000:
                last_busy = now
            prev = c
            if now - last_busy >= quiet:
                return last_busy
            if time.monotonic() > deadline:
                raise RuntimeError("qemu %d still busy after %d s: its guest was not paused" % (pid, timeout))

    def qemu(self):
        """provider: qemu with the test guest: import, per-job latency and reset on one worker,
        qemu's RSS, and jobs/min of two workers."""
        print("\n== 8. qemu provider: the test guest of boxes/qemu/build-test-image ==", flush=True)
        section = "8 qemu"
        res = self.results
        missing = [t for t in ("qemu-system-x86_64", "qemu-img") if shutil.which(t) is None]
        if missing:
            reason = "%s not on PATH (apt-get install qemu-system-x86 qemu-utils)" % " and ".join(missing)
            print("  skipped: " + reason)
            res.add(section, "skipped", reason)
            return
        image, fragment = self.qemu_image()
        print("  image: %s" % image)
        self.reset()
        count = 2
        cdir = self.write_config("qemu", provider="qemu")
        state_dir = os.path.join(self.tmp, "state-qemu")
        with open(os.path.join(cdir, "worker.%s.yml" % ENV), "a") as f:
            f.write("\n".join([
                "vms:", "  count: %d" % count, "  memory: %d" % self.args.qemu_memory, "  name_prefix: %s" % self.QEMU_PREFIX,
                "  provision: []",
                "ssh:", "  port_base: %d" % self.free_port_base(count),
                "qemu:", "  accel: %s" % self.args.qemu_accel,
                "timeouts:", "  vm_boot: 180", "  qemu: 120",
            ]) + "\n")
        # The operator's file: the image's fragment as the script wrote it, choosing the provider.
        with open(os.path.join(cdir, "worker.yml"), "w") as f:
            f.write(fragment.rstrip("\n") + "\nprovider: qemu\n")
        vms = ["worker-%d" % n for n in range(1, count + 1)]
        workers = []
        seen_pids = set()

        def tworker_vms(*args, timeout=900):
            t = time.monotonic()
            r = subprocess.run([self.tworker, "vms"] + list(args) + ["--env", ENV, "--config-dir", cdir], env=self.worker_env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.tmp,
                               timeout=timeout)
            out = r.stdout.decode(errors="replace")
            if r.returncode != 0:
                raise RuntimeError("tworker vms %s exited %d:\n%s" % (" ".join(args), r.returncode, out[-3000:]))
            return time.monotonic() - t, out

        def note_pids():
            for vm in vms:
                pid = self.qemu_pid(state_dir, vm)
                if pid:
                    seen_pids.add((pid, vm))

        try:
            # -- 1. import: overlay, boot, SSH, savevm sandbox, stop; one VM after the other.
            took, out = tworker_vms("import")
            print("\n".join("  | " + l for l in out.splitlines()))
            steps = {}
            for line in out.splitlines():
                m = re.match(r"^(%s\S+)\s+(.+?)\s+([0-9.]+) s$" % re.escape(self.QEMU_PREFIX), line.strip())
                if m:
                    steps.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
            accel = "?"
            boots = []
            for name in sorted(steps):
                s = steps[name]
                boot_key = next((k for k in s if k.startswith("boot (")), None)
                if boot_key:
                    accel = boot_key[len("boot ("):-1]
                boot = (s.get(boot_key, 0) if boot_key else 0) + s.get("wait for SSH", 0)
                boots.append(boot)
                res.add(section, "import %s: boot / wait for SSH+clock / savevm / stop" % name[len(self.QEMU_PREFIX):],
                        "%.2f / %.2f / %.2f / %.2f s" % (s.get(boot_key, float("nan")) if boot_key else float("nan"),
                                                         s.get("wait for SSH", float("nan")), s.get("savevm sandbox", float("nan")),
                                                         s.get("stop", float("nan"))))
            if boots:
                res.add(section, "boot-to-SSH per VM (qemu start -> SSH session; alone)",
                        " / ".join("%.2f s" % b for b in boots), "report")
            res.add(section, "`tworker vms import` of %d workers (wall)" % count, "%.1f s" % took)

            # -- 2. one worker, jobs one at a time, each to a VM restored and paused.
            w1 = self.spawn_worker(cdir, burst=False, vm="worker-1")
            workers.append(w1)
            self.wait_ready(w1, timeout=30)
            first = "qemu-first"
            self.enqueue_all([{"id": first, "config": {"script": ["echo hi"]}}])
            if not self.wait_final([first], timeout=300, worker=w1):
                raise RuntimeError("the first job was not final after 300 s:\n%s" % tail(w1.log_path))
            note_pids()
            rec = self.records([first])[first]
            self.check_states({first: rec}, "qemu first job")
            pid1 = self.qemu_pid(state_dir, "worker-1")
            if pid1 is None:
                raise RuntimeError("no qemu runs for worker-1 after its first job:\n%s" % tail(w1.log_path))
            if rec.get("started_at") and rec.get("received_at"):
                res.add(section, "first job of a worker: received -> started (qemu -loadvm sandbox, SSH, clock)",
                        "%.2f s" % (parse_iso(rec["started_at"]) - parse_iso(rec["received_at"])), "report")
            self.wait_paused(pid1)

            n = self.args.qemu_jobs
            ids = ["qemu-seq-%02d" % i for i in range(n)]
            first_log, first_log_at, paused_after = [], {}, []
            self.r("SADD", QUEUES_KEY, QUEUE)
            for i in ids:
                key = "tworker:job:%s:log" % i
                queued_at = now_iso()
                enq_wall, enq = time.time(), time.monotonic()
                self.r("RPUSH", QUEUE_KEY, envelope({"id": i, "config": {"script": ["echo hi"]}}, queued_at=queued_at))
                deadline = enq + 120
                while True:
                    page = self.r("XRANGE", key, "-", "+", "COUNT", "1")
                    if page:
                        first_log.append(time.monotonic() - enq)
                        first_log_at[i] = enq_wall + first_log[-1]
                        break
                    if w1.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("no log entry for %s:\n%s" % (i, tail(w1.log_path)))
                    time.sleep(0.005)
                if not self.wait_final([i], timeout=120, worker=w1):
                    raise RuntimeError("job %s not final after 120 s:\n%s" % (i, tail(w1.log_path)))
                paused = self.wait_paused(pid1)
                fin = parse_iso(self.records([i])[i].get("finished_at"))
                if fin is not None:
                    paused_after.append(paused - fin)
                time.sleep(0.2)
            recs = self.records(ids)
            passed = self.check_states(recs, "qemu sequential")
            prep = [parse_iso(r["started_at"]) - parse_iso(r["received_at"]) for r in recs.values() if r.get("started_at")]
            start = [parse_iso(r["started_at"]) - parse_iso(r["queued_at"]) for r in recs.values() if r.get("started_at")]
            run = [parse_iso(r["finished_at"]) - parse_iso(r["started_at"]) for r in recs.values() if r.get("finished_at")]
            to_log = [first_log_at[i] - parse_iso(r["started_at"]) for i, r in recs.items() if r.get("started_at")]
            pct = lambda v: "p50 %.2f / p99 %.2f s" % (percentile(v, 50), percentile(v, 99))
            res.add(section, "enqueue -> first log entry, VM waiting (%d jobs, client polls 5 ms)" % n, pct(first_log),
                    "p50 <= 0.5 s", percentile(first_log, 50) <= 0.5)
            res.add(section, "  queued_at -> started_at", pct(start))
            res.add(section, "    of which received_at -> started_at (cont, SSH, clock)", pct(prep))
            res.add(section, "  started_at -> first log entry (build's ssh session, log flush <= 200 ms)", pct(to_log))
            res.add(section, "  started_at -> finished_at (echo hi over SSH)", pct(run))
            res.add(section, "reset after a job: finished_at -> qemu paused (loadvm+stop)", pct(paused_after))
            res.add(section, "jobs passed (one at a time)", "%d / %d" % (passed, n), str(n), passed == n)

            # Reset-to-SSH as the queue sees it: n+1 jobs queued at once, so each next job waits
            # for the previous one's reset; finished_at(k) -> started_at(k+1) is loadvm + stop,
            # taking the next job, cont, SSH banner and the clock set.
            ids = ["qemu-b2b-%02d" % i for i in range(n + 1)]
            t0 = time.time()
            self.enqueue_all([{"id": i, "config": {"script": ["echo hi"]}} for i in ids], queued_at=now_iso())
            if not self.wait_final(ids, timeout=60 + 20 * len(ids), worker=w1):
                raise RuntimeError("back-to-back jobs not final:\n%s" % tail(w1.log_path))
            recs = self.records(ids)
            passed = self.check_states(recs, "qemu back-to-back")
            ordered = sorted(recs.values(), key=lambda r: parse_iso(r["received_at"]))
            gaps = [parse_iso(b["started_at"]) - parse_iso(a["finished_at"]) for a, b in zip(ordered, ordered[1:])]
            span = max(parse_iso(r["finished_at"]) for r in ordered) - t0
            res.add(section, "reset-to-SSH: finished_at -> next job's started_at (%d jobs queued at once)" % len(ids), pct(gaps),
                    "p50 <= 1.5 s", percentile(gaps, 50) <= 1.5)
            res.add(section, "  one worker, echo hi back to back", "%.1f jobs/min (%d in %.1f s)" % (60 * len(ids) / span, len(ids), span))
            res.add(section, "jobs passed (back to back)", "%d / %d" % (passed, len(ids)), str(len(ids)), passed == len(ids))
            self.wait_paused(pid1)
            rss_paused = proc_status(pid1, "VmRSS")

            # -- 4. two workers; warm the second (its first job starts its qemu from sandbox).
            w2 = self.spawn_worker(cdir, burst=False, vm="worker-2")
            workers.append(w2)
            self.wait_ready(w2, timeout=30)
            for attempt in range(4):
                # Two jobs at once: worker-1 takes one and is busy for 2 s, worker-2 the other.
                warm = ["qemu-warm-%d-%d" % (attempt, k) for k in range(2)]
                self.enqueue_all([{"id": i, "config": {"script": ["sleep 2"]}} for i in warm])
                if not self.wait_final(warm, timeout=300, worker=w2):
                    raise RuntimeError("warm-up jobs not final:\n%s" % tail(w2.log_path))
                if any(r.get("vm") == "worker-2" for r in self.records(warm).values()):
                    break
            note_pids()
            pid2 = self.qemu_pid(state_dir, "worker-2")
            if pid2 is None:
                raise RuntimeError("worker-2 ran no job in 4 tries:\n%s" % tail(w2.log_path))
            self.wait_paused(pid1)
            self.wait_paused(pid2)
            jobs = self.args.qemu_parallel_jobs
            ids = ["qemu-par-%02d" % i for i in range(jobs)]
            t0 = time.time()
            self.enqueue_all([{"id": i, "config": {"script": ["true"]}} for i in ids], queued_at=now_iso())
            if not self.wait_final(ids, timeout=60 + 20 * jobs, worker=w1):
                raise RuntimeError("parallel jobs not final:\n%s\n%s" % (tail(w1.log_path), tail(w2.log_path)))
            recs = self.records(ids)
            passed = self.check_states(recs, "qemu two workers")
            span = max(parse_iso(r["finished_at"]) for r in recs.values()) - t0
            per_vm = {}
            for r in recs.values():
                per_vm[r.get("vm", "?")] = per_vm.get(r.get("vm", "?"), 0) + 1
            res.add(section, "2 workers, %d `script: true` jobs queued at once" % jobs,
                    "%.1f jobs/min (%.1f s; %s)" % (60 * jobs / span, span,
                                                   ", ".join("%s: %d" % kv for kv in sorted(per_vm.items()))), "report")
            res.add(section, "jobs passed (two workers)", "%d / %d" % (passed, jobs), str(jobs), passed == jobs)

            # -- 3. RSS per VM, both VMs restored and paused.
            self.wait_paused(pid1)
            self.wait_paused(pid2)
            rss = [proc_status(pid, "VmRSS") or 0 for pid in (pid1, pid2)]
            res.add(section, "qemu VmRSS per VM, paused at sandbox (-m %d)" % self.args.qemu_memory,
                    " / ".join("%.0f MiB" % (k / 1024) for k in rss) + (" (worker-1 before worker-2 started: %.0f MiB)"
                                                                       % ((rss_paused or 0) / 1024)), "report")

            # -- 5. the accelerator, and what KVM would change.
            res.add(section, "accel (qemu.accel: %s)" % self.args.qemu_accel, accel)
            if accel == "tcg":
                res.add(section, "with KVM (qemu.accel: kvm)", "not measured: no usable KVM here; the guest boots in well "
                        "under a second under KVM (QEMU.md)")
        finally:
            note_pids()
            for p in workers:
                if p in self.children:
                    code, _ = self.stop_worker(p, timeout=30)
                    if code != 0:
                        print("  WARNING: worker %d exited %s on SIGTERM" % (p.pid, code))
            try:
                tworker_vms("remove", "--yes", timeout=120)
            except Exception as e:  # the pids below are still stopped
                print("  WARNING: tworker vms remove: %s" % e)
            # Whatever qemu still runs (a worker killed with SIGKILL leaves its VM): by PID,
            # only when its command line still carries this run's -name.
            for pid, vm in seen_pids:
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        if (self.QEMU_PREFIX + vm).encode() not in f.read().split(b"\0"):
                            continue
                    print("  killing qemu %d (%s) left running" % (pid, vm))
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.leftovers()

    def replication(self):
        """What `redis.wait_replicas: 1` costs per job: WAIT after the fetch's move and after the final commit."""
        n = self.args.jobs
        section = "9 replication"
        print("\n== 9. Replication: %d jobs, script: true, one worker --burst, a replica attached; "
              "without and with WAIT (best of %d rounds each) ==" % (n, self.args.rounds), flush=True)
        # No 5 s pause before the replica's first (diskless) sync.
        self.r("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        rport = free_port()
        rdir = os.path.join(self.tmp, "replica")
        os.makedirs(rdir, exist_ok=True)
        replica = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                                    "--appendonly", "no", "--dir", rdir, "--daemonize", "no", "--loglevel", "warning",
                                    "--replicaof", "127.0.0.1", str(self.port), "--logfile", os.path.join(rdir, "redis.log")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    rr = Redis(port=rport)
                    up = b"master_link_status:up" in rr("INFO", "replication")
                    rr.close()
                    if up:
                        break
                except (OSError, RedisError):
                    pass
                if replica.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync (see %s/redis.log)" % rdir)
                time.sleep(0.05)
            # The bare price: one write alone, and one write followed by WAIT 1 (a round trip more,
            # plus the replica's acknowledgement).
            rounds = 1000
            t0 = time.monotonic()
            for i in range(rounds):
                self.r("SET", "bench:wait", str(i))
            alone = (time.monotonic() - t0) / rounds
            t0 = time.monotonic()
            for i in range(rounds):
                self.r("SET", "bench:wait", str(i))
                if self.r("WAIT", "1", "1000") != 1:
                    raise RuntimeError("WAIT 1 was not confirmed by the replica")
            waited = (time.monotonic() - t0) / rounds
            self.results.add(section, "SET alone / SET + WAIT 1 (%d each)" % rounds,
                             "%.3f / %.3f ms (WAIT adds %.3f ms)" % (1000 * alone, 1000 * waited, 1000 * (waited - alone)))
            per_job = {}
            for k in range(self.args.rounds):
                for waits in (0, 1):
                    self.reset()
                    cdir = self.write_config("replication-%d" % waits, redis_extra=["  wait_replicas: %d" % waits])
                    ids = ["repl-%d-%d-%04d" % (waits, k, i) for i in range(n)]
                    self.enqueue_all([{"id": i, "config": {"script": ["true"]}} for i in ids])
                    wall, _, log_path = self.run_burst(cdir)
                    passed = self.check_states(self.records(ids), "replication wait_replicas=%d" % waits)
                    if passed != n:
                        raise RuntimeError("%d of %d jobs passed with wait_replicas %d" % (passed, n, waits))
                    with open(log_path, "rb") as f:
                        if b"replica(s) confirmed within" in f.read():
                            print("  WARNING: a WAIT fell short with wait_replicas %d (%s)" % (waits, log_path))
                    per_job.setdefault(waits, []).append(wall / n)
            best0, best1 = min(per_job[0]), min(per_job[1])
            self.results.add(section, "per job, wait_replicas 0 (rounds: %s)" % ", ".join("%.2f" % (1000 * v) for v in per_job[0]),
                             "%.2f ms (%.0f jobs/s)" % (1000 * best0, 1 / best0))
            self.results.add(section, "per job, wait_replicas 1 (rounds: %s)" % ", ".join("%.2f" % (1000 * v) for v in per_job[1]),
                             "%.2f ms (%.0f jobs/s)" % (1000 * best1, 1 / best1))
            self.results.add(section, "what the two WAITs cost per job", "%.2f ms" % (1000 * (best1 - best0)), "report")
        finally:
            replica.terminate()
            try:
                replica.wait(10)
            except subprocess.TimeoutExpired:
                replica.kill()
                replica.wait()

    def run(self):
        sections = [("throughput", self.throughput), ("checkout", self.checkout),
                    ("latency", self.latency), ("queues", self.queues), ("log", self.log_throughput),
                    ("log-secrets", self.log_throughput_with_secrets), ("virtualbox", self.virtualbox), ("lifecycle", self.lifecycle),
                    ("master", self.master), ("qemu", self.qemu), ("replication", self.replication)]
        wanted = set(self.args.only.split(",")) if self.args.only else None
        t0 = time.monotonic()
        try:
            print("tworker: %s" % self.tworker)
            print("temp dir: %s" % self.tmp)
            print("machine: %d CPUs, load average %s (other work on the machine skews every figure)"
                  % (os.cpu_count() or 0, loadavg()))
            self.start_redis()
            for name, fn in sections:
                if wanted and name not in wanted:
                    continue
                try:
                    fn()
                except Exception as e:  # keep going: the other sections still say something
                    self.results.errors.append("%s: %s" % (name, e))
                    print("  ERROR in %s: %s" % (name, e), flush=True)
                    traceback.print_exc()
                finally:
                    self.kill_children()
        finally:
            self.kill_children()
            self.stop_redis()
            if self.args.keep:
                print("kept %s" % self.tmp)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        print("\n== Summary (%.0f s; load average at the end %s) ==" % (time.monotonic() - t0, loadavg()))
        self.results.table()
        for e in self.results.errors:
            print("ERROR: " + e)
        return 1 if self.results.errors else 0


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return "(no log)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tworker", required=True, help="path of the tworker binary (release build)")
    ap.add_argument("--jobs", type=int, default=500, help="jobs of the throughput section (500)")
    ap.add_argument("--checkout-jobs", type=int, default=50, help="jobs of the checkout section (50)")
    ap.add_argument("--latency-jobs", type=int, default=200, help="jobs of the latency section (200)")
    ap.add_argument("--gap-ms", type=int, default=20, help="ms between enqueues in the latency section (20)")
    ap.add_argument("--log-mib", type=int, default=64, help="MiB the log job prints (64)")
    ap.add_argument("--log-timeout", type=int, default=90, help="seconds the log job may take (90)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of sections 1 and 2; the best is reported (2)")
    ap.add_argument("--burst-timeout", type=int, default=120, help="seconds a --burst worker may run (120)")
    ap.add_argument("--vbox-jobs", type=int, default=20, help="jobs of the virtualbox section (20)")
    ap.add_argument("--qemu-image", help="the qemu test guest's directory (default: .build-qemu-image in this repo; "
                    "built with boxes/qemu/build-test-image when it holds no complete image)")
    ap.add_argument("--qemu-jobs", type=int, default=20, help="jobs one at a time, and back to back, in the qemu section (20)")
    ap.add_argument("--qemu-parallel-jobs", type=int, default=20, help="`script: true` jobs for two qemu workers (20)")
    ap.add_argument("--qemu-memory", type=int, default=256, help="vms.memory (MiB) of the qemu section's VMs (256)")
    ap.add_argument("--qemu-accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="qemu.accel of the qemu section (auto: kvm where it works, else tcg)")
    ap.add_argument("--only", help="comma-separated sections: throughput,checkout,latency,log,log-secrets,virtualbox,lifecycle,master,qemu,replication")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, config)")
    args = ap.parse_args()
    if not os.access(args.tworker, os.X_OK):
        ap.error("--tworker %s: not an executable" % args.tworker)
    if shutil.which("redis-server") is None:
        ap.error("redis-server is not on PATH (scripts/install-deps installs it)")
    bench = Bench(args)
    # SIGTERM/SIGHUP end the run through the same cleanup as Ctrl-C.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    sys.exit(bench.run())


if __name__ == "__main__":
    main()
