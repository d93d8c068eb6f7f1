"""Fixtures for the datafix tests: a throwaway database, the CLI runner and state hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import json_util
from pymongo.collection import Collection
from pymongo.database import Database
from typer.testing import CliRunner

from procstatus.datafix.migrate_task_status import app


@pytest.fixture
def db(mongo_client: pymongo.MongoClient, fresh_db_name: str) -> Database:
    return mongo_client[fresh_db_name]


@dataclass
class CliRun:
    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None


CliInvoker = Callable[..., CliRun]


# The two run modes and the options that select them. Batched mode uses a tiny batch so
# that the small test collections still span several batches.
MODES: dict[str, tuple[str, ...]] = {
    "whole-collection": (),
    "batched": ("--batch-size", "3"),
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    """Each test using it (or :func:`migrate`) runs once per run mode."""
    return str(request.param)


@pytest.fixture
def migrate(migrate_cli: CliInvoker, mode: str) -> CliInvoker:
    """:func:`migrate_cli` in the test's run mode (``--batch-size`` given explicitly wins)."""

    def run(*args: str, **kwargs: str | None) -> CliRun:
        extra = () if "--batch-size" in args else MODES[mode]
        return migrate_cli(*args, *extra, **kwargs)

    return run


@pytest.fixture
def migrate_cli(mongodb_uri: str, db: Database, tmp_path: Path) -> CliInvoker:
    """Run the command in-process: ``migrate_cli("jobs", "--dry-run")`` -> :class:`CliRun`.

    Positional arguments are collection names unless they start with ``--``; the JSON
    report is always requested and returned parsed. No mode option is added.
    """
    counter = iter(range(1_000_000))

    def run(*args: str, uri: str | None = None, db_name: str | None = None) -> CliRun:
        argv = ["--mongodb-uri", uri or mongodb_uri, "--db", db_name or db.name]
        options = list(args)
        for name in [a for a in args if not a.startswith("--") and _is_collection(args, a)]:
            argv += ["--collection", name]
            options.remove(name)
        report_path = tmp_path / f"report-{next(counter)}.json"
        argv += ["--report", str(report_path), *options]
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return CliRun(result.exit_code, result.stdout, result.stderr, report)

    return run


def _is_collection(args: tuple[str, ...], value: str) -> bool:
    """A bare argument is a collection name unless it is the value of a preceding option."""
    i = args.index(value)
    return i == 0 or args[i - 1] not in {"--batch-size", "--max-report-ids", "--server-timeout"}


def collection_state(coll: Collection) -> list[str]:
    """Every document, in _id order, as canonical extended JSON (field order kept)."""
    return [
        json_util.dumps(doc, json_options=json_util.CANONICAL_JSON_OPTIONS)
        for doc in coll.find({}, sort=[("_id", 1)])
    ]


def collection_hash(coll: Collection) -> str:
    digest = hashlib.sha256()
    for line in collection_state(coll):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
