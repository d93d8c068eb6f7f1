"""The dashboard's main page at scale: server-side time of its queries, each an index scan.

Seeds ``--docs`` Proc documents (default 200,000) in two classes — parents (2 %) and
their children (98 %) — in the status mix of a busy deployment (80 % SUCCESS, 10 % READY,
8 % FAILURE from 20 causes over three days, 1 % PENDING, 0.5 % RUNNING, 0.5 % WAITING),
with the ``Proc`` indexes and the children's index on their parent. Then, through the
dashboard application itself (Starlette's TestClient, in this process: the time is the
server's, no browser), it times what the main page asks — the counts per class (the bar
chart), the processing list, the recent failures grouped by cause, the workers — and a
parent's document page; records every MongoDB command those send (pymongo command
monitoring) with its duration; and explains each on the server: every one must scan an
index (no COLLSCAN), or the run fails.

    .venv/bin/python -m benchmarks.dashboard_bench            # SecantusDB, 200k documents
    .venv/bin/python -m benchmarks.dashboard_bench --docs 20000 --uri mongodb://HOST:PORT

Without ``--uri`` it starts a SecantusDB of its own (``devtools.services``). Prints a
table, writes JSON (``--out``). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pymongo  # noqa: E402
from bson import ObjectId  # noqa: E402
from pymongo import monitoring  # noqa: E402

from procstatus.liveness import WORKERS_COLLECTION  # noqa: E402

MIX = (("SUCCESS", 80.0), ("READY", 10.0), ("FAILURE", 8.0), ("PENDING", 1.0),
       ("RUNNING", 0.5), ("WAITING_FOR_RESULT", 0.5))
CAUSES = [f"ValueError: entry is malformed: rule {i} failed\n  in parse_entry, line {40 + i}"
          for i in range(20)]
CHUNK = 5_000
DB_NAME = "procstatus_dashboard_bench"
PARENTS, CHILDREN = "bench_uploads", "bench_entries"
QUERY_COMMANDS = {"find", "aggregate", "count", "distinct"}
"""Commands explained (a getMore continues a find: counted, not explained)."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Commands(monitoring.CommandListener):
    """The query commands this process sends while ``active``, with their durations."""

    def __init__(self) -> None:
        self.active = False
        self._pending: dict[int, dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []
        self.get_mores = 0
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.active and event.command_name == "getMore":
            with self._lock:
                self.get_mores += 1
        if self.active and event.command_name in QUERY_COMMANDS:
            command = {k: v for k, v in event.command.items()
                       if k not in {"lsid", "$db", "$clusterTime", "$readPreference"}}
            with self._lock:
                self._pending[event.request_id] = command

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            command = self._pending.pop(event.request_id, None)
            if command is not None:
                self.done.append({"command": command, "ms": event.duration_micros / 1000})

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self._pending.pop(event.request_id, None)


_CLASSES: list[type] = []


def bench_classes() -> tuple[type, type]:
    """The two classes as an app module would define them (for the parent's children)."""
    if _CLASSES:
        return _CLASSES[0], _CLASSES[1]
    from mongoengine import ObjectIdField, StringField

    from procstatus import Proc

    class BenchUpload(Proc):
        meta = {"collection": PARENTS}
        name = StringField()

        def children(self):  # type: ignore[no-untyped-def]
            return BenchEntry.objects(upload=self.pk)

    class BenchEntry(Proc):
        meta = {"collection": CHILDREN, "indexes": ["upload"]}
        name = StringField()
        upload = ObjectIdField()

    _CLASSES.extend([BenchUpload, BenchEntry])
    return BenchUpload, BenchEntry


def seed(db: Any, n: int) -> dict[str, dict[str, int]]:
    """``n`` documents: parents (2 %) and children (98 %), spread over three days."""
    rnd = random.Random(11)
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    now = datetime.now(timezone.utc)
    n_parents = max(1, n // 50)
    parent_ids = [ObjectId() for _ in range(n_parents)]
    counts: dict[str, dict[str, int]] = {PARENTS: dict.fromkeys(statuses, 0),
                                         CHILDREN: dict.fromkeys(statuses, 0)}
    for cls in bench_classes():  # the indexes the classes declare, Proc's among them
        cls.ensure_indexes()  # type: ignore[attr-defined]

    def document(i: int, collection: str) -> dict[str, Any]:
        status = rnd.choices(statuses, weights)[0]
        counts[collection][status] += 1
        changed = now - timedelta(seconds=rnd.randint(0, 3 * 86400))
        doc: dict[str, Any] = {
            "process_status": status, "current_process": "process_upload"
            if collection == PARENTS else "parse_entry",
            "current_process_step": None, "errors": [], "warnings": [],
            "create_time": changed - timedelta(minutes=5), "status_changed_at": None
            if status == "READY" else changed,
            "celery_task_id": f"{i:032x}", "worker_hostname": "w1@bench", "joining": False,
            "call_queue": [], "name": f"entry-{i}",
        }
        if status in ("RUNNING", "PENDING", "WAITING_FOR_RESULT"):
            doc["status_changed_at"] = now - timedelta(seconds=rnd.randint(0, 3600))
        if status == "RUNNING":
            doc.update(current_process_step="parsing", progress_done=rnd.randint(0, 9),
                       progress_total=10, worker_instance="a" * 32)
        if status == "FAILURE":
            doc["errors"] = [CAUSES[min(19, int(rnd.expovariate(0.3)))]]
        return doc

    began = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for i, pk in enumerate(parent_ids):
        batch.append({"_id": pk, **document(i, PARENTS)})
    db[PARENTS].insert_many(batch)
    batch = []
    for i in range(n - n_parents):
        batch.append({**document(i, CHILDREN), "upload": parent_ids[i % n_parents]})
        if len(batch) == CHUNK:
            db[CHILDREN].insert_many(batch)
            batch = []
    if batch:
        db[CHILDREN].insert_many(batch)
    db[WORKERS_COLLECTION].insert_many([
        {"_id": "a" * 32, "hostname": "w1@bench", "pid": 1, "heartbeat_at": now,
         "active": ["t-1", "t-2"], "stopped": False},
        {"_id": "b" * 32, "hostname": "w2@bench", "pid": 2,
         "heartbeat_at": now - timedelta(minutes=10), "active": [], "stopped": True},
    ])
    log(f"seeded {n} documents in {time.perf_counter() - began:.0f} s")
    return counts


def timing(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return {"best_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1),
            "runs": len(times)}


def stages_of(db: Any, command: dict[str, Any]) -> list[str]:
    from tests.unit.test_queries import explain

    explainable = {k: v for k, v in command.items() if k not in {"cursor", "batchSize"}}
    if "aggregate" in explainable:
        explainable["cursor"] = {}
    return explain(db, explainable)


def shape(command: dict[str, Any]) -> str:
    """A command in one line: its name, collection and filter (values abbreviated)."""
    name = next(iter(command))
    what = command.get("filter") or command.get("pipeline") or command.get("query") or {}
    text = json.dumps(what, default=lambda v: type(v).__name__)
    return f"{name} {command[name]} {text}"[:150]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--uri", help="a running server (default: start a SecantusDB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir())
                        / "dashboard_bench.json")
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from devtools import services
    from procstatus.dashboard import create_app
    from procstatus.ops.session import Session

    server = None
    uri = args.uri
    if uri is None:
        server = services.start_secantus(Path(tempfile.mkdtemp(prefix="dashboard-bench-")))
        uri = server.url
    commands = Commands()
    monitoring.register(commands)  # every client made from here on: mongoengine's too
    client: pymongo.MongoClient = pymongo.MongoClient(uri)
    try:
        import mongoengine

        from procstatus.ops.sources import Source

        db = client[DB_NAME]
        mongoengine.connect(db=DB_NAME, host=uri)
        seeded = None
        if db[CHILDREN].estimated_document_count() + db[PARENTS].estimated_document_count() \
                != args.docs:
            client.drop_database(DB_NAME)
            seeded = seed(db, args.docs)
        parent = db[PARENTS].find_one({"process_status": "WAITING_FOR_RESULT"}, {"_id": 1})
        assert parent is not None
        upload_cls, entry_cls = bench_classes()
        session = Session(database=db)
        session._sources = [Source("BenchEntry", db[CHILDREN], entry_cls),
                            Source("BenchUpload", db[PARENTS], upload_cls)]
        app = create_app(session)
        results: dict[str, Any] = {"docs": args.docs, "server": "SecantusDB" if server
                                   else uri.split("@")[-1], "seeded": seeded, "parts": {}}
        dashboard = app.state.dashboard
        with TestClient(app) as web:
            def get(url: str) -> Callable[[], Any]:
                def fetch() -> None:
                    response = web.get(url)
                    assert response.status_code == 200, (url, response.text[:300])
                return fetch

            parts: list[tuple[str, Callable[[], Any], int]] = [
                ("counts per class (the chart; one recount)", dashboard._count,
                 max(1, args.repeat - 1)),
                ("processing list (/partials/processing)", get("/partials/processing"),
                 args.repeat),
                ("recent failures by cause (/partials/failures)", get("/partials/failures"),
                 args.repeat),
                ("workers (/partials/workers)", get("/partials/workers"), args.repeat),
                ("main page with the last counts (/)", get("/"), args.repeat),
                ("a parent's page (/documents/...)",
                 get(f"/documents/BenchUpload/{parent['_id']}"), args.repeat),
                ("/api/status (fresh counts, as the CLI)", get("/api/status"), 1),
            ]
            dashboard.counts.get(wait=600)  # the main page then serves the last counts
            for name, fn, repeat in parts:
                commands.done.clear()
                commands.get_mores = 0
                commands.active = True
                measured = timing(fn, repeat)
                commands.active = False
                sent = list(commands.done)
                per_run = len(sent) / repeat
                log(f"{name}: best {measured['best_ms']:.0f} ms, median "
                    f"{measured['median_ms']:.0f} ms, {per_run:g} command(s) a run")
                results["parts"][name] = {**measured, "commands_per_run": per_run,
                                          "get_mores_per_run": commands.get_mores / repeat,
                                          "commands": sent}
        failures = []
        explained: dict[str, list[str]] = {}
        for part in results["parts"].values():
            by_shape: dict[str, list[float]] = {}
            for entry in part["commands"]:
                by_shape.setdefault(shape(entry["command"]), []).append(entry["ms"])
                key = shape(entry["command"])
                if key not in explained:
                    explained[key] = stages_of(db, entry["command"])
            rows = []
            for key, times in by_shape.items():
                stages = explained[key]
                ok = "COLLSCAN" not in stages and bool({"IXSCAN", "COUNT_SCAN", "IDHACK",
                                                        "EXPRESS_IXSCAN", "EXPRESS_IDHACK",
                                                        "DISTINCT_SCAN"} & set(stages))
                if not ok:
                    failures.append(f"{key}: {stages}")
                rows.append({"command": key, "sent": len(times),
                             "median_ms": round(statistics.median(times), 1), "stages": stages})
            part["commands"] = rows
        results["all_index_scans"] = not failures
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"\ndashboard at {args.docs:,} documents on {results['server']} "
              f"(server-side, best of {args.repeat}):\n")
        print("| what the page asks | best | median | commands |")
        print("|---|---:|---:|---:|")
        for name, part in results["parts"].items():
            print(f"| {name} | {part['best_ms']:,.0f} ms | {part['median_ms']:,.0f} ms | "
                  f"{part['commands_per_run']:g} |")
        print("\n| command (each distinct one the parts above send) | median | plan |")
        print("|---|---:|---|")
        shown: set[str] = set()
        for part in results["parts"].values():
            for row in part["commands"]:
                if row["command"] in shown:
                    continue
                shown.add(row["command"])
                print(f"| `{row['command'][:120]}` | {row['median_ms']:,.1f} ms | "
                      f"{' < '.join(row['stages'])} |")
        print(f"\nevery command an index scan: {'yes' if not failures else 'NO'}; "
              f"JSON in {args.out}")
        for failure in failures:
            print(f"  collection scan: {failure}")
        return 0 if not failures else 1
    finally:
        client.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
