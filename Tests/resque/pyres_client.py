#!/usr/bin/env python3
"""Reads tworker's Resque worker registry back with pyres (a Resque client from PyPI).

Usage: pyres_client.py workers HOST:PORT
Prints one JSON line: {"info": ResQ.info(), "workers": [{"id", "queues", "state", "job",
"started", "processed", "failed"}, ...]} as pyres reports them.
"""
import json
import sys

from pyres import ResQ
from pyres.worker import Worker


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def main():
    command, server = sys.argv[1], sys.argv[2]
    if command != "workers":
        sys.exit("unknown command: " + command)
    resq = ResQ(server=server)
    workers = []
    for worker in Worker.all(resq):
        if worker is None:
            continue
        workers.append({
            "id": str(worker),
            "queues": list(worker.queues),
            "state": worker.state(),
            "job": worker.processing(),
            "started": text(worker.started),
            "processed": worker.get_processed(),
            "failed": worker.get_failed(),
        })
    info = resq.info()
    print(json.dumps({"info": {"workers": info["workers"], "processed": info["processed"], "failed": info["failed"]},
                      "workers": sorted(workers, key=lambda w: w["id"])}))


if __name__ == "__main__":
    main()
