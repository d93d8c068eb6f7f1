"""The repository keeps its promises: README commands, CI, docker-compose.yml, packaging."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_block_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block after {heading!r}"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_block_after("## Try it")
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    for command in commands:
        script = ROOT / command
        assert script.exists() and script.stat().st_mode & 0o111, f"{command} is not executable"
    ci_lines = [
        line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines == ["./scripts/test.sh"]


def test_docker_compose_parses_and_matches_the_readme():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mongo", "mongo2", "mongo3", "mongo-init", "redis", "worker", "demo"} <= set(services)
    members = ("mongo", "mongo2", "mongo3")
    for member in (*members, "mongo-init"):
        assert services[member]["image"].split(":")[0] == "mongo"  # the official image
    for member in members:
        assert services[member]["command"][:3] == ["mongod", "--replSet", "rs0"]
    init = " ".join(services["mongo-init"]["command"])
    assert all(f"{member}:27017" in init for member in members) and 'rs.initiate' in init
    replica_set_uri = "mongodb://mongo:27017,mongo2:27017,mongo3:27017/?replicaSet=rs0"
    assert services["redis"]["image"].split(":")[0] == "redis"
    for name in ("worker", "demo"):
        env = services[name]["environment"]
        assert env["MONGODB_URI"] == replica_set_uri
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert set(services[name]["depends_on"]) <= set(services)
    assert "celery -A examples.upload_app worker" in services["worker"]["command"]
    assert (ROOT / "examples" / "upload_app.py").exists()
    assert "python -m examples.demo" in services["demo"]["command"]
    for command in readme_block_after("With Docker"):
        words = command.split()
        assert words[:2] == ["docker", "compose"]
        if "run" in words:
            assert words[-1] in services
    assert "docker compose up -d" in README and "docker compose run --rm demo" in README


def test_package_ships_py_typed_and_pins_secantus_exactly():
    assert (ROOT / "procstatus" / "py.typed").exists()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"])
    assert "celery[redis]" in deps and "mongoengine" in deps
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'SECANTUS_VERSION="0.7.0b3"' in bootstrap
    assert "SecantusDB==$SECANTUS_VERSION" in bootstrap


def test_datafix_and_the_document_layer_load_without_celery():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import procstatus.datafix.migrate_task_status\n"
        "from procstatus import Proc, ProcessStatus, process\n"
        "assert 'celery' not in sys.modules, 'celery was imported'\n"
        "from procstatus import install\n"
        "assert 'celery' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
