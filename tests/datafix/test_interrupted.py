"""Interrupted runs.

A run killed part-way (SIGKILL) and then rerun ends exactly where one clean run ends; a
run whose server is lost exits 2 with one message, and nothing printed after it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pymongo
from pymongo.database import Database

from devtools import services
from procstatus.datafix.task_status_mapping import legacy_filter
from tests.datafix.conftest import CliInvoker, collection_state
from tests.datafix.cutting_proxy import CuttingProxy

REPO_ROOT = Path(__file__).resolve().parents[2]
# Per mode: documents, and how many must be migrated before the kill. Whole-collection
# mode needs fewer documents: its first row's update alone takes a while.
KILL_SETUP = {"batched": (30_000, 2_000), "whole-collection": (15_000, 1_000)}
# pymongo's kill-cursors thread races the client's close() (see the test below): with
# nothing keeping it quiet, one lost-server run printed its traceback about two times in
# three, so five runs show a regression practically always.
LOST_SERVER_RUNS = 5
STATUSES = ["CREATED", "PENDING", "SUCCESS", "FAILURE", "SUCCESS", "RUNNING", "BOGUS"]


def _documents(n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        spelling = "tasks_status" if i % 3 else "task_status"
        doc: dict[str, Any] = {
            "_id": i,
            spelling: STATUSES[i % len(STATUSES)],
            "current_task": f"step-{i % 5}",
            "current_process": "ingest",
            "errors": ["e"] if i % 4 == 0 else [],
            "n": i,
        }
        if i % 11 == 0:
            doc = {"_id": i, "process_status": "SUCCESS", "n": i}  # already migrated
        docs.append(doc)
    return docs


def test_killed_run_then_rerun_equals_one_clean_run(
    db: Database, mongodb_uri: str, migrate: CliInvoker, mode: str, tmp_path: Path
) -> None:
    n_docs, progress_before_kill = KILL_SETUP[mode]
    docs = _documents(n_docs)
    db.killed.insert_many(docs)
    db.clean.insert_many(docs)
    legacy_at_start = db.killed.count_documents(legacy_filter())
    invalid = sum(1 for d in docs if d.get("tasks_status", d.get("task_status")) == "BOGUS")

    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procstatus.datafix.migrate_task_status",
            "--mongodb-uri",
            mongodb_uri,
            "--db",
            db.name,
            "--collection",
            "killed",
            *(("--batch-size", "50") if mode == "batched" else ()),
            "--fail-in-flight",
        ],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Kill once a real share of the work is done, but (asserted below) not all of it.
        services.wait_for(
            lambda: (
                proc.poll() is not None
                or db.killed.count_documents(legacy_filter())
                <= legacy_at_start - progress_before_kill
            ),
            timeout=90,
            interval=0.05,
            what="partial progress of the migration",
        )
        assert proc.poll() is None, "the migration finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    legacy_after_kill = db.killed.count_documents(legacy_filter())
    assert invalid < legacy_after_kill < legacy_at_start  # really part-way

    # The rerun may start while the server still finishes the killed run's last update:
    # both apply the same per-document change, whichever comes first.
    rerun_options = ("--batch-size", "500") if mode == "batched" else ()
    rerun = migrate("killed", "--fail-in-flight", *rerun_options)
    clean = migrate("clean", "--fail-in-flight", *rerun_options)

    assert collection_state(db.killed) == collection_state(db.clean)
    assert rerun.report is not None and clean.report is not None
    rerun_stats = rerun.report["collections"]["killed"]
    clean_stats = clean.report["collections"]["clean"]
    if mode == "batched":
        # The rerun migrated what the killed run had not: the count at the kill less, at
        # most, the one batch (50) the server was still applying when the client died.
        assert (legacy_after_kill - invalid - 50
                <= rerun_stats["migrated_total"] <= legacy_after_kill - invalid)
    else:
        # The server finishes the update_many it was running when the client died, so the
        # count at the kill is an upper bound; later rows were never sent.
        assert 0 < rerun_stats["migrated_total"] <= legacy_after_kill - invalid
    assert rerun_stats["migrated_total"] < clean_stats["migrated_total"]
    assert rerun_stats["invalid"]["count"] == clean_stats["invalid"]["count"] == invalid
    assert rerun.exit_code == clean.exit_code == 1  # the BOGUS documents


def test_server_lost_mid_run_exits_2_without_traceback(
    service_log_dir: Path, tmp_path: Path
) -> None:
    """A server that dies mid-run: exit 2 and a short message telling the operator to rerun."""
    server = services.start_secantus(service_log_dir)
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(server.url)
        coll = client.lost.jobs
        coll.insert_many([{"_id": i, "tasks_status": "SUCCESS"} for i in range(20_000)])
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "procstatus.datafix.migrate_task_status",
                "--mongodb-uri",
                server.url,
                "--db",
                "lost",
                "--collection",
                "jobs",
                "--batch-size",
                "20",
                "--server-timeout",
                "1",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        services.wait_for(
            lambda: (
                proc.poll() is not None
                or coll.count_documents({"process_status": "SUCCESS"}) >= 500
            ),
            timeout=60,
            interval=0.05,
            what="partial progress",
        )
        assert proc.poll() is None, "the migration finished before the server could be stopped"
        client.close()
        server.stop(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 2
    text = stderr.decode()
    assert "the server failed during the migration" in text and "rerun" in text
    assert "Traceback" not in text


def test_server_lost_with_a_cursor_open_prints_only_the_message(
    db: Database, mongodb_uri: str
) -> None:
    """The server is lost at an update while batched mode's cursor is open.

    The cursor cannot be killed on a lost server, so pymongo queues it for its background
    kill-cursors thread, which retries after the command has given up. Whatever that thread
    meets, the operator sees exit 2 and the message, and nothing after it.
    """
    host, port = pymongo.uri_parser.parse_uri(mongodb_uri)["nodelist"][0]
    for run in range(LOST_SERVER_RUNS):
        name = f"jobs{run}"
        db[name].insert_many([{"_id": i, "tasks_status": "SUCCESS"} for i in range(200)])
        # The third update is never delivered: two batches of 20 are written, the
        # cursor over the 200 documents is open.
        proxy = CuttingProxy((host, port), cut_on="update", nth=3)
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "procstatus.datafix.migrate_task_status",
                    "--mongodb-uri",
                    proxy.url,
                    "--db",
                    db.name,
                    "--collection",
                    name,
                    "--batch-size",
                    "20",
                    # Short, so that the background thread's retry times out while the
                    # command closes its client, the case pymongo logs (with 1 s the
                    # thread mostly sees the close first and stops quietly).
                    "--server-timeout",
                    "0.1",
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                timeout=60,
            )
        finally:
            proxy.close()
        stderr = proc.stderr.decode()
        assert proxy.cut.is_set(), stderr
        assert proc.returncode == 2, stderr
        assert "the server failed during the migration" in stderr, stderr
        assert "Traceback" not in stderr, f"run {run + 1}/{LOST_SERVER_RUNS}:\n{stderr}"
        assert stderr.rstrip().endswith("(the migration is resumable)."), stderr
        assert db[name].count_documents({"process_status": "SUCCESS"}) == 40
