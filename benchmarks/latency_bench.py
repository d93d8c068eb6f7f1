"""Benchmark 4: status latency, p50 and p99 over ``--n`` processes, one at a time.

A status is *visible* when the server has acknowledged the write that sets it (pymongo's
CommandSucceededEvent, in the process that wrote it): from then on every reader sees it.

- call → PENDING visible: from the caller's call to the acknowledgement of its
  schedule write (this process);
- pick-up → RUNNING visible: from the pool process starting the task (``task_prerun``)
  to the acknowledgement of the claim (the worker, ``benchmarks.bench_app``);
- return → SUCCESS visible: from the method's return to the acknowledgement of the end;
- and end to end: call → RUNNING visible, call → SUCCESS visible (broker transit included).

The worker pushes each run's times to Redis after the task; the caller waits for that
before the next call, so no process waits in a queue. All on one machine and one clock.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pymongo import monitoring

from benchmarks.common import log, percentile, write_json


class PendingAck(monitoring.CommandListener):
    moment: float | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "findAndModify" and self.moment is None:
            self.moment = time.time()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


ACK = PendingAck()
monitoring.register(ACK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args()
    from benchmarks.bench_app import LATENCY_KEY, LatencyDoc, _redis

    client = _redis()
    client.delete(LATENCY_KEY)
    warm = 20
    LatencyDoc.objects.insert([LatencyDoc() for _ in range(args.n + warm)], load_bulk=False)
    docs = list(LatencyDoc.objects.order_by("id"))
    samples: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        ACK.moment = None
        called = time.time()
        doc.noop()
        reply = client.blpop([LATENCY_KEY], timeout=60)
        if reply is None:
            raise TimeoutError(f"no latency record for {doc.pk}")
        record = json.loads(reply[1])
        if i < warm:
            continue
        samples.append({
            "call_to_pending": ACK.moment - called,
            "pickup_to_running": record["claim_ack"] - record["prerun"],
            "return_to_success": record["end_ack"] - record["returned"],
            "call_to_running": record["claim_ack"] - called,
            "call_to_success": record["end_ack"] - called,
        })
    summary = {}
    for key in samples[0]:
        values = [s[key] * 1000 for s in samples]
        summary[key] = {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                        "max_ms": max(values)}
        log(f"latency {key:<18} p50 {summary[key]['p50_ms']:6.2f} ms  "
            f"p99 {summary[key]['p99_ms']:6.2f} ms")
    write_json(args.json, {"n": len(samples), "summary": summary})


if __name__ == "__main__":
    main()
