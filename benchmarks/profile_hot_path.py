"""Profile the hot path of a no-op process with py-spy: the caller and the worker's pool.

From the repository root, as root (py-spy attaches to the worker's processes)::

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile_hot_path [--calls 2000] [--side procstatus|plain]

Starts SecantusDB (unless ``MONGODB_URI``), a private Redis and one prefork worker, runs
``--calls`` no-op calls through ``benchmarks.cpu_bench`` under ``py-spy record``, samples
the worker's main and pool processes meanwhile, and prints for each process group the
functions with the most samples, inclusive (a function and what it calls) and self.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.common import REPO_ROOT, log
from benchmarks.run import Bench

INTERESTING = ("procstatus/", "benchmarks/", "mongoengine/", "pymongo/", "kombu/", "celery/",
               "json/", "bson/", "billiard/", "redis/", "logging/")


def py_spy_path() -> str:
    """py-spy on PATH, else next to this interpreter (``.venv/bin/pip install py-spy``)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def report(summaries: list[str], out: str | None) -> int:
    """Print the summaries, and write them to ``out`` too; the exit code."""
    text = "\n\n".join(summaries)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


def summarize(path: Path, title: str, top: int,
              interesting: tuple[str, ...] = INTERESTING) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        total += count
        seen = set()
        for frame in frames:
            name = _short(frame)
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        if frames:
            own[_short(frames[-1])] += count
    lines = [f"## {title}: {total} samples", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top * 3)
              if any(key in name for key in interesting)][:top]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "package/file.py:function"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    for anchor in ("site-packages", "lib", "main"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor):]
            break
    return f"{'/'.join(parts[-2:])}:{name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--side", default="procstatus", choices=("procstatus", "plain"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", help="write the summary here too")
    args = parser.parse_args()
    py_spy = py_spy_path()
    if not Path(py_spy).exists():
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    bench = Bench(Path(tempfile.mkdtemp(prefix="procstatus-profile-")))
    summaries = []
    try:
        bench.start()
        bench.start_workers(1, 2, None)
        worker_pid = bench.workers[0].process.pid
        caller_out = bench.work_dir / "caller.txt"
        worker_out = bench.work_dir / "worker.txt"
        sampler = subprocess.Popen(
            [py_spy, "record", "--pid", str(worker_pid), "--subprocesses", "--rate", "250", "--gil",
             "--nonblocking",
             "--format", "raw", "--output", str(worker_out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        log(f"profiling {args.calls} {args.side} calls")
        subprocess.run(
            [py_spy, "record", "--rate", "250", "--gil", "--nonblocking", "--format", "raw",
             "--output", str(caller_out),
             "--", sys.executable, "-m", "benchmarks.cpu_bench", "--sides", args.side,
             "--rounds", "1", "--calls", str(args.calls), "--worker-pid", str(worker_pid),
             "--json", str(bench.work_dir / "cpu.json")],
            cwd=REPO_ROOT, env={**os.environ, **bench.env}, check=True,
            stdout=subprocess.DEVNULL,
        )
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
        summaries.append(summarize(caller_out, f"caller ({args.side})", args.top))
        summaries.append(summarize(worker_out, f"worker main + pool ({args.side})", args.top))
    finally:
        bench.stop()
    return report(summaries, args.out)


if __name__ == "__main__":
    sys.exit(main())
