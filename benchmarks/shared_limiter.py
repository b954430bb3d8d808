"""Several processes, one quota: RedisRateLimiter in the deployments it meets.

Each scenario starts its own Redis deployment on loopback, and the emulator's server in a
process of its own (ceiling 60 QPS judged on arrival per sliding second, 20 ms latency).
Worker processes share one Redis key; each fetches its part of the keys through a
SegmentClient (32 callers, ``max_retries=0``). Printed per scenario and run: processes,
keys, keys lost (any error), throttled requests, the most arrivals in any sliding second,
and utilisation (arrivals per second between the first and last arrival, over the
ceiling). A failover also prints how long no master existed (from the kill until Sentinel
named the new one), how much of that the service stood idle ("stranded": from the last
send of a slot handed out before the kill until the promotion, which no limiter can pace
through), how long after the promotion the first request arrived (the limiter's own part
of the pause), and the utilisation less the stranded time. The local limiter, one process
on the same server, is the baseline.

Scenarios:
  loopback   Redis on loopback                            (--processes, default 3)
  proxy      Redis behind a TCP delay proxy, 5 +- 3 ms each way
  hogs       Redis on loopback, 2 CPU-bound processes beside the workers
  jitter     Redis 2 +- 1 ms away, 2 CPU hogs, and 0-10 ms forward jitter to the service
  failover   master + replica + Sentinel; the master killed 4 s in
  cluster    a 3-node Redis Cluster
  local      LocalRateLimiter, one process (the baseline)

    python benchmarks/shared_limiter.py                       # every scenario, 3 runs each
    python benchmarks/shared_limiter.py --scenarios loopback --processes 2 6 --runs 1
    python benchmarks/shared_limiter.py --quick               # CI smoke run (seconds)

Needs the `redis` and `emulator` extras, redis-server and redis-cli.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtc_segment import Credentials, LocalRateLimiter, RedisRateLimiter, SegmentClient
from rtc_segment.testing import Emulator, Latency

CREDENTIALS = Credentials("AKLTbenchmarkaccount", "benchmark-secret")
APP_ID, ROOM_ID, TASK_ID = "bench-app", "bench-room", "bench-task"
CALLERS_PER_PROCESS = 32
LATENCY = 0.02
SERVICE = "rtcs"
SCENARIOS = ("loopback", "proxy", "hogs", "jitter", "failover", "cluster", "local")
#: Forward jitter of the path to the service in the "jitter" scenario (seconds).
PATH_JITTER = 0.01


# --- the emulator's server, in its own process ------------------------------------------


def _serve(conn: Connection, qps: float, jitter: float) -> None:
    async def main() -> None:
        emulator = Emulator(
            CREDENTIALS,
            qps=qps,
            latency=LATENCY,
            forward_delay=Latency.uniform(0.0, jitter) if jitter else None,
            record_limit=None,
        )
        emulator.add_task(APP_ID, ROOM_ID, TASK_ID)
        loop = asyncio.get_running_loop()
        async with emulator.serve(port=0) as url:
            conn.send(url)
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    conn.send(None)
                    return
                if command == "reset":
                    emulator.reset_record()
                    conn.send(None)
                elif command == "stats":
                    # Arrivals on the host's monotonic clock, which the benchmark's own
                    # process shares (the failover's kill and promotion are stamped on it).
                    shift = time.monotonic() - emulator.clock()
                    conn.send(
                        {
                            "arrivals": sorted(
                                record.arrival + shift for record in emulator.requests
                            ),
                            "throttled": emulator.throttled_count,
                            "max_1s": emulator.max_in_window(1.0),
                        }
                    )

    asyncio.run(main())


class Service:
    def __init__(self, qps: float, jitter: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, qps, jitter), daemon=True)
        self.url = ""

    def __enter__(self) -> Service:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the emulator's server did not start")
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.call("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def call(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()


# --- Redis deployments ------------------------------------------------------------------


def _free_port(with_bus: bool = False) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not with_bus:
            return port
        if port < 55536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"redis on {port} exited")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis on {port} did not start")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], check=True, capture_output=True, text=True
    ).stdout


class Deployment:
    """Redis servers (and a delay proxy) of one scenario, all stopped on exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.kind = "redis"
        self.port = 0
        self.doomed = 0  # the failover's master, killed during the run
        self.killed_at = 0.0  # when it was killed (time.monotonic())
        self.promoted_at = 0.0  # when Sentinel first named the new master

    def server(self, port: int, *args: str, config: str | None = None) -> None:
        command = ["redis-server"]
        if config is not None:
            path = self.directory / f"{port}.conf"
            path.write_text(config)
            command.append(str(path))
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "no", *args]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait_for(port, self.processes[port])

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait()

    def fail_over(self) -> None:
        """Kill the master, then stamp when Sentinel names another one.

        Until then no client can reach a master: that time is the deployment's outage,
        which no limiter can pace through; the rest of the pause is the limiter's.
        """
        from redis import Redis

        sentinel = Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        self.killed_at = time.monotonic()
        self.kill(self.doomed)
        try:
            while time.monotonic() < self.killed_at + 60:  # else: no promotion, zeros
                address: Any = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                if address and int(address[1]) != self.doomed:
                    self.promoted_at = time.monotonic()
                    return
                time.sleep(0.005)
        finally:
            sentinel.close()

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def _proxy(listen: int, upstream: int, low: float, high: float) -> None:
    """A TCP proxy delaying every chunk by uniform(low, high) s each way, in order."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        due = 0.0
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                when, data = await queue.get()
                if not data:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, when - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                due = max(due, loop.time() + random.uniform(low, high))
                queue.put_nowait((due, data))
        queue.put_nowait((due, b""))
        with contextlib.suppress(OSError):
            await sender

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def deployment(scenario: str) -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="rtcs-bench-", dir="/tmp") as directory:
        setup = Deployment(Path(directory))
        helpers: list[multiprocessing.process.BaseProcess] = []
        try:
            if scenario == "cluster":
                ports = [_free_port(with_bus=True) for _ in range(3)]
                for port in ports:
                    setup.server(
                        port,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                    )
                _cli(
                    ports[0],
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                )
                while not all("cluster_state:ok" in _cli(p, "cluster", "info") for p in ports):
                    time.sleep(0.1)
                setup.kind, setup.port = "cluster", ports[0]
            elif scenario == "failover":
                master, replica, sentinel = (_free_port() for _ in range(3))
                setup.server(master)
                setup.server(replica, "--replicaof", "127.0.0.1", str(master))
                while "master_link_status:up" not in _cli(replica, "info", "replication"):
                    time.sleep(0.1)
                setup.server(
                    sentinel,
                    "--sentinel",
                    config=(
                        f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n"
                    ),
                )
                while "slaves=1" not in _cli(sentinel, "info", "sentinel"):
                    time.sleep(0.1)
                setup.kind, setup.port, setup.doomed = "sentinel", sentinel, master
            elif scenario != "local":
                port = _free_port()
                setup.server(port)
                setup.port = port
                if scenario in ("proxy", "jitter"):
                    low, high = (0.002, 0.008) if scenario == "proxy" else (0.001, 0.003)
                    listen = _free_port()
                    context = multiprocessing.get_context("spawn")
                    proxy = context.Process(
                        target=_proxy, args=(listen, port, low, high), daemon=True
                    )
                    proxy.start()
                    helpers.append(proxy)
                    for _ in range(200):
                        with contextlib.suppress(OSError):
                            socket.create_connection(("127.0.0.1", listen), 0.2).close()
                            break
                        time.sleep(0.05)
                    setup.port = listen
            yield setup
        finally:
            for helper in helpers:
                helper.terminate()
                helper.join(10)
            setup.close()


# --- the workers ------------------------------------------------------------------------


def worker(kind: str, port: int, url: str, qps: float, keys: int, start: Any, out: Any) -> None:
    out.put(asyncio.run(_work(kind, port, url, qps, keys, start)))


async def _work(
    kind: str, port: int, url: str, qps: float, keys: int, start: Any
) -> dict[str, Any]:
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    redis: Any = None
    if kind == "local":
        limiter: Any = LocalRateLimiter(qps)
    else:
        if kind == "cluster":
            redis = RedisCluster(host="127.0.0.1", port=port)
            # As a long-lived worker does once: fetch the cluster's layout (and redis-py's
            # command table, a ~100 ms parse) before the run, not inside its first second.
            await redis.initialize()
        elif kind == "sentinel":
            sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=0.5)
            redis = sentinel.master_for(SERVICE, socket_timeout=0.5, socket_connect_timeout=0.5)
        else:
            redis = Redis(host="127.0.0.1", port=port)
        limiter = RedisRateLimiter(redis, key=RedisRateLimiter.key_for(CREDENTIALS), qps=qps)
    remaining = keys
    lost = 0
    errors: list[str] = []
    async with SegmentClient(CREDENTIALS, endpoint=url, limiter=limiter, max_retries=0) as client:
        await asyncio.to_thread(start.wait)

        async def caller() -> None:
            nonlocal remaining, lost
            while remaining > 0:
                remaining -= 1
                try:
                    await client.get_segment_task(APP_ID, ROOM_ID, TASK_ID)
                except Exception as exc:
                    lost += 1
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])

        await asyncio.gather(*(caller() for _ in range(CALLERS_PER_PROCESS)))
    if redis is not None:
        await redis.aclose()
    return {"lost": lost, "errors": errors}


def _hog() -> None:
    while True:
        garbage = [list(range(1000)) for _ in range(3000)]
        del garbage


def run(scenario: str, processes: int, keys: int, qps: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    hogs = [
        context.Process(target=_hog, daemon=True)
        for _ in range(2 if scenario in ("hogs", "jitter") else 0)
    ]
    jitter = PATH_JITTER if scenario == "jitter" else 0.0
    with deployment(scenario) as setup, Service(qps, jitter) as service:
        start, out = context.Barrier(processes + 1), context.Queue()
        workers = [
            context.Process(
                target=worker,
                args=(
                    setup.kind if scenario != "local" else "local",
                    setup.port,
                    service.url,
                    qps,
                    keys // processes,
                    start,
                    out,
                ),
            )
            for _ in range(processes)
        ]
        for process in workers + hogs:
            process.start()
        try:
            start.wait(120)
            if scenario == "failover":
                watcher = threading.Timer(4.0, setup.fail_over)
                watcher.start()
            reports = [out.get(timeout=600) for _ in workers]
            if scenario == "failover":
                watcher.join(60)
            for process in workers:
                process.join(30)
        finally:
            for process in hogs:
                process.terminate()
                process.join(10)
        stats = service.call("stats")
    arrivals: list[float] = stats["arrivals"]
    requests = len(arrivals)
    span = arrivals[-1] - arrivals[0] if requests > 1 else 0.0
    for report in reports:
        for error in sorted(set(report["errors"])):
            print(f"  {scenario}: lost key: {error}", file=sys.stderr)
    return {
        "scenario": scenario,
        "processes": processes,
        "keys": keys // processes * processes,
        "lost": sum(report["lost"] for report in reports),
        "throttled": stats["throttled"],
        "max_1s": stats["max_1s"],
        "utilization": (requests - 1) / span / qps if span else 0.0,
        **_outage(arrivals, setup.killed_at, setup.promoted_at, qps),
    }


def _outage(
    arrivals: list[float], killed_at: float, promoted_at: float, qps: float
) -> dict[str, Any]:
    """A failover's figures (zeros for the other scenarios).

    ``no_master``: from the kill until Sentinel named the new master. Slots handed out
    before the kill are still sent after it, so the service idles only from the last of
    those (``stranded``: that arrival until the promotion, time in which no limiter could
    send anything) -- plus however long after the promotion the limiter takes to send
    again (``resumed_after``: the limiter's own part). ``usable``: utilisation over the
    run less the stranded time.
    """
    if not promoted_at or len(arrivals) < 2:
        return {"no_master": 0.0, "stranded": 0.0, "resumed_after": 0.0, "usable": 0.0}
    last_before = max((t for t in arrivals if t < promoted_at), default=arrivals[0])
    first_after = min((t for t in arrivals if t >= promoted_at), default=arrivals[-1])
    stranded = promoted_at - last_before
    return {
        "no_master": promoted_at - killed_at,
        "stranded": stranded,
        "resumed_after": first_after - promoted_at,
        "usable": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0] - stranded) / qps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS)
    parser.add_argument("--processes", type=int, nargs="+", default=[3])
    parser.add_argument("--keys", type=int, default=600, help="keys per run, all processes")
    parser.add_argument("--seconds", type=float, help="keys = seconds * qps (overrides --keys)")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--qps", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="loopback and local, 120 keys, 1 run")
    args = parser.parse_args()
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        sys.exit("redis-server and redis-cli are needed (apt-get install redis-server)")
    keys = int(args.seconds * args.qps) if args.seconds else args.keys
    # A short run (--seconds, as CI's smoke line passes, or --quick): loopback and the
    # local baseline once, unless scenarios or runs are named.
    short = args.quick or args.seconds is not None
    scenarios = args.scenarios or (["loopback", "local"] if short else list(SCENARIOS))
    runs = args.runs or (1 if short else 3)
    if args.quick:
        keys = 120
    print(
        f"{args.qps:g} QPS ceiling judged per sliding second on arrival, {LATENCY * 1000:g} ms "
        f"latency, emulator in its own process, {CALLERS_PER_PROCESS} callers per process, "
        "max_retries=0"
    )
    header = (
        f"{'scenario':<9} {'procs':>5} {'keys':>5} {'lost':>5} {'throttled':>9} "
        f"{'max/1s':>6} {'util':>6} {'no master s':>11} {'stranded s':>10} "
        f"{'resumed after s':>15} {'util less stranded':>18}"
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        for processes in [1] if scenario == "local" else args.processes:
            for _ in range(runs):
                row = run(scenario, processes, keys, args.qps)
                failover = (
                    f" {row['no_master']:>11.2f} {row['stranded']:>10.2f} "
                    f"{row['resumed_after']:>15.3f} {row['usable']:>18.3f}"
                    if row["no_master"]
                    else f" {'-':>11} {'-':>10} {'-':>15} {'-':>18}"
                )
                print(
                    f"{row['scenario']:<9} {row['processes']:>5} {row['keys']:>5} "
                    f"{row['lost']:>5} {row['throttled']:>9} {row['max_1s']:>6} "
                    f"{row['utilization']:>6.3f}{failover}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
