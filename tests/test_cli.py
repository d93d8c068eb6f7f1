"""The ``procstatus`` operator CLI.

Every command runs through typer's CliRunner, and as a real subprocess
(``.venv/bin/procstatus`` or ``python -m procstatus``) against the MongoDB-protocol server
and real celery workers: the session's worker, and one for :class:`CliJob` (progress, a
process that succeeds when retried). ``watch`` runs under a pseudo-terminal (tmux) and its
screen is read back. Waits poll with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId
from typer.testing import CliRunner, Result

from devtools import services
from devtools.services import REPO_ROOT, wait_for
from procstatus import ProcessStatus, cli, liveness
from procstatus.cli import acting, common
from procstatus.liveness import WORKERS_COLLECTION, pid_alive
from procstatus.ops import queries, values
from procstatus.ops import workers as ops_workers
from procstatus.text import redact

runner = CliRunner()
INSTANCE = "a" * 32
APP = "tests.support.cli_app"


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(**delta)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- without -A: a database of raw Proc collections ------------------------------------------


@pytest.fixture
def raw(
    mongodb_uri: str, mongo_client: pymongo.MongoClient, fresh_db_name: str
) -> dict[str, Any]:
    """A database holding one Proc collection (``jobs``) and two worker heartbeats."""
    db = mongo_client[fresh_db_name]
    jobs = db["jobs"]
    jobs.create_index("process_status")
    jobs.create_index([("process_status", 1), ("status_changed_at", 1)])
    failed = ObjectId()
    jobs.insert_many([
        {"_id": failed, "process_status": "FAILURE", "current_process": "ingest",
         "errors": ["ValueError: first line\nsecond line", "KeyError: 'b'"],
         "warnings": ["careful"], "status_changed_at": ago(minutes=10),
         "create_time": ago(hours=2), "name": "domain value",
         "process_arguments": {"args": ["x"], "kwargs": {}}},
        {"_id": "run-1", "process_status": "RUNNING", "current_process": "parse",
         "current_process_step": "parsing page 3", "progress_done": 3, "progress_total": 4,
         "worker_hostname": "alpha@host", "worker_instance": INSTANCE,
         "status_changed_at": ago(minutes=2), "create_time": ago(hours=1), "errors": []},
        {"_id": 42, "process_status": "READY", "create_time": ago(hours=1), "errors": []},
        {"_id": "pend-1", "process_status": "PENDING", "current_process": "ingest",
         "status_changed_at": ago(minutes=30), "create_time": ago(hours=1), "errors": []},
    ])
    db[WORKERS_COLLECTION].insert_many([
        {"_id": INSTANCE, "hostname": "alpha@host", "pid": 11, "heartbeat_at": ago(),
         "active": ["t-1"], "stopped": False},
        # Silent, and suspected by a sweep since: only then may --prune mark it stopped.
        {"_id": "b" * 32, "hostname": "beta@host", "pid": 12,
         "heartbeat_at": ago(minutes=5), "suspected_at": ago(minutes=4), "active": [],
         "stopped": False},
    ])
    return {"uri": mongodb_uri, "db": fresh_db_name, "database": db, "failed": failed}


def invoke(raw: dict[str, Any], *args: str, **kwargs: Any) -> Result:
    return runner.invoke(cli.app, ["--mongodb-uri", raw["uri"], "--db", raw["db"], *args],
                         **kwargs)


def test_status_counts_every_status_and_exits_1_on_recent_failures(raw):
    result = invoke(raw, "status", "--json")
    assert result.exit_code == 1, result.output
    (jobs,) = json.loads(result.stdout)["classes"]
    assert jobs["class"] == jobs["collection"] == "jobs"
    assert jobs["counts"] == {"READY": 1, "PENDING": 1, "RUNNING": 1, "WAITING_FOR_RESULT": 0,
                              "SUCCESS": 0, "FAILURE": 1}
    assert jobs["failures_last_hour"] == 1
    assert 1790 <= jobs["oldest_pending_age_s"] <= 1900
    table = invoke(raw, "status")
    assert table.exit_code == 1
    (header,) = [line for line in table.stdout.splitlines() if "READY" in line]
    assert "PENDING" in header and "WAITING" in header and "FAILURE" in header
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("│ jobs")]
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[1:8] == ["jobs", "1", "1", "1", "0", "0", "1"] and cells[10] == "1"
    assert cells[8].startswith("30m0") and cells[9].startswith("2m0")  # oldest PENDING, RUNNING
    raw["database"]["jobs"].update_one({"_id": raw["failed"]},
                                       {"$set": {"status_changed_at": ago(hours=2)}})
    assert invoke(raw, "status").exit_code == 0


def test_list_filters_and_shows_progress_as_a_percentage_and_a_bar(raw):
    result = invoke(raw, "list", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == ["run-1", str(raw["failed"]), "pend-1", 42]
    for key in ("id", "class", "process_status", "current_process", "current_process_step",
                "errors", "warnings", "progress_done", "progress_total"):
        assert key in rows[0]
    running = json.loads(invoke(raw, "list", "-s", "running", "--json").stdout)
    assert [(r["id"], r["progress"]) for r in running] == [("run-1", 0.75)]
    stale = json.loads(invoke(raw, "list", "--older-than", "20m", "--json").stdout)
    assert {r["id"] for r in stale} == {"pend-1", 42}  # 42 was created an hour ago
    assert [r["id"] for r in json.loads(
        invoke(raw, "list", "--worker", "alpha", "--json").stdout)] == ["run-1"]
    assert [r["id"] for r in json.loads(
        invoke(raw, "list", "-s", "failure,pending", "-p", "ingest", "--json").stdout)] == [
        str(raw["failed"]), "pend-1"]
    table = invoke(raw, "list", "--status", "processing", "--limit", "1")
    assert "████████░░  75% 3/4" in table.stdout  # the bar: 3 of 4 over ten cells
    assert "parsing page 3" in table.stdout and "showing the first 1" in table.stdout
    assert invoke(raw, "list", "--status", "bogus").exit_code == 2
    assert invoke(raw, "list", "--older-than", "soon").exit_code == 2
    assert invoke(raw, "list", "--class", "nothing").exit_code == 2


def test_show_prints_every_status_field_with_errors_and_warnings_in_full(raw):
    failed = str(raw["failed"])
    result = invoke(raw, "show", failed)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"jobs {failed}" in text
    for name in queries.STATUS_FIELDS:
        if name not in ("progress_done", "progress_total", "errors", "warnings"):
            assert name in text
    assert "errors (2):" in text and "ValueError: first line\n  second line" in text
    assert "KeyError: 'b'" in text and "warnings (1):" in text and "careful" in text
    assert '{"args": ["x"], "kwargs": {}}' in text
    shown = json.loads(invoke(raw, "show", "run-1", "--json").stdout)
    assert set(queries.STATUS_FIELDS) <= set(shown) and shown["progress"] == 0.75
    assert shown["children"] is None  # no class without -A
    assert "75% 3/4" in invoke(raw, "show", "run-1").stdout
    assert json.loads(invoke(raw, "show", "42", "--json").stdout)["process_status"] == "READY"
    missing = invoke(raw, "show", "nope")
    assert missing.exit_code == 1 and "no document with id nope" in missing.stderr


def test_workers_tell_alive_from_silent_and_prune_marks_the_silent_stopped(raw):
    result = invoke(raw, "workers", "--json")
    assert result.exit_code == 1  # beta stopped beating without shutting down
    states = {w["hostname"]: (w["state"], w["active"]) for w in
              json.loads(result.stdout)["workers"]}
    assert states == {"alpha@host": ("alive", ["t-1"]), "beta@host": ("silent", [])}
    table = invoke(raw, "workers")
    assert "alive" in table.stdout and "silent" in table.stdout and "t-1" in table.stdout
    pruned = invoke(raw, "workers", "--prune", "--json")
    assert json.loads(pruned.stdout)["marked_stopped"] == 1
    after = invoke(raw, "workers", "--json")
    assert after.exit_code == 0
    assert {w["state"] for w in json.loads(after.stdout)["workers"]} == {"alive", "stopped"}


def test_watch_renders_work_under_way_and_recent_completions_then_stops(raw):
    result = invoke(raw, "watch", "--iterations", "2", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "under way (2)" in text and "parsing page 3" in text and "75% 3/4" in text
    assert "recently completed" in text and str(raw["failed"]) in text


def test_reset_without_the_app_module_is_the_state_machines_override(raw, caplog):
    jobs = raw["database"]["jobs"]
    failed = str(raw["failed"])
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        result = invoke(raw, "reset", failed, "--yes")
    assert result.exit_code == 0, result.output
    assert "FAILURE → READY" in result.stdout
    document = jobs.find_one({"_id": raw["failed"]})
    assert document["process_status"] == "READY" and document["errors"] == []
    assert document["name"] == "domain value"  # domain fields untouched
    assert any("operator reset jobs(" in r.getMessage() for r in caplog.records)

    refused = invoke(raw, "reset", "run-1")
    assert refused.exit_code == 1 and "refused" in refused.stderr
    assert jobs.find_one({"_id": "run-1"})["process_status"] == "RUNNING"
    assert invoke(raw, "reset", "42").exit_code == 1  # already READY
    assert invoke(raw, "reset", "run-1", "--to", "SUCCESS").exit_code == 2
    assert invoke(raw, "reset", "run-1", "--force").exit_code == 0
    assert jobs.find_one({"_id": "run-1"})["process_status"] == "READY"


def test_reset_asks_on_a_terminal(raw, monkeypatch):
    monkeypatch.setattr(acting, "interactive", lambda: True)
    jobs = raw["database"]["jobs"]
    declined = invoke(raw, "reset", "pend-1", "--force", input="n\n")
    assert declined.exit_code == 1 and "Reset 1 document(s) to READY?" in declined.stdout
    assert jobs.find_one({"_id": "pend-1"})["process_status"] == "PENDING"
    accepted = invoke(raw, "reset", "pend-1", "--force", input="y\n")
    assert accepted.exit_code == 0
    assert jobs.find_one({"_id": "pend-1"})["process_status"] == "READY"


@pytest.mark.parametrize("command", [["cancel", "x"], ["retry", "--class", "jobs"], ["sweep"]])
def test_commands_that_need_the_classes_say_so_in_one_line(raw, command):
    result = invoke(raw, *command)
    assert result.exit_code == 2
    assert lines(result.stderr) == [lines(result.stderr)[0]]
    assert "needs your Proc classes: pass -A MODULE" in result.stderr


def test_connection_and_usage_errors_are_one_line_saying_how_to_fix_them(raw):
    port = services.free_port()
    down = runner.invoke(cli.app, [
        "--mongodb-uri", f"mongodb://ops:s3cret@127.0.0.1:{port}", "--db", "x",
        "--server-timeout", "0.3", "status"])
    assert down.exit_code == 2
    (line,) = lines(down.stderr)
    assert f"cannot reach MongoDB at mongodb://ops:***@127.0.0.1:{port}" in line
    assert "s3cret" not in down.output and "mongod --dbpath" in line
    cases = {
        ("--mongodb-uri", "localhost:1", "--db", "x", "status"): "is not a MongoDB URI",
        ("--mongodb-uri", raw["uri"], "status"): "no database named: pass --db NAME",
        ("--mongodb-uri", raw["uri"], "--db", f"{raw['db']}_empty", "list"):
            "holds no collection of Proc documents",
        ("-A", "tests.support.no_such_module", "status"): "no module named",
    }
    for args, message in cases.items():
        result = runner.invoke(cli.app, list(args))
        assert result.exit_code == 2, (args, result.output)
        assert len(lines(result.stderr)) == 1 and message in result.stderr, result.stderr


def test_the_read_only_commands_without_the_app_module_load_no_celery(raw):
    code = (
        "import sys\n"
        "from procstatus import cli\n"
        "base = ['--mongodb-uri', sys.argv[1], '--db', sys.argv[2]]\n"
        "for args in (['status'], ['list'], ['show', 'run-1'], ['workers'],\n"
        "             ['watch', '--iterations', '1']):\n"
        "    try:\n"
        "        cli.app(base + args, prog_name='procstatus')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, 1), (args, exit.code)\n"
        "assert 'celery' not in sys.modules, 'celery was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, raw["uri"], raw["db"]], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "parsing page 3" in result.stdout


def test_formatting_and_parsing_helpers():
    assert [common.parse_duration(t) for t in ("90", "30s", "10m", "2h", "1d", "1.5m")] == [
        90, 30, 600, 7200, 86400, 90]
    assert common.parse_statuses(["processing"]) == values.PROCESSING_STATUSES
    assert common.parse_statuses(["waiting", "READY"]) == ("READY", "WAITING_FOR_RESULT")
    assert common.fmt_progress(3, 4) == "████████░░  75% 3/4"
    assert common.fmt_progress(5, None) == "5 done" and common.fmt_progress(None, None) == ""
    assert [values.fmt_age(s) for s in (None, 5, 65, 3700, 90000)] == [
        "-", "5s", "1m05s", "1h01m", "1d01h"]
    assert redact("mongodb://u:p@h:1/db") == "mongodb://u:***@h:1/db"


# --- with -A and real workers -----------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def cli_env(worker_env: dict) -> dict[str, str]:
    return {**os.environ, **worker_env, "PROCSTATUS_TEST_COMMAND_LOG": ""}


@pytest.fixture(scope="module")
def cli_worker(worker, cli_env: dict, service_log_dir: Path) -> Iterator[services.Service]:
    """A worker for CliJob's queue, beside the session's worker."""
    from tests.support.cli_models import CLI_QUEUE

    service = services.start_worker(
        APP, service_log_dir, hostname=f"cli-{uuid.uuid4().hex[:6]}@%h", env=cli_env,
        concurrency=2, queues=CLI_QUEUE,
    )
    try:
        yield service
    finally:
        service.stop()


def argv(*args: str, console_script: bool = False) -> list[str]:
    """``procstatus -A tests.support.cli_app ARGS`` (or ``python -m procstatus ...``)."""
    if console_script:
        command = [str(Path(sys.executable).parent / "procstatus")]
    else:
        command = [sys.executable, "-m", "procstatus"]
    return [*command, "-A", APP, *args]


def run(cli_env: dict, *args: str, console_script: bool = False) -> subprocess.CompletedProcess:
    """One command in a process of its own, as an operator runs it."""
    return subprocess.run(argv(*args, console_script=console_script), env=cli_env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def run_together(cli_env: dict, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Read-only commands, each in its own process, run at the same time (to save time)."""
    started = [subprocess.Popen(command, env=cli_env, cwd=REPO_ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for command in commands]
    done = []
    for command, process in zip(commands, started, strict=True):
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return done


def invoke_app(*args: str) -> Result:
    return runner.invoke(cli.app, ["-A", APP, *args])


def fresh(job: Any) -> Any:
    return type(job).objects.get(pk=job.pk)


def running_with_progress(job: Any, done: int) -> Any:
    return wait_for(
        lambda: (d := fresh(job)).process_status is ProcessStatus.RUNNING
        and d.progress_done == done and d,
        timeout=30, what=f"{job.name} RUNNING at {done}",
    )


def open_gate(redis_client: Any, job: Any) -> None:
    from tests.support.models import gate_key

    redis_client.rpush(gate_key(job.pk), 1)


@integration
def test_status_list_show_and_workers_on_a_real_run(cli_worker, cli_env, redis_client):
    from tests.support.cli_models import CliJob

    job = CliJob.create(name="inspected")
    job.crunch(10, 4)
    running = running_with_progress(job, 4)
    pk = str(job.pk)

    rows = json.loads(invoke_app("list", "--class", "CliJob", "-s", "running", "--json").stdout)
    (row,) = [r for r in rows if r["id"] == pk]
    assert (row["progress_done"], row["progress_total"], row["current_process_step"]) == (
        4, 10, "crunching 10 chunks")
    assert row["worker_hostname"].startswith("cli-")
    (counted,) = json.loads(invoke_app("status", "--class", "CliJob", "--json").stdout)["classes"]
    assert counted["counts"]["RUNNING"] >= 1 and counted["oldest_running_age_s"] is not None
    shown = invoke_app("show", pk)
    assert shown.exit_code == 0 and "40% 4/10" in shown.stdout
    beats = json.loads(invoke_app("workers", "--json").stdout)["workers"]
    assert any(w["state"] == "alive" and w["hostname"] == running.worker_hostname
               for w in beats)

    status, listed, detail, workers = run_together(
        cli_env,
        argv("status", "--class", "CliJob", console_script=True),
        argv("list", "--class", "CliJob", "--status", "running"),
        argv("show", pk, "--json"),
        argv("workers"),
    )
    assert status.returncode in (0, 1), status.stderr
    assert "CliJob" in status.stdout and "RUNNING" in status.stdout
    assert listed.returncode == 0 and pk in listed.stdout and "40% 4/10" in listed.stdout
    assert detail.returncode == 0 and json.loads(detail.stdout)["progress"] == 0.4
    assert workers.returncode in (0, 1), workers.stderr
    (line,) = [x for x in workers.stdout.splitlines() if running.worker_instance in x]
    assert running.worker_hostname in line and "alive" in line

    open_gate(redis_client, job)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert fresh(job).progress_done == 10


@integration
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a pseudo-terminal")
def test_watch_in_a_terminal_refreshes_and_leaves_on_ctrl_c(
    cli_worker, cli_env, redis_client, tmp_path
):
    from tests.support.cli_models import CliJob

    job = CliJob.create(name="watched")
    job.crunch(8, 6)
    running_with_progress(job, 6)
    socket = f"procstatus-cli-{uuid.uuid4().hex[:8]}"
    rc_file = tmp_path / "rc"
    command = (f"{sys.executable} -m procstatus -A {APP} watch --class CliJob; "
               f"echo rc=$? > {rc_file}; sleep 60")

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], env=cli_env, capture_output=True,
                              text=True, check=True, timeout=20).stdout

    def job_lines() -> list[str]:
        return [line for line in tmux("capture-pane", "-p", "-t", "watch").splitlines()
                if str(job.pk) in line]

    tmux("new-session", "-d", "-s", "watch", "-x", "200", "-y", "50", "-c", str(REPO_ROOT),
         command)
    try:
        under_way = wait_for(
            lambda: [line for line in job_lines() if "75% 6/8" in line],
            timeout=30, what="the running job with its progress on the screen",
        )
        assert "crunching 8 chunks" in under_way[0] and "RUNNING" in under_way[0]
        screen = tmux("capture-pane", "-p", "-t", "watch")
        assert "procstatus watch" in screen and "under way" in screen
        open_gate(redis_client, job)
        done = wait_for(lambda: [line for line in job_lines() if "SUCCESS" in line],
                        timeout=30, what="the completed job on a refreshed screen")
        assert "crunch" in done[0] and not [line for line in job_lines() if "RUNNING" in line]
        tmux("send-keys", "-t", "watch", "C-c")
        wait_for(lambda: rc_file.exists() and rc_file.read_text().strip() == "rc=0",
                 timeout=20, what="watch to leave with exit code 0 on Ctrl-C")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=20)


@integration
def test_cancel_running_and_pending_runs(worker, cli_worker, cli_env, redis_client):
    from tests.support.cli_models import CliJob
    from tests.support.models import Job, gate_key

    gated = Job.create(name="cancelled through the cli")
    gated.gated(["first"])
    wait_for(lambda: fresh(gated).current_process_step == "first", timeout=30,
             what="the gated job's step")
    result = invoke_app("cancel", str(gated.pk))
    assert result.exit_code == 0, result.output
    assert "cancelled Job(" in result.stdout and "was RUNNING (gated)" in result.stdout
    redis_client.rpush(gate_key(gated.pk), 1)  # let the pool process go on and stop
    assert (fresh(gated).process_status, fresh(gated).errors) == (ProcessStatus.FAILURE,
                                                                  ["cancelled"])
    again = invoke_app("cancel", str(gated.pk))
    assert again.exit_code == 1 and "nothing to cancel" in again.stderr

    crunching = CliJob.create(name="cancelled while crunching")
    crunching.crunch(5, 1)
    running_with_progress(crunching, 1)
    waiting = CliJob.create(name="cancelled while pending")
    waiting.never_taken()
    both = run(cli_env, "cancel", str(crunching.pk), str(waiting.pk))
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("cancelled CliJob(") == 2
    open_gate(redis_client, crunching)
    for job in (crunching, waiting):
        assert (fresh(job).process_status, fresh(job).errors) == (ProcessStatus.FAILURE,
                                                                  ["cancelled"])
    assert run(cli_env, "cancel", "no-such-id").returncode == 1

    killed = CliJob.create(name="cancelled with --terminate")
    killed.crunch(5, 2)
    pid = running_with_progress(killed, 2).worker_pid
    terminated = invoke_app("cancel", "--terminate", str(killed.pk))
    assert terminated.exit_code == 0 and "told to kill" in terminated.stdout
    wait_for(lambda: not pid_alive(pid), timeout=30, what=f"pool process {pid} killed")
    assert fresh(killed).errors == ["cancelled"]


@integration
def test_retry_calls_the_failed_process_again_with_its_arguments_then_reset(
    cli_worker, cli_env, redis_client, caplog
):
    from tests.support.cli_models import CliJob
    from tests.support.models import runs_key

    first = CliJob.create(name="retried in process")
    first.flaky("the first try fails")
    assert first.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    dry = invoke_app("retry", "--class", "CliJob", "--process", "flaky", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f'would call CliJob({first.pk}).flaky("the first try fails")' in dry.stdout
    assert fresh(first).process_status is ProcessStatus.FAILURE
    retried = invoke_app("retry", "--class", "CliJob", "--process", "flaky")
    assert retried.exit_code == 0, retried.output
    assert first.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert redis_client.lrange(runs_key(first.pk), 0, -1) == [b"flaky:the first try fails"] * 2

    second = CliJob.create(name="retried by the operator")
    second.flaky("again")
    assert second.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    result = run(cli_env, "retry", "--class", "CliJob", "--process", "flaky", "--limit", "5")
    assert result.returncode == 0, result.stderr
    assert "1 FAILURE document(s) of CliJob (flaky); retrying 1" in result.stdout
    assert second.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    nothing = invoke_app("retry", "--class", "CliJob", "--process", "flaky")
    assert nothing.exit_code == 0 and "no FAILURE document(s)" in nothing.stdout

    reset = run(cli_env, "reset", str(second.pk), "--yes")
    assert reset.returncode == 0, reset.stderr
    assert "SUCCESS → READY" in reset.stdout and "operator reset CliJob(" in reset.stderr
    assert fresh(second).process_status is ProcessStatus.READY


@integration
def test_sweep_ends_a_run_whose_worker_was_killed_and_a_message_never_taken(
    cli_worker, cli_env, service_log_dir, mongo_client, test_db
):
    from tests.support.cli_models import DOOMED_QUEUE, CliJob

    never = CliJob.create(name="never taken")
    never.never_taken()
    doomed_worker = services.start_worker(
        APP, service_log_dir, hostname=f"cli-doomed-{uuid.uuid4().hex[:6]}@%h", env=cli_env,
        concurrency=1, queues=DOOMED_QUEUE,
    )
    lost = CliJob.create(name="lost with its worker")
    try:
        lost.hang_on_doomed()
        wait_for(lambda: fresh(lost).process_status is ProcessStatus.RUNNING, timeout=30,
                 what="the run on the doomed worker")
    finally:
        doomed_worker.kill_group()
    instance = fresh(lost).worker_instance
    heartbeats = mongo_client[test_db][WORKERS_COLLECTION]
    wait_for(
        lambda: {w.instance: w.state for w in ops_workers.workers(heartbeats, threshold=3.0)}
        .get(instance) == "silent",
        timeout=30, interval=0.2, what="the killed worker's heartbeat to fall silent",
    )
    silent = invoke_app("workers", "--json")
    assert silent.exit_code == 1
    assert {w["instance"]: w["state"] for w in json.loads(silent.stdout)["workers"]}[
        instance] == "silent"

    labels = {f"CliJob({lost.pk})", f"CliJob({never.pk})"}
    # Silence condemns a worker only once a sweep has suspected it and a grace has passed
    # (liveness.grace()); a dry run suspects nobody, so suspect it as a sweep would.
    liveness.suspect_silent(heartbeats, threshold=3.0)

    def dry_run() -> Any:
        result = invoke_app("sweep", "--class", "CliJob", "--pending-timeout", "0",
                            "--dry-run", "--json")
        return result if f"CliJob({lost.pk})" in json.loads(result.stdout)["failed"] else None

    dry = wait_for(dry_run, timeout=30, interval=0.2,
                   what="a dry run to find the lost run once the grace has passed")
    assert dry.exit_code == 1, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] and f"CliJob({lost.pk})" in report["failed"]
    assert f"CliJob({never.pk})" in report["never_started"]
    dry_text = invoke_app("sweep", "--class", "CliJob", "--pending-timeout", "0", "--dry-run")
    assert dry_text.exit_code == 1 and "dry run: nothing written" in dry_text.stdout
    assert all(label in dry_text.stdout for label in labels)
    assert fresh(lost).process_status is ProcessStatus.RUNNING
    assert fresh(never).process_status is ProcessStatus.PENDING

    swept = run(cli_env, "sweep", "--class", "CliJob", "--pending-timeout", "0", "--json")
    assert swept.returncode == 1, swept.stderr
    report = json.loads(swept.stdout)
    assert f"CliJob({lost.pk})" in report["failed"] and report["workers_gone"] >= 1
    assert f"CliJob({never.pk})" in report["never_started"]
    assert fresh(lost).errors[0].startswith("worker lost: no heartbeat from cli-doomed-")
    assert fresh(never).errors == ["never started: no worker took the task in time"]
    assert invoke_app("sweep", "--class", "CliJob", "--pending-timeout", "0").exit_code == 0

    pruned = invoke_app("workers", "--prune", "--json")
    assert pruned.exit_code in (0, 1), pruned.output
    states = {w["instance"]: w["state"] for w in json.loads(pruned.stdout)["workers"]}
    assert states[instance] == "stopped"


@integration
def test_show_counts_a_parents_children_by_status(worker, cli_env):
    from tests.support.models import Batch

    batch = Batch.create(size=5)
    batch.spawn(5)
    assert batch.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    shown = invoke_app("show", str(batch.pk), "--json")
    assert shown.exit_code == 0, shown.output
    children = json.loads(shown.stdout)["children"]
    assert children["class"] == "Item"
    assert children["counts"]["SUCCESS"] + children["counts"]["FAILURE"] == 5
    assert children["counts"]["FAILURE"] == 1  # item 3 is bad
    text = run(cli_env, "show", str(batch.pk))
    assert text.returncode == 0 and "children (Item, 5):" in text.stdout


@integration
def test_workers_list_the_tasks_a_worker_runs(cli_worker, redis_client):
    from tests.support.cli_models import CliJob

    job = CliJob.create(name="listed")
    job.crunch(2, 1)
    running = running_with_progress(job, 1)

    def listed() -> bool:  # the worker's next heartbeat lists the task
        beats = json.loads(invoke_app("workers", "--json").stdout)["workers"]
        return any(running.celery_task_id in w["active"] for w in beats)

    try:
        wait_for(listed, timeout=3, interval=0.2, what="the task in a heartbeat")
    finally:
        open_gate(redis_client, job)
        job.block_until_complete(timeout=30)
