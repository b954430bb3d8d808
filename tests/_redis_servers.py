"""Real Redis deployments for the RedisRateLimiter tests: a 3-node cluster, and a master
with a replica watched by a Sentinel.

Every server runs in a short temporary directory (``tests/_short_paths.py``: socket and
config paths must not grow with the clone's) on free loopback ports, and is killed and
waited for on the way out, whatever happened. Without redis-server the tests skip,
except in CI (``CI=true``), where a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _short_paths import short_directory

MISSING_SERVER = (
    "redis-server and redis-cli are not installed (e.g. `apt-get install redis-server`); "
    "the RedisRateLimiter cluster and Sentinel tests need real servers"
)


def require_redis_tools() -> tuple[str, str]:
    """The redis-server and redis-cli paths; skip without them, but fail in CI."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MISSING_SERVER}, and CI=true: in CI this is a failure", pytrace=False)
        pytest.skip(MISSING_SERVER)
    return server, cli


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """``count`` free loopback ports; with ``with_bus`` each one's ``port + 10000`` (a
    cluster node's bus port) is free too, so every port stays below 55536."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port in ports:
            continue
        if with_bus and (port >= 55536 or not _port_is_free(port + 10000)):
            continue
        ports.append(port)
    return ports


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 15) -> None:
    """Until ``port`` accepts connections (or the server died, or time ran out)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis on port {port} did not start within {seconds} s")


def cli(port: int, *args: str) -> str:
    """``redis-cli -p port args...``; its output (a failure says what redis-cli said)."""
    _, redis_cli = require_redis_tools()
    done = subprocess.run(
        [redis_cli, "-h", "127.0.0.1", "-p", str(port), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"redis-cli {' '.join(args)} exited {done.returncode}: "
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


def create_cluster(ports: list[int], attempts: int = 3) -> None:
    """``redis-cli --cluster create`` over ``ports``, again after a reset if it fails (on a
    starved machine its wait for the nodes to agree can give up)."""
    for attempt in range(attempts):
        try:
            cli(
                ports[0],
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            )
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            for port in ports:
                cli(port, "cluster", "reset", "hard")


class Servers:
    """redis-server processes started by a test, all stopped by :meth:`stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        server, _ = require_redis_tools()
        command = [server]
        if config is not None:
            path = self.directory / f"{port}.conf"
            path.write_text(config)
            command.append(str(path))
        command += [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *args,
        ]
        log = open(self.directory / f"{port}.log", "wb")  # noqa: SIM115 - owned by Popen
        self.processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(port, self.processes[port])

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[list[int]]:
    """A cluster of ``nodes`` masters on loopback (no replicas); yields their ports."""
    require_redis_tools()
    with short_directory("rtcs-cluster-") as directory:
        servers = Servers(directory)
        try:
            ports = free_ports(nodes, with_bus=True)
            for port in ports:
                servers.start(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "5000",
                )
            create_cluster(ports)
            deadline = time.monotonic() + 30
            while not all("cluster_state:ok" in cli(port, "cluster", "info") for port in ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test cluster did not reach cluster_state:ok")
                time.sleep(0.1)
            yield ports
        finally:
            servers.stop_all()


class Failover:
    """A master, its replica and one Sentinel watching them, on loopback."""

    def __init__(self, servers: Servers, master: int, replica: int, sentinel: int) -> None:
        self.servers = servers
        self.master, self.replica, self.sentinel = master, replica, sentinel

    def kill_master(self) -> None:
        self.servers.kill(self.master)


SERVICE = "rtcs"


@contextlib.contextmanager
def redis_with_sentinel() -> Iterator[Failover]:
    """A master and replica, and a Sentinel that promotes the replica a second after the
    master stops answering."""
    require_redis_tools()
    with short_directory("rtcs-sentinel-") as directory:
        servers = Servers(directory)
        try:
            master, replica, sentinel = free_ports(3)
            servers.start(master)
            servers.start(replica, "--replicaof", "127.0.0.1", str(master))
            deadline = time.monotonic() + 30
            while "master_link_status:up" not in cli(replica, "info", "replication"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test replica did not sync with its master")
                time.sleep(0.1)
            servers.start(
                sentinel,
                "--sentinel",
                config=(
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                    f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                ),
            )
            deadline = time.monotonic() + 30
            while "slaves=1" not in cli(sentinel, "info", "sentinel"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test Sentinel did not find the replica")
                time.sleep(0.1)
            yield Failover(servers, master, replica, sentinel)
        finally:
            servers.stop_all()
