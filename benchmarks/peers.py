"""rtc_segment against its peers, side by side in one run; prints one table.

Run: ``python benchmarks/peers.py`` (about two minutes), or ``--quick`` for a CI smoke run
with tiny sizes. Needs the ``bench`` extra (the official ``volcengine`` SDK, the aiohttp
transport, uvicorn); botocore is measured when installed.

Every network figure is taken against the emulator's loopback server (uvicorn on
127.0.0.1) running in its own process, in the same run for every contender, so ratios are
comparable even on a noisy machine. Contenders are interleaved within each repeat and the
median over repeats is reported.

1. signer: µs per signed GetSegmentTask request -- ours vs the official ``SignerV4.sign``
   (and botocore's SigV4, for scale).
2. sequential call: µs per call, one at a time, server ceiling off -- ours on both HTTP
   backends vs bare ``httpx.AsyncClient.get`` of a pre-signed request on the same
   transport vs the official SDK (``Service.get`` + ``json.loads``; the SDK has no RTC
   GetSegmentTask wrapper, so a ``volcengine.base.Service`` is pointed at the server).
3. throughput: requests/s with 32 in flight, ceiling off -- ours (``gather_segment_tasks``,
   concurrency 32) vs the official SDK in 32 threads (its connection pool raised to 32).
4. fan-out: 600 keys at the documented 60 QPS ceiling with 50 ms server latency -- ours vs
   the official SDK in 16 threads paced by an exact 1/60 s schedule. Ideal wall time is
   keys / 60 s.
5. parse: µs per documented example response (``json.loads`` + structuring) vs
   ``json.loads`` alone.
6. event-loop lag while 1,000 keys are fetched at 2,000 QPS from the in-process emulator:
   a probe task sleeps 1 ms in a loop and records how late it wakes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import parsing
import signing
from _common import (
    EmulatorProcess,
    LagProbe,
    bench_signer,
    describe_machine,
    median,
    percentile,
    print_table,
    signed_get,
    task_keys,
)

from rtc_segment import SegmentClient, TaskKey
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

BACKENDS = ("httpcore", "aiohttp")
FANOUT_QPS = 60.0
FANOUT_LATENCY = 0.05


class Sizes:
    """How much work each section does."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.sign_calls, self.sign_repeats = (200, 3) if quick else (20_000, 7)
        self.parse_calls, self.parse_repeats = (500, 3) if quick else (20_000, 9)
        self.sequential_calls, self.sequential_repeats = (30, 3) if quick else (400, 9)
        self.throughput_requests, self.throughput_repeats = (200, 1) if quick else (2_000, 3)
        self.fanout_keys = 60 if quick else 600
        self.lag_keys, self.lag_repeats = (200, 1) if quick else (1_000, 3)


class Table:
    """Collects rows and prints them as one aligned table."""

    columns = ("measurement", "result", "compared with", "ratio", "goal", "met")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def section(self, title: str) -> None:
        self.rows.append((title,))

    def row(
        self,
        name: str,
        result: str,
        compared: str = "",
        ratio: str = "",
        goal: str = "",
        met: bool | None = None,
    ) -> None:
        verdict = "" if met is None else ("yes" if met else "NO")
        self.rows.append((name, result, compared, ratio, goal, verdict))

    def print(self) -> None:
        print_table(self.columns, self.rows)


# -- official SDK ----------------------------------------------------------------------


def official_service(url: str, pool: int = 10) -> Any | None:
    """A ``volcengine.base.Service`` with GetSegmentTask, pointed at ``url``; None if absent."""
    try:
        from requests.adapters import HTTPAdapter
        from volcengine.ApiInfo import ApiInfo
        from volcengine.base.Service import Service
        from volcengine.Credentials import Credentials as SdkCredentials
        from volcengine.ServiceInfo import ServiceInfo
    except ImportError:
        return None
    credentials = SdkCredentials(
        DEFAULT_CREDENTIALS.access_key_id,
        DEFAULT_CREDENTIALS.secret_access_key,
        "rtc",
        "cn-north-1",
    )
    info = ServiceInfo(url.split("://", 1)[1], {"Accept": "application/json"}, credentials, 10, 10)
    api = {
        "GetSegmentTask": ApiInfo(
            "GET", "/", {"Action": "GetSegmentTask", "Version": "2022-06-01"}, {}, {}
        )
    }
    service = Service(info, api)
    # Service.__init__ may read keys from the environment or ~/.volc; the emulator's win.
    service.set_ak(DEFAULT_CREDENTIALS.access_key_id)
    service.set_sk(DEFAULT_CREDENTIALS.secret_access_key)
    if pool != 10:
        service.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
    return service


def official_get(service: Any, key: TaskKey) -> Any:
    """One GetSegmentTask through the official SDK, parsed as its users must."""
    text = service.get(
        "GetSegmentTask", {"AppId": key.app_id, "RoomId": key.room_id, "TaskId": key.task_id}
    )
    return json.loads(text)


# -- sections --------------------------------------------------------------------------


def section_signer(table: Table, sizes: Sizes) -> None:
    table.section("1. signer, µs per signed request (median)")
    kwargs = {"calls": sizes.sign_calls, "repeats": sizes.sign_repeats}
    ours = signing.measure(signing.ours_signer(), **kwargs)
    official_call = signing.official()
    official = None if official_call is None else signing.measure(official_call, **kwargs)
    boto_call = signing.botocore_sigv4()
    boto = None if boto_call is None else signing.measure(boto_call, **kwargs)
    if official is None:
        table.row("ours Signer.sign", f"{ours:.1f} µs", "official not installed")
    else:
        table.row(
            "ours Signer.sign",
            f"{ours:.1f} µs",
            f"official SignerV4 {official:.1f} µs",
            f"{official / ours:.1f}x faster",
            ">= 3x faster",
            official / ours >= 3,
        )
    if boto is not None:
        table.row("", "", f"botocore SigV4Auth {boto:.1f} µs", f"{boto / ours:.1f}x faster")


async def _timed_calls(call: Callable[[TaskKey], Awaitable[Any]], keys: list[TaskKey]) -> float:
    start = time.perf_counter()
    for key in keys:
        await call(key)
    return (time.perf_counter() - start) / len(keys) * 1e6


def _bare_transport(backend: str) -> httpx.AsyncBaseTransport | None:
    if backend == "httpcore":
        return None
    # httpx-aiohttp's own transport, without our error re-mapping: the bare peer.
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport()  # type: ignore[no-any-return]


async def section_sequential(table: Table, sizes: Sizes, server: EmulatorProcess) -> None:
    server.configure(qps=None, latency=0.0)
    keys = task_keys(sizes.sequential_calls)
    contenders: dict[str, Callable[[TaskKey], Awaitable[Any]]] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    for backend in BACKENDS:
        client = SegmentClient(
            DEFAULT_CREDENTIALS,
            endpoint=server.url,
            qps=1e6,
            max_retries=0,
            http_backend=backend,  # type: ignore[arg-type]
        )
        closers.append(client.aclose)
        contenders[f"ours/{backend}"] = lambda key, c=client: c.get_segment_task(*key)
        http = httpx.AsyncClient(transport=_bare_transport(backend))
        closers.append(http.aclose)
        target, headers = signed_get(bench_signer(), server.url, keys[0])

        async def bare(
            _key: TaskKey,
            http: httpx.AsyncClient = http,
            target: str = target,
            headers: dict[str, str] = headers,
        ) -> Any:
            response = await http.get(target, headers=headers)
            response.raise_for_status()
            return response.content

        contenders[f"bare/{backend}"] = bare
    service = official_service(server.url)
    if service is not None:

        async def official(key: TaskKey) -> Any:
            return official_get(service, key)

        contenders["official"] = official
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for call in contenders.values():  # warm up: connections, imports, caches
            await _timed_calls(call, keys[:5])
        for _ in range(sizes.sequential_repeats):
            for name, call in contenders.items():
                runs[name].append(await _timed_calls(call, keys))
    finally:
        for close in closers:
            await close()
    result = {name: median(values) for name, values in runs.items()}
    table.section(
        f"2. sequential call, µs per call ({sizes.sequential_calls} calls x "
        f"{sizes.sequential_repeats}, median; loopback, latency 0)"
    )
    for backend in BACKENDS:
        ours, bare = result[f"ours/{backend}"], result[f"bare/{backend}"]
        table.row(
            f"ours, {backend}",
            f"{ours:.0f} µs",
            f"bare httpx/{backend} {bare:.0f} µs",
            f"{ours / bare:.2f}x",
            "<= 1.10x bare",
            ours / bare <= 1.10,
        )
    if "official" in result:
        official = result["official"]
        fastest = min(BACKENDS, key=lambda b: result[f"ours/{b}"])
        ours = result[f"ours/{fastest}"]
        for backend in BACKENDS:
            ours_b = result[f"ours/{backend}"]
            table.row(
                f"ours, {backend}",
                f"{ours_b:.0f} µs",
                f"official Service.get {official:.0f} µs",
                _faster_or_slower(official / ours_b),
                "faster than official" if backend == fastest else "",
                official > ours if backend == fastest else None,
            )


def _faster_or_slower(speedup: float) -> str:
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


async def _ours_throughput(url: str, backend: str, keys: list[TaskKey]) -> float:
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        endpoint=url,
        qps=1e6,
        max_retries=0,
        http_backend=backend,  # type: ignore[arg-type]
    ) as client:
        await client.gather_segment_tasks(keys[:32], concurrency=32)  # open the connections
        start = time.perf_counter()
        outcomes = await client.gather_segment_tasks(keys, concurrency=32)
        elapsed = time.perf_counter() - start
    failed = sum(1 for outcome in outcomes if outcome.error is not None)
    if failed:
        raise RuntimeError(f"ours/{backend}: {failed} of {len(keys)} failed")
    return len(keys) / elapsed


def _official_throughput(service: Any, keys: list[TaskKey], threads: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda key: official_get(service, key), keys[:threads]))  # warm up
        start = time.perf_counter()
        list(pool.map(lambda key: official_get(service, key), keys))
        elapsed = time.perf_counter() - start
    return len(keys) / elapsed


async def section_throughput(table: Table, sizes: Sizes, server: EmulatorProcess) -> None:
    server.configure(qps=None, latency=0.0)
    keys = task_keys(sizes.throughput_requests)
    service = official_service(server.url, pool=32)
    runs: dict[str, list[float]] = {f"ours/{b}": [] for b in BACKENDS}
    if service is not None:
        runs["official"] = []
    for _ in range(sizes.throughput_repeats):
        for backend in BACKENDS:
            runs[f"ours/{backend}"].append(await _ours_throughput(server.url, backend, keys))
        if service is not None:
            runs["official"].append(_official_throughput(service, keys, 32))
    result = {name: median(values) for name, values in runs.items()}
    table.section(
        f"3. throughput, requests/s with 32 in flight ({sizes.throughput_requests} requests x "
        f"{sizes.throughput_repeats}, median; ceiling off)"
    )
    official = result.get("official")
    best = max(BACKENDS, key=lambda b: result[f"ours/{b}"])
    for backend in BACKENDS:
        ours = result[f"ours/{backend}"]
        if official is None:
            table.row(f"ours, {backend}", f"{ours:.0f} req/s", "official not installed")
            continue
        table.row(
            f"ours, {backend}",
            f"{ours:.0f} req/s",
            f"official, 32 threads {official:.0f} req/s",
            f"{ours / official:.2f}x",
            ">= 2x official" if backend == best else "",
            ours / official >= 2 if backend == best else None,
        )


async def _ours_fanout(
    server: EmulatorProcess, backend: str, keys: list[TaskKey]
) -> dict[str, Any]:
    server.configure(qps=FANOUT_QPS, latency=FANOUT_LATENCY)
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        endpoint=server.url,
        qps=FANOUT_QPS,
        http_backend=backend,  # type: ignore[arg-type]
    ) as client:
        start = time.perf_counter()
        outcomes = await client.gather_segment_tasks(keys)
        wall = time.perf_counter() - start
    lost = sum(1 for outcome in outcomes if outcome.error is not None)
    return {"wall": wall, "lost": lost, **server.stats()}


def _official_fanout(
    server: EmulatorProcess, service: Any, keys: list[TaskKey], threads: int
) -> dict[str, Any]:
    server.configure(qps=FANOUT_QPS, latency=FANOUT_LATENCY)
    lost = 0
    lock = threading.Lock()

    def call(key: TaskKey) -> None:
        nonlocal lost
        try:
            official_get(service, key)
        except Exception:
            with lock:
                lost += 1

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        futures = []
        for index, key in enumerate(keys):
            # An exact schedule (not a fixed sleep after each send, which would drift).
            delay = start + index / FANOUT_QPS - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(call, key))
        concurrent.futures.wait(futures)
        wall = time.perf_counter() - start
    return {"wall": wall, "lost": lost, **server.stats()}


async def section_fanout(table: Table, sizes: Sizes, server: EmulatorProcess) -> None:
    keys = task_keys(sizes.fanout_keys)
    ideal = len(keys) / FANOUT_QPS
    results: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        results[f"ours, {backend}"] = await _ours_fanout(server, backend, keys)
        await asyncio.sleep(1.1)  # let the server's sliding window empty
    service = official_service(server.url, pool=16)
    if service is not None:
        results["official, 16 threads + 1/60 s pacing"] = _official_fanout(
            server, service, keys, 16
        )
    table.section(
        f"4. fan-out of {len(keys)} keys at {FANOUT_QPS:.0f} QPS, {FANOUT_LATENCY * 1000:.0f} ms "
        f"latency (ideal wall {ideal:.2f} s = keys / QPS)"
    )
    for name, r in results.items():
        ours = name.startswith("ours")
        ratio = r["wall"] / ideal
        figures = (
            f"wall {r['wall']:.2f} s, throttled {r['throttled']}, lost {r['lost']}, "
            f"max {r['max_per_second']}/s"
        )
        met = (
            r["throttled"] == 0
            and r["lost"] == 0
            and r["max_per_second"] <= FANOUT_QPS
            and ratio <= 1.02
        )
        table.row(
            name,
            figures,
            "",
            f"{ratio:.3f}x ideal",
            "0 throttled, 0 lost, <= 60/s, <= 1.02x" if ours else "",
            met if ours else None,
        )


def section_parse(table: Table, sizes: Sizes) -> None:
    kwargs = {"number": sizes.parse_calls, "repeat": sizes.parse_repeats}
    parsing.loads_task_and_metadata()
    loads = parsing.median_us(parsing.loads_only, **kwargs)
    full = parsing.median_us(parsing.loads_task_and_metadata, **kwargs)
    table.section("5. parse the documented example response, µs (median)")
    table.row(
        "json.loads + structure task + metadata",
        f"{full:.1f} µs",
        f"json.loads alone {loads:.1f} µs",
        f"{full / loads:.2f}x json.loads",
    )


async def _lag_run(keys: list[TaskKey], qps: float) -> list[float]:
    emulator = Emulator(qps=None, record_limit=1000)
    for key in keys:
        emulator.add_task(*key)
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), qps=qps, max_retries=0
    ) as client:
        await client.get_segment_task(*keys[0])  # warm: lazy imports, first-call caches
        async with LagProbe(0.001) as probe:
            await asyncio.sleep(0.01)
            outcomes = await client.gather_segment_tasks(keys)
    failed = sum(1 for outcome in outcomes if outcome.error is not None)
    if failed:
        raise RuntimeError(f"event-loop lag run: {failed} of {len(keys)} failed")
    return probe.lags


async def _idle_lags(seconds: float) -> list[float]:
    """The probe alone: the machine's own noise floor (timer rounding, scheduling)."""
    async with LagProbe(0.001) as probe:
        await asyncio.sleep(seconds)
    return probe.lags


async def section_lag(table: Table, sizes: Sizes) -> None:
    keys = task_keys(sizes.lag_keys)
    qps = 2000.0
    maxima: list[float] = []
    p99s: list[float] = []
    for _ in range(sizes.lag_repeats):
        gc.collect()  # start each run from a clean heap, not with the previous run's garbage
        lags = await _lag_run(keys, qps)
        maxima.append(max(lags))
        p99s.append(percentile(lags, 0.99))
    idle = await _idle_lags(1.0 if sizes.quick else 3.0)
    worst = max(maxima) * 1000
    table.section(
        f"6. event-loop lag during a fan-out of {len(keys)} keys at {qps:.0f} QPS, in-process "
        f"emulator ({sizes.lag_repeats} runs)"
    )
    table.row(
        "probe sleeping 1 ms: overshoot",
        f"max {worst:.2f} ms, p99 {median(p99s) * 1000:.2f} ms",
        "",
        "",
        "max <= 5 ms",
        worst <= 5,
    )
    table.row(
        "the probe alone, no fan-out (noise floor)",
        f"max {max(idle) * 1000:.2f} ms, p99 {percentile(idle, 0.99) * 1000:.2f} ms",
    )


async def run(sizes: Sizes) -> Table:
    table = Table()
    section_signer(table, sizes)
    with EmulatorProcess(tasks=max(sizes.throughput_requests, sizes.fanout_keys)) as server:
        await section_sequential(table, sizes, server)
        await section_throughput(table, sizes, server)
        await section_fanout(table, sizes, server)
    section_parse(table, sizes)
    await section_lag(table, sizes)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run every section and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    args = parser.parse_args(argv)
    sizes = Sizes(args.quick)
    started = time.perf_counter()
    table = asyncio.run(run(sizes))
    quick = " (--quick: smoke sizes, figures not meaningful)" if sizes.quick else ""
    print(f"rtc_segment vs peers{quick}")
    print(describe_machine())
    print()
    table.print()
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
