"""Shared fixtures: one MongoDB-protocol server and one broker URL for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from devtools import services


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
    url = services.broker_url()
    if not os.environ.get("CELERY_BROKER_URL"):
        services.ensure_local_redis()
    return url
