"""TEST SUPPORT ONLY: a network namespace tied to the host by one veth pair, whose link a test cuts.

:class:`Partition` creates a namespace (``ip netns add``) with its loopback up and one veth
pair: the host end gets ``.1`` and the namespace end ``.2`` of a /30 taken at random from
10.213.0.0/16 (one not already on this host). Nothing else is routed: a process in the
namespace reaches loopback and the host end of the pair, nothing more. :meth:`Partition.cut`
sets the host end down, :meth:`Partition.heal` sets it up again.

What a cut is: with one end down the pair has no carrier, so every packet either way is
dropped. No connection is reset and no process is told; TCP keeps retransmitting with its
usual backoff, and connections resume on their own if the link comes back before TCP
gives up (minutes). Addresses on a down interface stay local addresses, so processes on
the host keep using the host-end address throughout. There is no loss, delay or
asymmetry in between: a clean cut only (this kernel has no ``netem``).

Also here: a redis-server and a SecantusDB bound to the host end, and a ``celery worker``
started inside the namespace with the same argv, environment and readiness check as
:func:`devtools.services.start_worker`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools import services
from devtools.services import Service, ServiceError, port_open, wait_for

ADDRESS_BLOCK = "10.213"
"""The /16 the pair's /30 is taken from."""


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot create network namespaces; the message says why."""


def ip_command() -> str:
    """Path of ``ip`` (iproute2); raises :class:`NetnsUnavailable` when it cannot be used."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("creating a network namespace needs root")
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None
    )
    if ip is None:
        raise NetnsUnavailable("the ip command (iproute2) is not installed")
    return ip


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


def _free_block(ip: str) -> tuple[str, str]:
    """Host and namespace addresses of a /30 in :data:`ADDRESS_BLOCK` that no interface uses."""
    in_use = _run([ip, "-4", "-o", "addr", "show"]).stdout
    for _ in range(100):
        third, fourth = random.randrange(256), random.randrange(0, 256, 4)
        prefix = f"{ADDRESS_BLOCK}.{third}."
        if not any(f" {prefix}{fourth + k}/" in in_use for k in range(4)):
            return f"{prefix}{fourth + 1}", f"{prefix}{fourth + 2}"
    raise RuntimeError(f"no free /30 in {ADDRESS_BLOCK}.0.0/16")


@dataclass
class Partition:
    """A namespace and the veth pair that is its only link to the host."""

    ip: str
    namespace: str
    host_interface: str
    namespace_interface: str
    host_address: str
    namespace_address: str

    @classmethod
    def create(cls) -> Partition:
        """Create the namespace and link; :class:`NetnsUnavailable` if namespaces cannot be made."""
        ip = ip_command()
        tag = uuid.uuid4().hex[:8]
        host_address, namespace_address = _free_block(ip)
        partition = cls(
            ip=ip, namespace=f"procstatus-part-{tag}", host_interface=f"pst{tag}h",
            namespace_interface=f"pst{tag}n", host_address=host_address,
            namespace_address=namespace_address,
        )
        added = _run([ip, "netns", "add", partition.namespace])
        if added.returncode != 0:
            raise NetnsUnavailable(f"ip netns add failed: {added.stderr.strip()}")
        try:
            ns = partition.namespace
            for argv in (
                ["link", "add", partition.host_interface, "type", "veth",
                 "peer", "name", partition.namespace_interface, "netns", ns],
                ["addr", "add", f"{host_address}/30", "dev", partition.host_interface],
                ["link", "set", partition.host_interface, "up"],
                ["-n", ns, "link", "set", "lo", "up"],
                ["-n", ns, "addr", "add", f"{namespace_address}/30",
                 "dev", partition.namespace_interface],
                ["-n", ns, "link", "set", partition.namespace_interface, "up"],
            ):
                partition._ip(*argv)
            partition.wait_link_up()
        except BaseException:
            partition.delete()
            raise
        return partition

    def _ip(self, *argv: str) -> None:
        done = _run([self.ip, *argv])
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(argv)} failed: {done.stderr.strip()}")

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return [self.ip, "netns", "exec", self.namespace, *argv]

    def operstate(self) -> str:
        return Path(f"/sys/class/net/{self.host_interface}/operstate").read_text().strip()

    def wait_link_up(self, timeout: float = 10) -> None:
        wait_for(lambda: self.operstate() == "up", timeout=timeout, interval=0.02,
                 what=f"{self.host_interface} up")

    def cut(self) -> None:
        """Set the host end down: from now on nothing passes either way."""
        self._ip("link", "set", self.host_interface, "down")

    def heal(self) -> None:
        """Set the host end up again and wait until the link carries traffic."""
        self._ip("link", "set", self.host_interface, "up")
        self.wait_link_up()

    def delete(self) -> None:
        """Remove the pair and the namespace (stop the processes inside first); never raises."""
        _run([self.ip, "link", "del", self.host_interface])
        _run([self.ip, "netns", "del", self.namespace])


# --- servers bound to the host end -----------------------------------------------------


def start_redis(address: str, log_dir: Path) -> Service:
    """A private redis-server on ``address`` (and 127.0.0.1), no persistence."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ServiceError("redis-server is not installed (apt-get install redis-server)")
    port = services.free_port()
    log_path = log_dir / f"redis-{port}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [redis_server, "--bind", address, "127.0.0.1", "--port", str(port),
         "--protected-mode", "no", "--save", "", "--appendonly", "no"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    service = Service("redis", process, log_path, f"redis://{address}:{port}/0", log)
    try:
        wait_for(lambda: port_open(address, port), timeout=20, what=f"redis on {address}:{port}")
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service


def start_secantus(address: str, log_dir: Path) -> Service:
    """A private in-memory SecantusDB on ``address``, through the same launcher as
    :func:`devtools.services.start_secantus` (which binds 127.0.0.1 only)."""
    port = services.free_port()
    log_path = log_dir / f"secantus-{port}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [str(services.secantus_python()), str(services.SECANTUS_LAUNCHER),
         "--host", address, "--port", str(port), "--storage-path", ":memory:",
         "--standalone", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(log_dir),
    )
    service = Service("secantus", process, log_path, f"mongodb://{address}:{port}", log)

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"SecantusDB exited early:\n{service.log_text()}")
        return port_open(address, port)

    try:
        wait_for(ready, timeout=60, what=f"SecantusDB on {address}:{port}")
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service


# --- a worker inside the namespace -------------------------------------------------------


def start_worker(
    partition: Partition,
    app: str,
    log_dir: Path,
    *,
    hostname: str,
    env: Mapping[str, str],
    concurrency: int = 2,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 60,
) -> Service:
    """``celery -A app worker`` (prefork) inside ``partition``'s namespace, once it is ready.

    The argv, environment and readiness check are those of
    :func:`devtools.services.start_worker`, wrapped in ``ip netns exec``, which execs the
    worker itself: the returned process is the worker's main process, leader of its group.
    """
    return services.start_worker(
        app, log_dir, hostname=hostname, env=env, concurrency=concurrency,
        extra_args=tuple(extra_args), ready_timeout=ready_timeout, wrap=partition.wrap,
    )
