#!/usr/bin/env bash
# The dashboard's own fast test: the real pages, script and stylesheet (read from the Swift
# sources) served by stub_api.py with canned data, driven by dashboard_test.py in headless
# Chromium. No Swift build needed. Runs twice: without a token, then with one (login form).
# Screenshots go to $1 (default var/browser-stub).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
screenshots="${1:-$root/var/browser-stub}"
work="$(mktemp -d)"
stub_pid=""

cleanup() {
    # The stub is ours: stop it by its PID, never by name.
    if [ -n "$stub_pid" ] && kill -0 "$stub_pid" 2>/dev/null; then
        kill "$stub_pid" 2>/dev/null || true
        wait "$stub_pid" 2>/dev/null || true
    fi
    stub_pid=""
}
trap 'cleanup; rm -rf "$work"' EXIT

run() {
    local name="$1"; shift
    local token="$1"; shift
    rm -f "$work/port"
    python3 "$here/stub_api.py" --port-file "$work/port" --workers 3 --token "$token" &
    stub_pid=$!
    for _ in $(seq 100); do
        [ -s "$work/port" ] && break
        kill -0 "$stub_pid" 2>/dev/null || { echo "stub_api.py exited before listening" >&2; exit 1; }
        sleep 0.1
    done
    [ -s "$work/port" ] || { echo "stub_api.py did not listen within 10 s" >&2; exit 1; }
    echo "== $name (stub on 127.0.0.1:$(cat "$work/port"))"
    python3 "$here/dashboard_test.py" \
        --base-url "http://127.0.0.1:$(cat "$work/port")" \
        --workers 3 \
        --running-job running-1 \
        --xss-job 'xss-<img src=x onerror=window.xss=1>' \
        --screenshots "$screenshots/$name" \
        --token "$token" \
        "$@"
    cleanup
}

# The expected lines: "\r" progress shows its last part; a line split across log entries is whole.
run open "" --pause-vm worker-2 --expect-fold system_info --expect-ansi \
    --expect-line 'Receiving objects: 100% (8/8), done.' --expect-line 'test 002 ... ok'

run token "stub-secret-token"
