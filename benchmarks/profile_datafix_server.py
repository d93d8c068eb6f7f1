"""Profile the MongoDB-protocol server while the datafix migrates: where its time goes.

From the repository root, as root (py-spy attaches to the server process)::

    .venv/bin/python -m benchmarks.profile_datafix_server [--docs 25000]

Starts a SecantusDB, seeds ``--docs`` legacy documents (``datafix_bench.seed``), and
samples the server with ``py-spy record --gil`` while one bare pipeline ``update_many``
runs, then while the migration (whole-collection mode) runs; prints the functions with
the most samples for each.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo

from benchmarks.common import log
from benchmarks.datafix_bench import BARE_PIPELINE, seed
from benchmarks.profile_hot_path import py_spy_path, report, summarize
from devtools import services
from procstatus.datafix.task_status_runner import migrate_collection


def sampled(py_spy: str, pid: int, out: Path, action) -> float:  # type: ignore[no-untyped-def]
    sampler = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "200", "--gil", "--nonblocking",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let py-spy attach
    began = time.perf_counter()
    action()
    took = time.perf_counter() - began
    sampler.send_signal(signal.SIGINT)
    sampler.wait(60)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=25_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    py_spy = py_spy_path()
    work = Path(tempfile.mkdtemp(prefix="procstatus-datafix-profile-"))
    server = services.start_secantus(work)
    texts = []
    try:
        db = pymongo.MongoClient(server.url)["datafix_profile"]
        for name, action in (
            ("one bare pipeline update_many", lambda: db.c.update_many({}, BARE_PIPELINE)),
            ("the migration, whole-collection mode",
             lambda: migrate_collection(db.c, dry_run=False, fail_in_flight=False)),
        ):
            seed(db.c, args.docs)
            out = work / f"{len(texts)}.txt"
            took = sampled(py_spy, server.process.pid, out, action)
            log(f"{name}: {took:.2f} s")
            texts.append(summarize(out, f"server during {name} ({args.docs} docs, {took:.1f} s)",
                                   args.top, interesting=("secantus/",)))
    finally:
        server.stop()
    return report(texts, args.out)


if __name__ == "__main__":
    sys.exit(main())
