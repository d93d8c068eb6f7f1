"""Run every benchmark and print one markdown table of ratios measured in this run.

From the repository root::

    .venv/bin/python -m benchmarks.run            # the full run (about 15 minutes)
    .venv/bin/python -m benchmarks.run --only joins --big-children 10000   # ~40 minutes
    .venv/bin/python -m benchmarks.run --quick    # a smoke run (about two minutes)
    .venv/bin/python -m benchmarks.run --only cpu,commands --out /tmp/table.md

Starts what it needs: a SecantusDB (unless ``MONGODB_URI`` is set), a private
redis-server (broker and result backend; unless ``CELERY_BROKER_URL`` is set), and real
prefork ``celery -A benchmarks.bench_app worker`` processes. Each part runs its caller in
a fresh process (``benchmarks/<part>_bench.py``) so one part's instrumentation never costs
another's. Parts:

1. ``cpu``: CPU per no-op process, caller + worker tree, vs plain Celery (best of rounds);
2. ``commands``: MongoDB commands per lifecycle, counted by command monitoring;
3. ``joins``: a parent with many children on 2 workers: join delay, work per child;
4. ``latency``: call → PENDING, pick-up → RUNNING, return → SUCCESS visible, p50/p99;
5. ``datafix``: the migration vs one bare pipeline ``update_many``, and its peak RSS;
6. ``scale``: "what is running" over many documents: explain() and latencies.

Benchmarks are not tests: nothing here asserts a time. See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, log
from benchmarks.report import render
from devtools import services

PARTS = ("cpu", "commands", "joins", "latency", "datafix", "scale")


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"cpu_calls": 100, "cpu_rounds": 1, "children": [10, 50], "big_children": 100,
                "latency_n": 50, "datafix_sizes": [1_000, 4_000], "scale_docs": 5_000}
    # 10,000 children take about 37 minutes on SecantusDB (see RESULTS.md): give
    # --big-children 10000 for that run; the default keeps the whole run near 15 minutes.
    return {"cpu_calls": 1000, "cpu_rounds": 3, "children": [10, 100, 1000],
            "big_children": 2_000, "latency_n": 1000, "datafix_sizes": [25_000, 100_000],
            "scale_docs": 200_000}


class Bench:
    """The servers and workers of one run, and the environment every part gets."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.server: services.Service | None = None
        self.redis: services.Service | None = None
        self.workers: list[services.Service] = []
        self.tag = uuid.uuid4().hex[:8]

    def start(self) -> None:
        uri = os.environ.get("MONGODB_URI")
        if not uri:
            self.server = services.start_secantus(self.work_dir)
            uri = self.server.url
        broker = os.environ.get("CELERY_BROKER_URL")
        if not broker:
            self.redis = services.start_redis(self.work_dir)
            broker = self.redis.url
        base = broker.rsplit("/", 1)[0] if broker.startswith("redis") else None
        self.env = {
            "BENCH_MONGODB_URI": uri,
            "BENCH_BROKER_URL": broker,
            "BENCH_RESULT_URL": f"{base}/1" if base else "redis://127.0.0.1:6379/1",
            "BENCH_DB": f"procstatus_bench_{self.tag}",
            "BENCH_QUEUE": f"procstatus-bench-{self.tag}",
        }

    @property
    def server_pid(self) -> int | None:
        return self.server.process.pid if self.server else None

    @property
    def redis_pid(self) -> int | None:
        return self.redis.process.pid if self.redis else None

    def start_workers(self, count: int, concurrency: int, command_log: Path | None) -> None:
        self.stop_workers()
        env = dict(self.env)
        if command_log is not None:
            env["BENCH_COMMAND_LOG"] = str(command_log)
        for i in range(count):
            self.workers.append(services.start_worker(
                "benchmarks.bench_app", self.work_dir,
                hostname=f"bench{i}-{self.tag}@%h", env=env, concurrency=concurrency,
                queues=self.env["BENCH_QUEUE"],
            ))

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def part(self, module: str, *args: str, extra_env: dict[str, str] | None = None) -> Any:
        out = self.work_dir / f"{module}-{uuid.uuid4().hex[:6]}.json"
        argv = [sys.executable, "-m", f"benchmarks.{module}", *args, "--json", str(out)]
        subprocess.run(argv, cwd=REPO_ROOT, env={**os.environ, **self.env, **(extra_env or {})},
                       check=True)
        return json.loads(out.read_text())

    def stop(self) -> None:
        self.stop_workers()
        for service in (self.redis, self.server):
            if service is not None:
                service.stop()


def versions() -> dict[str, str]:
    import celery
    import kombu
    import mongoengine
    import pymongo

    found = {
        "python": platform.python_version(), "celery": celery.__version__,
        "kombu": kombu.__version__, "pymongo": pymongo.__version__,
        "mongoengine": ".".join(map(str, mongoengine.VERSION)),
    }
    try:
        secantus = subprocess.run(
            [str(services.secantus_python()), "-c",
             "import importlib.metadata as m; print(m.version('secantusdb'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except Exception:  # MONGODB_URI given, or no SecantusDB venv
        secantus = "not used"
    found["SecantusDB"] = secantus
    try:
        found["redis-server"] = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[2].removeprefix("v=")
    except Exception:
        found["redis-server"] = "unknown"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~2 minute smoke run")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--cpu-calls", type=int, help="calls per side per round (1000)")
    parser.add_argument("--cpu-rounds", type=int, help="rounds, the best is kept (3)")
    parser.add_argument("--big-children", type=int, help="children of the big parent (2000)")
    parser.add_argument("--latency-n", type=int, help="processes timed one by one (1000)")
    parser.add_argument("--scale-docs", type=int, help="documents for part 6 (200000)")
    parser.add_argument("--datafix-sizes", help="comma-separated document counts (25000,100000)")
    args = parser.parse_args()
    size = sizes(args.quick)
    for key in ("cpu_calls", "cpu_rounds", "big_children", "latency_n", "scale_docs"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if args.datafix_sizes:
        size["datafix_sizes"] = [int(n) for n in args.datafix_sizes.split(",")]
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")

    results: dict[str, Any] = {"sizes": size, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "load_before": os.getloadavg(), "versions": versions()}
    began = time.monotonic()
    bench = Bench(Path(tempfile.mkdtemp(prefix="procstatus-bench-")))
    try:
        bench.start()
        if "cpu" in parts:
            log("part 1: CPU per no-op process (one worker, prefork, concurrency 2)")
            bench.start_workers(1, 2, None)
            results["cpu"] = bench.part(
                "cpu_bench", "--calls", str(size["cpu_calls"]),
                "--rounds", str(size["cpu_rounds"]),
                "--chunk", str(min(100, size["cpu_calls"])),
                "--worker-pid", str(bench.workers[0].process.pid),
                *(["--server-pid", str(bench.server_pid)] if bench.server_pid else []),
                *(["--redis-pid", str(bench.redis_pid)] if bench.redis_pid else []),
            )
        monitored = [p for p in ("commands", "joins", "latency") if p in parts]
        if monitored:
            command_log = bench.work_dir / "worker-commands.log"
            log("parts 2-4 on 2 workers (prefork, concurrency 1 each), commands monitored")
            bench.start_workers(2, 1, command_log)
            common = ["--command-log", str(command_log)]
            if "commands" in parts:
                log("part 2: MongoDB commands per lifecycle")
                results["commands"] = bench.part(
                    "commands_bench", *common,
                    "--children", ",".join(map(str, size["children"])),
                )
            if "joins" in parts:
                log(f"part 3: a parent with {size['big_children']} children")
                small = [] if "commands" in results else ["--small", str(size["children"][-1])]
                results["joins"] = bench.part(
                    "joins_bench", *common, "--children", str(size["big_children"]), *small
                )
                if "commands" in results:  # compare with the largest parent measured there
                    results["joins"].insert(0, results["commands"]["parents"][-1])
            if "latency" in parts:
                log(f"part 4: status latency over {size['latency_n']} processes")
                results["latency"] = bench.part("latency_bench", "--n", str(size["latency_n"]))
            bench.stop_workers()
        if "datafix" in parts:
            log(f"part 5: datafix at {size['datafix_sizes']}")
            results["datafix"] = bench.part(
                "datafix_bench", "--table", "--sizes", ",".join(map(str, size["datafix_sizes"])),
                *(["--server-pid", str(bench.server_pid)] if bench.server_pid else []),
            )
        if "scale" in parts:
            log(f"part 6: what is running, over {size['scale_docs']} documents")
            results["scale"] = bench.part("scale_bench", "--docs", str(size["scale_docs"]))
    finally:
        bench.stop()
    results["elapsed_s"] = time.monotonic() - began
    results["load_after"] = os.getloadavg()
    table = render(results)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
