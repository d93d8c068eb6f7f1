"""Benchmark 3: joins at scale: a parent with many children on 2 workers.

The parent's process inserts ``--children`` children and calls each one's process, then
waits; each child's end tells the parent, and the last one sends the join task. Reports
the time from the last child's end (its ``complete_time``) to ``join()`` starting (the
time ``ParentDoc.join`` records), the commands per child and the server time of each
child-run command, which ``benchmarks/run.py`` compares with the largest parent of
``commands_bench`` (or give ``--small``) to show whether any work per child grows with
the number of children. Counted as in ``commands_bench``.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.commands_bench import WorkerLog, parent_with_children, warm_up
from benchmarks.common import log, write_json


def run(worker_log: WorkerLog, count: int) -> dict[str, Any]:
    result = parent_with_children(worker_log, count)
    log(f"joins: {count} children: {result['per_child']:.2f} commands per child, join "
        f"{result['join_delay_s'] * 1000:.0f} ms after the last child, "
        f"{result['wall_s']:.1f} s in all; child commands (µs): "
        f"{result['child_command_micros']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command-log", required=True)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=0,
                        help="also run a parent with this many children first, to compare")
    parser.add_argument("--json")
    args = parser.parse_args()
    worker_log = WorkerLog(args.command_log)
    warm_up(worker_log)
    sizes = [args.small, args.children] if args.small else [args.children]
    results = [run(worker_log, n) for n in sizes]
    write_json(args.json, results)


if __name__ == "__main__":
    main()
