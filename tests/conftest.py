"""Shared fixtures: one MongoDB-protocol server and one broker URL for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from devtools import services

FIGURES: list[str] = []
"""Lines of measured figures (RELIABILITY, PARTITION, CHAOS) that README quotes."""


@pytest.fixture
def record_figure():  # type: ignore[no-untyped-def]
    """Record a line of figures: it is printed in the run's closing summary."""

    def record(text: str) -> None:
        FIGURES.extend(line for line in text.strip().splitlines() if line.strip())

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures (quoted in README)")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def service_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mongodb_uri(service_log_dir: Path) -> Iterator[str]:
    """``MONGODB_URI`` when set, else a SecantusDB started for this session."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = services.start_secantus(service_log_dir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def replica_set_uri(service_log_dir: Path) -> Iterator[str]:
    """A second MongoDB-protocol server for this session, advertising a single-node replica
    set, with test commands (``configureFailPoint``/``failCommand``) enabled.

    ``PROCSTATUS_TEST_REPLICA_SET_URI`` names one instead (a mongod replica set started
    with ``--setParameter enableTestCommands=1``).
    """
    if os.environ.get("PROCSTATUS_TEST_REPLICA_SET_URI"):
        yield os.environ["PROCSTATUS_TEST_REPLICA_SET_URI"]
        return
    server = services.start_secantus(service_log_dir, replica_set=True, test_commands=True)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_db_name(mongo_client: pymongo.MongoClient) -> Iterator[str]:
    """A database name used by one test only, dropped afterwards."""
    name = f"pstest_{uuid.uuid4().hex[:10]}"
    yield name
    mongo_client.drop_database(name)


@pytest.fixture(scope="session")
def broker_url() -> str:
    """``CELERY_BROKER_URL`` (Redis or RabbitMQ), else the local Redis; started if need be."""
    url = services.broker_url()
    if url.startswith("amqp"):
        services.ensure_local_rabbitmq()
    elif not os.environ.get("CELERY_BROKER_URL"):
        services.ensure_local_redis()
    return url


@pytest.fixture(scope="session")
def gate_redis() -> str:
    """The Redis that holds the tests' gates and run records, whatever the broker is."""
    url = services.gate_redis_url()
    if url == services.DEFAULT_BROKER_URL:
        services.ensure_local_redis()
    return url


# --- the procstatus lifecycle: test process connection, test app, real workers --------

SESSION_TAG = uuid.uuid4().hex[:8]
os.environ.setdefault("PROCSTATUS_TEST_QUEUE", f"procstatus-tests-{SESSION_TAG}")
os.environ.setdefault("PROCSTATUS_TEST_DB", f"procstatus_tests_{SESSION_TAG}")

from tests.support.command_log import CommandRecorder  # noqa: E402

CALLER_COMMANDS = CommandRecorder()
CALLER_COMMANDS.active = False
pymongo.monitoring.register(CALLER_COMMANDS)


@pytest.fixture(scope="session")
def test_db(mongodb_uri: str, mongo_client: pymongo.MongoClient) -> Iterator[str]:
    """Connects this process's mongoengine to the session's test database."""
    import mongoengine

    name = os.environ["PROCSTATUS_TEST_DB"]
    mongoengine.connect(db=name, host=mongodb_uri)
    try:
        yield name
    finally:
        mongoengine.disconnect()
        mongo_client.drop_database(name)


@pytest.fixture(scope="session")
def celery_app_under_test(broker_url: str, test_db: str):  # type: ignore[no-untyped-def]
    os.environ.setdefault("CELERY_BROKER_URL", broker_url)
    from tests.support.worker_app import app

    return app


@pytest.fixture(scope="session")
def worker_env(
    mongodb_uri: str, broker_url: str, gate_redis: str, test_db: str, service_log_dir: Path
) -> dict:
    return {
        "MONGODB_URI": mongodb_uri,
        "CELERY_BROKER_URL": broker_url,
        "PROCSTATUS_TEST_REDIS_URL": gate_redis,
        "PROCSTATUS_TEST_DB": test_db,
        "PROCSTATUS_TEST_QUEUE": os.environ["PROCSTATUS_TEST_QUEUE"],
        "PROCSTATUS_TEST_COMMAND_LOG": str(service_log_dir / "worker-commands.log"),
    }


@pytest.fixture(scope="session")
def worker(
    celery_app_under_test, worker_env: dict, service_log_dir: Path  # type: ignore[no-untyped-def]
) -> Iterator[services.Service]:
    """One real ``celery worker`` (prefork, concurrency 2) for the whole session."""
    celery_app_under_test.control.purge()
    service = services.start_worker(
        "tests.support.worker_app",
        service_log_dir,
        hostname=f"main-{SESSION_TAG}@%h",
        env=worker_env,
        concurrency=2,
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def redis_client(gate_redis: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(gate_redis)


@pytest.fixture
def start_worker(worker_env: dict, service_log_dir: Path):  # type: ignore[no-untyped-def]
    """Factory for extra workers a test may kill; all are stopped after the test."""
    started: list[services.Service] = []

    def start(name: str, queues: str, concurrency: int = 2, **env: str) -> services.Service:
        service = services.start_worker(
            "tests.support.worker_app",
            service_log_dir,
            hostname=f"{name}-{uuid.uuid4().hex[:6]}@%h",
            env={**worker_env, "PROCSTATUS_TEST_COMMAND_LOG": "", **env},
            concurrency=concurrency,
            queues=queues,
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill_group()
