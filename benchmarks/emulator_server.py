"""How many requests per second the emulator serves with 0 latency.

The loopback server runs in its own process (``run_emulator``, as ``rtc-segment emulator``
does); this process drives it with N requests in flight over keep-alive connections, each a
valid pre-signed GetSegmentTask, so every request goes through routing, the full signature
check, the (disabled) ceiling, the task lookup and the JSON answer. The in-process transport
is measured the same way for comparison.

    python benchmarks/emulator_server.py [--seconds 3] [--clients 1 8 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

KEY = ("app1", "room1", "task1")
SERVER = (
    "from rtc_segment.testing import Emulator, run_emulator\n"
    "emulator = Emulator(qps=None)\n"
    "emulator.add_task('app1', 'room1', 'task1')\n"
    "run_emulator(emulator, port=0, on_ready=lambda url: print(url, flush=True))\n"
)


def _signed(host: str) -> tuple[str, dict[str, str]]:
    signed = Signer(DEFAULT_CREDENTIALS, region="cn-north-1").sign(
        method="GET",
        host=host,
        query={
            "Action": "GetSegmentTask",
            "Version": "2022-06-01",
            "AppId": KEY[0],
            "RoomId": KEY[1],
            "TaskId": KEY[2],
        },
        now=datetime.now(UTC),
    )
    return f"/?{signed.query_string}", signed.headers


async def _drive(http: httpx.AsyncClient, clients: int, seconds: float) -> tuple[float, int]:
    url, headers = _signed(http.base_url.netloc.decode())
    done = 0
    failed = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            response = await http.get(url, headers=headers)
            if response.status_code == 200:
                done += 1
            else:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.perf_counter() - started), failed


def _load_generators() -> list[tuple[str, Callable[..., httpx.AsyncClient]]]:
    """httpx's own pool, and (when installed) httpx over aiohttp, the lighter client.

    With many connections in flight httpx's pool costs more CPU than the server does, so
    the aiohttp row is the better measure of the server itself.
    """
    generators: list[tuple[str, Callable[..., httpx.AsyncClient]]] = [("httpx", httpx.AsyncClient)]
    try:
        from httpx_aiohttp import HttpxAiohttpClient
    except ImportError:  # the `aiohttp` extra is not installed
        return generators
    generators.append(("httpx-aiohttp", HttpxAiohttpClient))
    return generators


async def main(base_url: str, seconds: float, client_counts: list[int]) -> None:
    rows: list[tuple[str, int, float, int]] = []
    for name, make in _load_generators():
        for clients in client_counts:
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with make(base_url=base_url, limits=limits) as http:
                await _drive(http, clients, 0.3)  # warm up the connections
                rate, failed = await _drive(http, clients, seconds)
            rows.append((f"loopback server <- {name}", clients, rate, failed))

    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    for clients in client_counts:
        async with httpx.AsyncClient(
            transport=emulator.transport(), base_url="https://rtc.volcengineapi.com"
        ) as http:
            rate, failed = await _drive(http, clients, seconds)
        rows.append(("in-process transport <- httpx", clients, rate, failed))

    print(f"{'delivery <- load generator':<40} {'in flight':>9} {'requests/s':>11} {'errors':>7}")
    for name, clients, rate, failed in rows:
        print(f"{name:<40} {clients:>9} {rate:>11.0f} {failed:>7}")
    print(f"(cpus: {os.cpu_count()}, python {sys.version.split()[0]}, {seconds:g} s per row)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        asyncio.run(main(url, args.seconds, args.clients))
    finally:
        server.terminate()
        server.wait(timeout=10)
