"""The web dashboard (``procstatus dashboard``) at the HTTP level.

Every endpoint through Starlette's TestClient against the MongoDB-protocol server: the
pages and the live fragments they poll, the JSON (``/api/status`` is exactly ``procstatus
status --json``), filters, malformed ids and filters (a 4xx with a sentence, never a
traceback), the actions with and without the token, the index behind every query of the
main page; then the command itself, served by uvicorn in a process of its own. The browser
test is ``tests/test_dashboard_browser.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pymongo
import pytest
from bson import ObjectId
from starlette.testclient import TestClient
from typer.testing import CliRunner

from devtools import services
from devtools.services import REPO_ROOT, wait_for
from procstatus import cli
from procstatus.dashboard import create_app, data
from procstatus.liveness import WORKERS_COLLECTION
from procstatus.ops import queries
from procstatus.ops.session import Session
from tests.unit.test_queries import INDEX_STAGES, Recorder, explain

runner = CliRunner()
INSTANCE = "a" * 32
TOKEN = "s3cret-token-for-tests"
DISK_FULL = "OSError: disk full\n  while writing /data/part-7"


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(**delta)


# --- a database of raw Proc collections (no app module) ---------------------------------


@pytest.fixture
def raw(mongodb_uri: str, mongo_client: pymongo.MongoClient, fresh_db_name: str) -> dict:
    """Two Proc collections: ``jobs`` (every status, 500 failures from one cause, three
    from another, one old) and ``reports``; two worker heartbeats, one silent."""
    db = mongo_client[fresh_db_name]
    for name in ("jobs", "reports"):
        db[name].create_index("process_status")
        db[name].create_index([("process_status", 1), ("status_changed_at", 1)])
    failed = ObjectId()
    db.jobs.insert_many(
        [{"process_status": "FAILURE", "current_process": "ingest", "errors": [DISK_FULL],
          "status_changed_at": ago(minutes=5, seconds=i), "create_time": ago(hours=3)}
         for i in range(500)]
        + [{"process_status": "FAILURE", "current_process": "parse", "errors": ["KeyError: 'b'"],
            "status_changed_at": ago(minutes=20 + i), "create_time": ago(hours=3)}
           for i in range(3)]
        + [
            {"_id": failed, "process_status": "FAILURE", "current_process": "ingest",
             "errors": ["ValueError: first line\nsecond line", "KeyError: 'b'"],
             "warnings": ["careful"], "status_changed_at": ago(days=3),
             "create_time": ago(days=4), "process_arguments": {"args": ["x"], "kwargs": {}}},
            {"_id": "run-1", "process_status": "RUNNING", "current_process": "parse",
             "current_process_step": "parsing page 3", "progress_done": 3, "progress_total": 4,
             "worker_hostname": "alpha@host", "worker_instance": INSTANCE, "worker_pid": 11,
             "status_changed_at": ago(minutes=2), "start_time": ago(minutes=2),
             "create_time": ago(hours=1), "errors": [], "last_status_message": "started"},
            {"_id": "pend-1", "process_status": "PENDING", "current_process": "ingest",
             "status_changed_at": ago(minutes=30), "create_time": ago(hours=1), "errors": []},
            {"_id": 42, "process_status": "READY", "create_time": ago(hours=1), "errors": []},
        ]
        + [{"process_status": "SUCCESS", "current_process": "ingest", "errors": [],
            "status_changed_at": ago(minutes=40 + i), "start_time": ago(minutes=41 + i),
            "complete_time": ago(minutes=40 + i), "create_time": ago(hours=2)}
           for i in range(5)]
    )
    db.reports.insert_many([
        {"_id": "rep-1", "process_status": "RUNNING", "current_process": "render",
         "current_process_step": "page 1", "status_changed_at": ago(minutes=1),
         "create_time": ago(hours=1), "errors": [], "worker_hostname": "beta@host"},
    ])
    db[WORKERS_COLLECTION].insert_many([
        {"_id": INSTANCE, "hostname": "alpha@host", "pid": 11, "heartbeat_at": ago(),
         "active": ["t-1"], "stopped": False},
        {"_id": "b" * 32, "hostname": "beta@host", "pid": 12, "heartbeat_at": ago(minutes=5),
         "active": [], "stopped": False},
    ])
    return {"uri": mongodb_uri, "db": fresh_db_name, "database": db, "failed": failed}


@pytest.fixture
def client(raw: dict) -> Iterator[TestClient]:
    app = create_app(Session(mongodb_uri=raw["uri"], db_name=raw["db"]))
    with TestClient(app) as test_client:
        yield test_client


def cli_json(raw: dict, *args: str) -> Any:
    result = runner.invoke(cli.app, ["--mongodb-uri", raw["uri"], "--db", raw["db"], *args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def without_ages(value: Any) -> Any:
    """``value`` less every age in seconds (they depend on the moment of the call)."""
    if isinstance(value, dict):
        return {k: without_ages(v) for k, v in value.items()
                if not (k.endswith("_age_s") or k in {"age_s", "silent_s"})}
    if isinstance(value, list):
        return [without_ages(v) for v in value]
    return value


def no_traceback(response: httpx.Response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text


# --- pages -------------------------------------------------------------------------------


def test_the_main_page_shows_counts_work_under_way_failures_and_workers(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert 'data-class="jobs" data-total="512"' in html and 'data-class="reports"' in html
    assert 'data-status="FAILURE" data-count="504"' in html
    assert 'data-status="RUNNING" data-count="1"' in html
    assert "parsing page 3" in html and "75% 3/4" in html and "alpha@host" in html
    assert html.index("pend-1") < html.index("run-1")  # oldest status change first
    assert "500×" in html and "disk full" in html and "3×" in html and "KeyError: &#39;b&#39;" \
        in html
    assert "gone (silent)" in html and ">alive<" in html
    assert '<script src="/static/dashboard.js"' in html
    assert "cdn" not in html.lower() and "https://" not in html
    for static in ("/static/dashboard.js", "/static/dashboard.css"):
        assert client.get(static).status_code == 200


def test_the_live_fragments_the_page_polls(client):
    counts = client.get("/partials/counts")
    assert counts.status_code == 200 and 'data-class="jobs"' in counts.text
    processing = client.get("/partials/processing")
    assert "run-1" in processing.text and "rep-1" in processing.text
    assert "nothing under way" in client.get("/partials/processing?class=jobs&worker=nobody").text
    failures = client.get("/partials/failures")
    assert "504 failures in the last" not in failures.text  # one is three days old
    assert "503 failures in the last" in failures.text
    workers = client.get("/partials/workers")
    assert "alpha@host" in workers.text and "t-1" in workers.text
    assert client.get("/partials/documents/jobs/run-1").status_code == 200


def test_the_processing_list_filters_by_class_status_process_worker_and_order(client, raw):
    def ids(query: str) -> list[str]:
        html = client.get("/partials/processing?" + query).text
        return [part.split('"')[0] for part in html.split('<tr data-id="')[1:]]

    assert ids("") == ["pend-1", "run-1", "rep-1"]
    assert ids("order=newest") == ["rep-1", "run-1", "pend-1"]
    assert ids("class=reports") == ["rep-1"]
    assert ids("status=RUNNING") == ["run-1", "rep-1"]
    assert ids("status=pending") == ["pend-1"]
    assert ids("process=parse") == ["run-1"]
    assert ids(f"worker={INSTANCE}") == ["run-1"]
    assert ids("worker=beta") == ["rep-1"]
    assert ids("status=READY") == ["42"]
    assert len(ids("status=all&limit=7&class=jobs")) == 7
    limited = client.get("/partials/processing?status=all&limit=7").text
    assert "showing the first 7" in limited
    assert 'href="/?status=all&amp;limit=500#processing">show 500' in limited
    assert ids("status=FAILURE&process=parse&class=jobs&order=newest")[:3] == [
        str(d["_id"]) for d in raw["database"].jobs.find(
            {"process_status": "FAILURE", "current_process": "parse"}).sort(
            "status_changed_at", -1).limit(3)]


def test_failures_are_grouped_by_their_errors_in_full(client):
    found = client.get("/api/failures").json()
    assert (found["total"], found["scanned"], found["window_s"]) == (503, 503, 86400)
    first, second = found["groups"]
    assert first["errors"] == [DISK_FULL] and first["count"] == 500
    assert first["classes"] == {"jobs": 500} and first["processes"] == {"ingest": 500}
    assert len(first["latest"]) == 5 and first["last_age_s"] < first["first_age_s"]
    assert second["errors"] == ["KeyError: 'b'"] and second["count"] == 3
    three_days = client.get("/api/failures?window=4d").json()
    assert three_days["total"] == 504 and len(three_days["groups"]) == 3
    assert three_days["groups"][2]["errors"] == ["ValueError: first line\nsecond line",
                                                 "KeyError: 'b'"]
    sampled = client.get("/api/failures?scan=100").json()
    assert sampled["total"] == 503 and sampled["scanned"] == 100
    assert [g["count"] for g in sampled["groups"]] == [100]  # the latest 100 are all disk full
    assert client.get("/api/failures?process=parse").json()["total"] == 3
    assert client.get("/api/failures?class=reports").json()["groups"] == []
    html = client.get("/partials/failures").text
    assert "OSError: disk full\n  while writing /data/part-7" in html  # in full, as written


# --- JSON: the CLI's own answers ---------------------------------------------------------


def test_api_status_is_exactly_procstatus_status_json(client, raw):
    api = client.get("/api/status").json()
    assert without_ages(api) == without_ages(cli_json(raw, "status", "--json"))
    assert set(api) == {"database", "classes", "skipped"}
    assert set(api["classes"][0]) == set(cli_json(raw, "status", "--json")["classes"][0])
    one = client.get("/api/status?class=reports").json()
    assert without_ages(one) == without_ages(cli_json(raw, "status", "--class", "reports",
                                                      "--json"))
    assert [c["class"] for c in one["classes"]] == ["reports"]


def test_api_list_is_procstatus_list_json_with_the_same_filters(client, raw):
    cases = [
        ("", []),
        ("status=failure,pending&process=ingest&limit=5", ["-s", "failure,pending", "-p",
                                                           "ingest", "-n", "5"]),
        ("status=running&order=oldest", ["-s", "running", "--oldest-first"]),
        ("older_than=20m&class=jobs", ["--older-than", "20m", "--class", "jobs"]),
        (f"worker={INSTANCE}", ["--worker", INSTANCE]),
    ]
    for query, args in cases:
        api = client.get("/api/list?" + query).json()
        assert without_ages(api) == without_ages(cli_json(raw, "list", *args, "--json")), query
    assert [r["id"] for r in client.get("/api/list?status=running").json()] == ["rep-1", "run-1"]


def test_api_workers_is_procstatus_workers_json(client, raw):
    api = client.get("/api/workers").json()
    assert without_ages(api) == without_ages(cli_json(raw, "workers", "--json"))
    assert {w["hostname"]: w["state"] for w in api["workers"]} == {
        "alpha@host": "alive", "beta@host": "silent"}
    assert {w["state"] for w in client.get("/api/workers?threshold=10m").json()["workers"]} \
        == {"alive"}


def test_a_document_has_every_status_field_a_timeline_and_show_json(client, raw):
    api = client.get("/api/documents/jobs/run-1").json()
    shown = cli_json(raw, "show", "run-1", "--json")
    assert set(queries.STATUS_FIELDS) <= set(api)
    assert without_ages({k: api[k] for k in shown}) == without_ages(shown)
    assert [e["event"] for e in api["timeline"]] == ["created", "started"]
    assert api["timeline"][1]["text"] == "parse started on alpha@host"
    assert api["children"] is None and api["parent"] is None
    assert client.get("/api/documents/jobs/42").json()["id"] == 42  # an int id, as stored
    failed = client.get(f"/api/documents/jobs/{raw['failed']}").json()
    assert failed["errors"] == ["ValueError: first line\nsecond line", "KeyError: 'b'"]
    page = client.get(f"/documents/jobs/{raw['failed']}")
    assert page.status_code == 200
    assert "ValueError: first line\nsecond line" in page.text and "careful" in page.text
    assert "Errors (2)" in page.text and "Warnings (1)" in page.text
    assert client.get("/find?id=run-1", follow_redirects=False).headers["location"] == \
        "/documents/jobs/run-1"


def test_the_counts_are_shared_and_recounted_at_most_every_interval():
    calls: list[float] = []

    def compute() -> list[queries.ClassCounts]:
        calls.append(time.monotonic())
        return []

    cache = data.CountsCache(compute, interval=0.3)
    first = cache.get()
    assert first is not None and len(calls) == 1
    threads = [threading.Thread(target=cache.get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1  # fresh: served as it is
    wait_for(lambda: cache.get() is not first and len(calls) == 2, timeout=5,
             what="a recount once the counts are older than the interval")
    assert calls[1] - calls[0] >= 0.3


# --- what the URL says is checked --------------------------------------------------------


@pytest.mark.parametrize(("url", "status", "message"), [
    ("/?status=bogus", 400, "'bogus' is not a status"),
    ("/api/list?status=RUNNING,nope", 400, "'nope' is not a status"),
    ("/partials/processing?class=nothing", 400, "no class or collection 'nothing'; known: "
                                                "jobs, reports"),
    ("/api/list?limit=0", 400, "limit '0' is not a number from 1 to 500"),
    ("/api/list?limit=ten", 400, "is not a number"),
    ("/partials/processing?process=drop();", 400, "is not a method name"),
    ("/partials/processing?worker=a%20b", 400, "neither a worker instance id"),
    ("/api/list?older_than=soon", 400, "is not a duration"),
    ("/partials/processing?order=sideways", 400, "neither oldest nor newest"),
    ("/api/failures?window=0", 400, "must be above 0"),
    ("/api/failures?scan=20000", 400, "from 1 to 10000"),
    ("/api/workers?threshold=-1", 400, "is not a duration"),
    ("/partials/processing?status=RUNNING&status=PENDING", 400, "give it once"),
    ("/api/documents/jobs/" + "x" * 300, 400, "an id is 1 to 256 characters"),
    ("/api/documents/jobs/bad%01id", 400, "no control characters"),
    ("/documents/jobs/bad%7Fid", 400, "no control characters"),
    ("/api/documents/jobs/no-such-id", 404, "no document with id no-such-id in jobs"),
    ("/documents/nothing/run-1", 404, "no class or collection 'nothing'"),
    ("/api/documents/jobs/run-1/children", 404, "has no children()"),
    ("/find?id=nope", 404, "no document with id nope"),
    ("/find", 400, "give the id of a document"),
    ("/no/such/page", 404, "nothing at /no/such/page"),
    ("/api/documents/jobs/run-1/cancel", 405, "GET is not allowed here"),
])
def test_malformed_ids_and_filters_get_a_4xx_saying_why(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status, response.text
    no_traceback(response)
    if url.startswith(("/api/", "/partials/")):
        assert response.json() == {"error": response.json()["error"], "status": status}
        assert message in response.json()["error"]
    else:
        assert response.headers["content-type"].startswith("text/html")
        assert message.replace("'", "&#39;") in response.text


def test_a_database_error_is_a_503_with_a_sentence(raw):
    session = Session(mongodb_uri=raw["uri"], db_name=raw["db"])
    app = create_app(session)
    with TestClient(app) as test_client:
        assert test_client.get("/api/status").status_code == 200
        session.connect().client.close()  # the server "goes away"
        for url in ("/api/status", "/"):
            response = test_client.get(url)
            assert response.status_code == 503, response.text
            assert "MongoDB failed" in response.text or "counting failed" in response.text
            no_traceback(response)


def test_every_response_carries_a_strict_content_policy_and_hosts_are_checked(raw):
    app = create_app(Session(mongodb_uri=raw["uri"], db_name=raw["db"]),
                     allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        page = test_client.get("/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        rebound = test_client.get("/api/status", headers={"host": "attacker.example"})
        assert rebound.status_code == 400


def test_every_query_of_the_main_page_scans_an_index(raw):
    recorder = Recorder()
    watched: pymongo.MongoClient = pymongo.MongoClient(raw["uri"], event_listeners=[recorder])
    try:
        session = Session(database=watched[raw["db"]])
        with TestClient(create_app(session)) as test_client:
            assert test_client.get("/").status_code == 200
            for url in ("/partials/counts", "/partials/processing", "/partials/failures",
                        "/partials/workers", "/partials/processing?process=parse&status=all",
                        "/partials/documents/jobs/run-1"):
                assert test_client.get(url).status_code == 200, url
        commands = [c for c in recorder.commands if c.get("find") != "system.indexes"]
        assert len(commands) >= 12
        kinds = {next(iter(c)) for c in commands}
        assert {"find", "aggregate"} <= kinds
        for command in commands:
            stages = explain(raw["database"], command)
            assert "COLLSCAN" not in stages, f"collection scan for {command}: {stages}"
            assert INDEX_STAGES & set(stages), f"no index scan for {command}: {stages}"
    finally:
        watched.close()


# --- with the app module: actions, parents and children -----------------------------------

integration = pytest.mark.integration
APP = "tests.support.cli_app"


@pytest.fixture
def acting(celery_app_under_test, test_db) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The dashboard over the session's database with -A and actions allowed."""
    app = create_app(Session(app_module=APP), allow_actions=True, token=TOKEN)
    with TestClient(app) as test_client:
        yield test_client


def state(job: Any) -> tuple[str, list[str]]:
    fresh = type(job).objects.get(pk=job.pk)
    return fresh.process_status.value, list(fresh.errors)


@integration
def test_actions_need_the_token_and_change_nothing_without_it(acting, caplog):
    from tests.support.cli_models import CliJob

    job = CliJob.create(name="acted on from the dashboard")
    job.never_taken()  # its queue has no worker: PENDING until cancelled
    url = f"/api/documents/CliJob/{job.pk}"
    with caplog.at_level(logging.WARNING, logger="procstatus.dashboard"):
        for headers in ({}, {"X-Procstatus-Token": "wrong"}, {"X-Procstatus-Token": ""}):
            for action in ("cancel", "retry", "reset"):
                refused = acting.post(f"{url}/{action}", headers=headers)
                assert refused.status_code == 403, refused.text
                assert "needs the dashboard's token" in refused.json()["error"]
        refused_form = acting.post(f"{url}/cancel", data={"token": "nope"})
        assert refused_form.status_code == 403
        assert acting.get(f"{url}/cancel").status_code == 405  # no action by GET
        assert state(job) == ("PENDING", [])

        cancelled = acting.post(f"{url}/cancel", headers={"X-Procstatus-Token": TOKEN})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["ok"] and cancelled.json()["process_status"] == "FAILURE"
        assert cancelled.json()["message"].startswith(f"cancelled CliJob({job.pk}): was PENDING")
        assert state(job) == ("FAILURE", ["cancelled"])
        again = acting.post(f"{url}/cancel", headers={"X-Procstatus-Token": TOKEN})
        assert again.status_code == 409 and "nothing to cancel" in again.json()["message"]

        retried = acting.post(f"{url}/retry", data={"token": TOKEN})  # the form field
        assert retried.status_code == 200, retried.text
        assert retried.json()["message"] == f"called CliJob({job.pk}).never_taken(): PENDING" \
            or retried.json()["message"].startswith(f"called CliJob({job.pk}).never_taken()")
        assert state(job) == ("PENDING", [])
        busy_reset = acting.post(f"{url}/reset", headers={"X-Procstatus-Token": TOKEN})
        assert busy_reset.status_code == 409 and "refused" in busy_reset.json()["message"]
        assert acting.post(f"{url}/retry", headers={"X-Procstatus-Token": TOKEN}
                           ).status_code == 409  # only a FAILURE is retried
        acting.post(f"{url}/cancel", headers={"X-Procstatus-Token": TOKEN})
        reset = acting.post(f"{url}/reset", headers={"X-Procstatus-Token": TOKEN})
        assert reset.status_code == 200 and reset.json()["process_status"] == "READY"
        assert state(job) == ("READY", [])
    logged = [r.getMessage() for r in caplog.records if r.name == "procstatus.dashboard"]
    assert sum("refused: no token" in m for m in logged) == 6
    assert sum("refused: wrong token" in m for m in logged) == 4
    assert any(m.startswith(f"dashboard cancel CliJob({job.pk}) from ") for m in logged)
    assert any(m.startswith(f"dashboard reset CliJob({job.pk}) from ") for m in logged)
    assert len(logged) == 10 + 7  # every action, done or refused
    assert acting.post(f"{url}/explode", headers={"X-Procstatus-Token": TOKEN}
                       ).status_code == 404


@integration
def test_without_allow_actions_every_action_is_refused(celery_app_under_test, test_db):
    from tests.support.cli_models import CliJob

    job = CliJob.create(name="never acted on")
    job.never_taken()
    with TestClient(create_app(Session(app_module=APP))) as read_only:
        for action in ("cancel", "retry", "reset"):
            response = read_only.post(f"/api/documents/CliJob/{job.pk}/{action}",
                                      headers={"X-Procstatus-Token": TOKEN})
            assert response.status_code == 403
            assert "start the dashboard with --allow-actions" in response.json()["error"]
        page = read_only.get(f"/documents/CliJob/{job.pk}")
        assert page.status_code == 200 and "action-form" not in page.text
    assert state(job) == ("PENDING", [])
    job.cancel()


@integration
def test_a_parents_page_summarises_and_lists_its_children(acting):
    from tests.support.models import Batch, Item

    batch = Batch.create(size=6)
    Item.objects.insert([Item(batch=batch.pk, number=i) for i in range(6)])
    items = Item._get_collection()
    ids = [d["_id"] for d in items.find({"batch": batch.pk}).sort("_id", 1)]
    for pk, status in zip(ids, ["SUCCESS", "SUCCESS", "FAILURE", "RUNNING", "PENDING",
                                "READY"], strict=True):
        fields: dict[str, Any] = {"process_status": status, "current_process": "work",
                                  "status_changed_at": ago(minutes=1)}
        if status == "RUNNING":
            fields.update(progress_done=2, progress_total=5, current_process_step="working")
        if status == "FAILURE":
            fields["errors"] = ["ValueError: item 2 is bad"]
        items.update_one({"_id": pk}, {"$set": fields})
    api = acting.get(f"/api/documents/Batch/{batch.pk}").json()
    children = api["children"]
    assert children["class"] == "Item" and (children["done"], children["total"]) == (3, 6)
    assert children["counts"] == {"READY": 1, "PENDING": 1, "RUNNING": 1,
                                  "WAITING_FOR_RESULT": 0, "SUCCESS": 2, "FAILURE": 1}
    assert children["progress"] == 0.5 and len(children["rows"]) == 6
    assert api["processes"] == ["spawn"]
    failed = acting.get(f"/api/documents/Batch/{batch.pk}/children?child_status=FAILURE").json()
    assert [r["id"] for r in failed["rows"]] == [str(ids[2])]
    assert failed["rows"][0]["last_error"] == "ValueError: item 2 is bad"
    under_way = acting.get(f"/api/documents/Batch/{batch.pk}/children?child_status=processing")
    assert {r["id"] for r in under_way.json()["rows"]} == {str(ids[3]), str(ids[4])}
    page = acting.get(f"/documents/Batch/{batch.pk}").text
    assert "3 of 6 done" in page and "1 failed" in page and "2 under way" in page
    assert f'href="/documents/Item/{ids[3]}"' in page and "40% 2/5" in page
    assert 'class="action-form"' in page and TOKEN not in page  # the page never holds it
    child = acting.get(f"/documents/Item/{ids[2]}").text
    assert f'child of Batch <a class="id" href="/documents/Batch/{batch.pk}"' in child
    assert acting.get(f"/api/documents/Batch/{batch.pk}/children?child_status=bogus"
                      ).status_code == 400
    wrong_type = acting.get("/api/documents/Batch/not-an-object-id")
    assert wrong_type.status_code == 400 and "ObjectIds, 24 hexadecimal digits" in \
        wrong_type.json()["error"]


# --- the command --------------------------------------------------------------------------


def test_the_dashboard_command_serves_the_page_then_stops(raw, tmp_path):
    port = services.free_port()
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-m", "procstatus", "--mongodb-uri", raw["uri"], "--db",
               raw["db"], "dashboard", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: services.port_open("127.0.0.1", port), timeout=30,
                 what="the dashboard to listen")
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/ (read-only; Ctrl-C stops it)" in text
        status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10).json()
        assert without_ages(status) == without_ages(cli_json(raw, "status", "--json"))
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        busy = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        process.terminate()
        process.wait(30)


def test_the_dashboard_command_says_what_is_missing_in_one_line(raw):
    base = ["--mongodb-uri", raw["uri"], "--db", raw["db"], "dashboard"]
    no_classes = runner.invoke(cli.app, [*base, "--allow-actions"])
    assert no_classes.exit_code == 2
    assert "needs your Proc classes: pass -A MODULE" in no_classes.stderr
    short = runner.invoke(cli.app, ["-A", APP, *base, "--allow-actions", "--token", "abc"])
    assert short.exit_code == 2 and "at least 12 characters" in short.stderr
    code = ("import sys\n"
            "sys.modules['uvicorn'] = None\n"
            "from procstatus import cli\n"
            "cli.app(sys.argv[1:], prog_name='procstatus')\n")
    missing = subprocess.run([sys.executable, "-c", code, *base], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "pip install 'procstatus[dashboard]'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_the_cli_loads_no_web_library_until_the_dashboard_runs():
    code = ("import sys\n"
            "from procstatus import cli\n"
            "from procstatus.ops import actions, family, queries, session, workers\n"
            "loaded = {'starlette', 'uvicorn', 'jinja2'} & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
