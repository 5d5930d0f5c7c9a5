#!/usr/bin/env python3
"""A small HTTP client for the listener's end-to-end tests (stdlib + prometheus-client).

  http_client.py metrics URL   -> JSON {"name{label=value,...}": value} parsed by prometheus-client
  http_client.py get URL [METHOD] ["Name: value" ...]  -> JSON {"status": N, "body": "..."}
  http_client.py sse URL       -> one JSON line per event ({"event": .., "id": .., "data": ..}) until the stream ends
"""
import json
import sys
import urllib.error
import urllib.request


def get(url, method="GET", headers=()):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    for header in headers:
        name, _, value = header.partition(": ")
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main():
    command, url = sys.argv[1], sys.argv[2]
    if command == "metrics":
        from prometheus_client.parser import text_string_to_metric_families
        status, body = get(url)
        if status != 200:
            sys.exit("GET %s: %d %s" % (url, status, body))
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                labels = ",".join("%s=%s" % (k, v) for k, v in sorted(sample.labels.items()))
                samples["%s{%s}" % (sample.name, labels)] = sample.value
        print(json.dumps(samples, sort_keys=True))
    elif command == "get":
        status, body = get(url, sys.argv[3] if len(sys.argv) > 3 else "GET", sys.argv[4:])
        print(json.dumps({"status": status, "body": body}))
    elif command == "sse":
        with urllib.request.urlopen(url, timeout=60) as response:
            event = {}
            for raw in response:
                line = raw.decode().rstrip("\n")
                if not line:
                    if event:
                        print(json.dumps(event), flush=True)
                    event = {}
                    continue
                name, _, value = line.partition(": ")
                event[name] = value
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
