"""The built wheel, installed in a fresh venv outside the checkout, as a user gets it."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pymongo
import pytest

from devtools.services import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
         str(REPO_ROOT)],
        check=True, timeout=600,
    )
    return next(out.glob("procstatus-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``procstatus[datafix]`` installed from the wheel; its bin dir."""
    home = tmp_path_factory.mktemp("user-venv")
    venv.create(home, with_pip=True)
    bin_dir = home / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", f"{wheel}[datafix]"],
        check=True, timeout=900,
    )
    return bin_dir


def test_the_wheel_ships_the_library_the_datafix_and_the_type_marker(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "procstatus/py.typed" in names
    assert "procstatus/datafix/migrate_task_status.py" in names
    assert "procstatus/datafix/OPERATOR.md" in names
    assert not [n for n in names if n.startswith(("tests/", "devtools/"))]


def test_the_wheel_installs_no_top_level_package_but_procstatus(wheel: Path):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (dist_info,) = {n.split("/", 1)[0] for n in names if ".dist-info/" in n}
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/", 1)[0] for n in names} - {dist_info} == {"procstatus"}
    python_files = [n for n in names if n.endswith(".py")]
    assert python_files and all(n.startswith("procstatus/") for n in python_files)
    assert "procstatus-datafix = procstatus.datafix.migrate_task_status:cli" in entry_points


def test_the_installed_console_script_runs_and_no_datafix_package_is_installed(
    installed: Path, tmp_path: Path,
):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(installed / "procstatus-datafix"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "procstatus-datafix" in result.stdout
    probe = subprocess.run(
        [str(installed / "python"), "-c",
         "import importlib.util; print(importlib.util.find_spec('datafix'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    assert probe.stdout.strip() == "None"


def test_the_installed_datafix_migrates_from_any_directory(
    installed: Path, tmp_path: Path, mongodb_uri: str, mongo_client: pymongo.MongoClient,
    fresh_db_name: str,
):
    elsewhere = tmp_path / "anywhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    help_text = subprocess.run(
        [str(installed / "python"), "-m", "procstatus.datafix.migrate_task_status", "--help"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "Migrate legacy" in help_text and "issue" not in help_text.lower()
    mongo_client[fresh_db_name].jobs.insert_one(
        {"_id": 1, "tasks_status": "SUCCESS", "process_status": "COMPLETED",
         "current_process": "ingest", "current_task": "publish", "errors": []}
    )
    result = subprocess.run(
        [str(installed / "procstatus-datafix"), "--mongodb-uri", mongodb_uri,
         "--db", fresh_db_name, "--collection", "jobs"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    migrated = mongo_client[fresh_db_name].jobs.find_one({"_id": 1})
    assert migrated["process_status"] == "SUCCESS" and "tasks_status" not in migrated
