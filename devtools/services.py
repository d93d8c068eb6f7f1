"""Local services for the demo and the tests: MongoDB-protocol server, Redis, celery workers.

Everything here honours ``MONGODB_URI`` and ``CELERY_BROKER_URL``: when set, nothing is
started and the given servers are used, so the suite can run against a real mongod.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
SECANTUS_VENV = Path(os.environ.get("PROCSTATUS_SECANTUS_VENV", REPO_ROOT / ".secantus-venv"))
SECANTUS_LAUNCHER = REPO_ROOT / "devtools" / "secantus_launcher.py"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A local service could not be started; the message says what to do."""


def wait_for(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing polled is allowed to fail until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Service:
    """A child process we started, stopped with :meth:`stop`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log is not None:
            self._log.close()

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and everything it started (a worker and its pool)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        self.process.wait(20)
        if self._log is not None:
            self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# --- MongoDB -------------------------------------------------------------------------


def secantus_python() -> Path:
    python = SECANTUS_VENV / "bin" / "python"
    if not python.exists():
        raise ServiceError(
            f"SecantusDB is not installed at {SECANTUS_VENV}. Run ./scripts/bootstrap.sh "
            "(it installs SecantusDB==0.7.0b3 into its own venv), or set MONGODB_URI to a "
            "running mongod."
        )
    return python


REPLICA_SET_NAME = "secantus"
"""The replica-set name SecantusDB advertises when started without ``--standalone``."""


def start_secantus(
    log_dir: Path,
    *,
    port: int | None = None,
    storage_path: str = ":memory:",
    replica_set: bool = False,
    test_commands: bool = False,
) -> Service:
    """Start SecantusDB through the test-support launcher on 127.0.0.1 and wait until it answers.

    ``replica_set``: advertise a single-node replica set (change streams, ``replSetStepDown``;
    the service's URL then names it). ``test_commands``: enable ``configureFailPoint``
    with ``failCommand``, as mongod's ``enableTestCommands`` does.
    """
    port = port or free_port()
    log_path = log_dir / f"secantus-{port}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [
            str(secantus_python()),
            str(SECANTUS_LAUNCHER),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--storage-path", storage_path,
            *([] if replica_set else ["--standalone"]),
            *(["--enable-test-commands"] if test_commands else []),
            "--log-level", "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(log_dir),
    )
    url = f"mongodb://127.0.0.1:{port}"
    if replica_set:
        url += f"/?replicaSet={REPLICA_SET_NAME}"
    service = Service("secantus", process, log_path, url, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"SecantusDB exited early:\n{service.log_text()}")
        return port_open("127.0.0.1", port)

    try:
        wait_for(ready, timeout=60, what=f"SecantusDB on port {port}")
    except BaseException:
        service.stop()
        raise
    return service


# --- Redis ---------------------------------------------------------------------------


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL


def gate_redis_url() -> str:
    """The Redis the tests keep gates and run records in: ``PROCSTATUS_TEST_REDIS_URL``,
    else the broker when it is Redis, else the local default."""
    configured = os.environ.get("PROCSTATUS_TEST_REDIS_URL")
    if configured:
        return configured
    broker = broker_url()
    return broker if broker.startswith("redis") else DEFAULT_BROKER_URL


def ensure_local_rabbitmq(port: int = 5672, timeout: float = 90) -> None:
    """Make sure the local RabbitMQ answers; start it (``rabbitmq-server -detached``) if not."""
    if port_open("127.0.0.1", port):
        return
    server = shutil.which("rabbitmq-server")
    if server is None:
        raise ServiceError(
            f"No RabbitMQ on 127.0.0.1:{port} and no rabbitmq-server to start. Install it "
            "(apt-get install rabbitmq-server) or point CELERY_BROKER_URL at a running one."
        )
    subprocess.run([server, "-detached"], check=True)
    wait_for(lambda: port_open("127.0.0.1", port), timeout=timeout, interval=0.5,
             what=f"rabbitmq on port {port}")


def ensure_local_redis(port: int = 6379) -> None:
    """Make sure the default local Redis answers; start ``redis-server`` if it is installed."""
    if port_open("127.0.0.1", port):
        return
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ServiceError(
            f"No Redis on 127.0.0.1:{port} and no redis-server to start. Install it "
            "(apt-get install redis-server) or set CELERY_BROKER_URL to a reachable broker."
        )
    subprocess.run(
        [redis_server, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
         "--save", "", "--appendonly", "no"],
        check=True,
    )
    wait_for(lambda: port_open("127.0.0.1", port), timeout=20, what=f"redis on port {port}")


def start_redis(log_dir: Path, port: int | None = None) -> Service:
    """Start a private redis-server (for tests that stop and restart the broker)."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ServiceError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    log_path = log_dir / f"redis-{port}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service = Service("redis", process, log_path, f"redis://127.0.0.1:{port}/0", log)
    wait_for(lambda: port_open("127.0.0.1", port), timeout=20, what=f"redis on port {port}")
    return service


# --- celery workers ------------------------------------------------------------------


def start_worker(
    app: str,
    log_dir: Path,
    *,
    hostname: str,
    env: Mapping[str, str],
    concurrency: int = 2,
    queues: str | None = None,
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = 60,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> Service:
    """Start ``celery -A app worker`` (prefork) and wait until it answers a ping.

    ``wrap`` turns the argv into the command actually run (``ip netns exec NS …``, say).
    """
    log_path = log_dir / f"worker-{hostname.split('@')[0]}.log"
    log = open(log_path, "ab")
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", hostname, "--loglevel", "INFO", "--without-gossip",
        "--without-mingle", "--without-heartbeat",
    ]
    if queues:
        argv += ["--queues", queues]
    argv += list(extra_args)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        wrap(argv) if wrap else argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
        cwd=str(REPO_ROOT), start_new_session=True,
    )
    service = Service("worker", process, log_path, hostname, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"celery worker exited early:\n{service.log_text()[-4000:]}")
        return " ready." in service.log_text()

    try:
        wait_for(ready, timeout=ready_timeout, interval=0.1, what=f"worker {hostname}")
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service
