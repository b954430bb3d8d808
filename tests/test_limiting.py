"""LocalRateLimiter: the sliding-window bound and the throughput floor, in virtual time."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from rtc_segment._limiting import CATCH_UP, LocalRateLimiter, RateLimiter
from rtc_segment._pacing import MIN_MARGIN
from rtc_segment.testing import max_in_window


async def acquire_times(limiter: LocalRateLimiter, n: int, concurrency: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await limiter.acquire()
            times.append(loop.time())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def test_max_in_window_counts_closed_windows() -> None:
    assert max_in_window([0.0, 0.5, 0.999]) == 3
    assert max_in_window([0.0, 0.5, 1.0, 1.5]) == 2


@pytest.mark.looptime
async def test_sliding_window_never_exceeds_qps_from_idle_and_under_load() -> None:
    limiter = LocalRateLimiter(60)
    times = await acquire_times(limiter, 400, concurrency=200)
    assert len(times) == 400
    assert max_in_window(times) <= 60
    # Sustained rate: at least 98 % of the ceiling.
    span = max(times) - min(times)
    assert (len(times) - 1) / span >= 0.98 * 60


@pytest.mark.looptime
async def test_bound_holds_across_idle_gaps() -> None:
    limiter = LocalRateLimiter(60)
    times = await acquire_times(limiter, 100, concurrency=50)
    await asyncio.sleep(0.7)  # partial idle: a leaky bucket with capacity > 1 would burst here
    times += await acquire_times(limiter, 100, concurrency=50)
    assert max_in_window(times) <= 60


@pytest.mark.looptime
async def test_bound_tolerates_arrival_jitter_of_ten_milliseconds() -> None:
    limiter = LocalRateLimiter(60)
    times = await acquire_times(limiter, 300, concurrency=100)
    # At the server, a 1-second window is a (1 s + jitter) window of sends.
    assert max_in_window(times, seconds=1.0 + 0.008) <= 60


@pytest.mark.looptime
async def test_a_plain_bucket_would_fail_the_same_check() -> None:
    # Guards the test itself: aiolimiter's default shape bursts past the ceiling.
    from aiolimiter import AsyncLimiter

    bucket = AsyncLimiter(60, 1)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(200)))
    assert max_in_window(times) > 60


@pytest.mark.looptime
async def test_cancelled_waiters_do_not_consume_capacity() -> None:
    limiter = LocalRateLimiter(10)
    loop = asyncio.get_running_loop()
    await limiter.acquire()
    await limiter.acquire()  # past the extra interval charged after a pause
    start = loop.time()
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(20)]
    await asyncio.sleep(0)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await limiter.acquire()
    # The next acquisition comes one interval after the first, not 20 intervals later.
    assert loop.time() - start <= 1 / (10 * 0.99) + 1e-3


@pytest.mark.looptime
async def test_late_wake_ups_do_not_accumulate() -> None:
    # Simulate a loop that wakes every waiter 1 ms late: the schedule must stay absolute.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for _ in range(120):
        await limiter.acquire()
        times.append(loop.time())
        await asyncio.sleep(0.001)
    times = times[1:]  # the first request after idle is charged an extra interval
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate >= 0.985 * 60
    assert max_in_window(times) <= 60


@pytest.mark.looptime
async def test_late_wake_ups_are_caught_up() -> None:
    # A busy loop now and then wakes a waiter more than an interval late (a stall): the
    # next send follows at once, so the stall costs nothing and the bound still holds.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for i in range(240):
        await limiter.acquire()
        times.append(loop.time())
        if i % 5 == 0:
            await asyncio.sleep(0.025)  # 25 ms late (1.5 intervals), every fifth send
    times = times[1:]  # from the first send on sustained load
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate >= 0.997 * limiter.rate
    assert max_in_window(times) <= 60


@pytest.mark.looptime
@pytest.mark.parametrize(("stall_intervals", "lost_intervals"), [(2.5, 0.0), (CATCH_UP + 3, 3.0)])
async def test_a_stalled_loop_is_caught_up_to_the_catch_up_limit(
    monkeypatch: pytest.MonkeyPatch, stall_intervals: float, lost_intervals: float
) -> None:
    # The loop wakes one waiter late (a stall, not a pause: the waiter was there). Up to
    # CATCH_UP intervals of it are made up by sending at once; only the rest is lost.
    limiter = LocalRateLimiter(60, utilization=0.99)
    loop = asyncio.get_running_loop()
    interval = 1 / limiter.rate
    original = loop.call_at
    timers = itertools.count()

    def late_timer(when: float, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        late = stall_intervals * interval if next(timers) == 20 else 0.0
        return original(when + late, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", late_timer)
    times = await acquire_times(limiter, 50, concurrency=10)
    monkeypatch.undo()
    assert max_in_window(times) <= 60
    lost = times[-1] - times[0] - 49 * interval
    assert lost == pytest.approx(lost_intervals * interval, abs=1e-4)
    if lost_intervals:
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert sum(1 for gap in gaps if gap < 1e-6) == CATCH_UP  # sent at once after it


@pytest.mark.looptime
async def test_the_first_request_after_a_pause_counts_one_interval_late() -> None:
    # The first request after a pause tends to arrive late (a new connection): the window
    # counts it one interval later, so the request a second later cannot be squeezed into
    # one window with it. After idle, sends are spaced: no burst.
    limiter = LocalRateLimiter(60, utilization=0.99)
    interval = 1 / limiter.rate
    window = 1 / 0.99
    for _ in range(2):  # from idle, and again after a pause
        times = await acquire_times(limiter, 62, concurrency=62)
        assert times[1] - times[0] == pytest.approx(interval, abs=1e-5)
        assert times[60] - times[0] >= window + interval - 1e-6
        # The next one catches up: the charge costs one send's place, not a lasting delay.
        assert times[61] - times[1] == pytest.approx(window, abs=1e-5)
        await asyncio.sleep(1.0)
    # Under sustained load there is no pause to charge: 200 sends take 199 intervals.
    times = await acquire_times(limiter, 200, concurrency=50)
    assert times[-1] - times[0] == pytest.approx(199 * interval, abs=2e-3)


@pytest.mark.looptime
@pytest.mark.parametrize(("qps", "window", "most"), [(30.5, 1.0, 30), (0.5, 2.0, 1), (1.0, 1.0, 1)])
async def test_the_bound_holds_for_ceilings_that_are_not_whole_numbers(
    qps: float, window: float, most: int
) -> None:
    limiter = LocalRateLimiter(qps)
    times = await acquire_times(limiter, 3 * most + 3, concurrency=20)
    assert max_in_window(times, seconds=window) <= most


@pytest.mark.looptime
async def test_a_shrinking_margin_never_lets_an_earlier_window_overfill() -> None:
    # The log checks every window with the margin of the moment: feedback that lowers the
    # margin mid-run (a quiet path learnt) speeds sends up without a burst.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for i in range(300):
        await limiter.acquire()
        times.append(loop.time())
        # 20 ms of spread at first, then a quiet path that replaces it in the estimate.
        limiter.observe_round_trip(0.05 + 0.02 * (i % 2) if i < 120 else 0.05)
        if i == 119:
            assert limiter.margin is not None and limiter.margin > 0.01
    margin = limiter.margin
    assert margin is not None and margin <= 2 * MIN_MARGIN
    assert max_in_window(times, seconds=1.0 + MIN_MARGIN) <= 60


def _forward_delays(path: str, rng: random.Random) -> Callable[[], float]:
    if path == "uniform":  # the jittery path: 0-20 ms
        return lambda: rng.uniform(0.0, 0.02)
    if path == "bimodal":  # one request in ten takes a 30 ms detour
        return lambda: 0.03 if rng.random() < 0.1 else 0.0
    return lambda: min(0.3, rng.lognormvariate(math.log(0.005), 0.8))  # a heavy tail


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("path", "least_rate"), [("uniform", 58.8), ("bimodal", 58.5), ("lognormal", 58.5)]
)
async def test_arrivals_stay_under_the_ceiling_on_a_jittery_path(
    path: str, least_rate: float
) -> None:
    # Every request reaches the service after its own forward delay and is answered 50 ms
    # later; the client reports each round trip. Each send waits for the one 60 sends
    # before it to be a second plus *its* possible lateness old, so arrivals never crowd
    # a second, while the pace allows only for a typical request: a path where one
    # request in ten is 30 ms late runs at about 98 % of the ceiling, where allowing every
    # request the 30 ms (the spread) would run at 96.6 %.
    limiter = LocalRateLimiter(60)
    forward = _forward_delays(path, random.Random(5))
    loop = asyncio.get_running_loop()
    sends: list[float] = []
    arrivals: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        delay = forward()
        sends.append(loop.time())
        arrivals.append(loop.time() + delay)
        await asyncio.sleep(delay + 0.05)
        limiter.observe_round_trip(delay + 0.05)

    in_flight = asyncio.Semaphore(30)

    async def bounded() -> None:
        async with in_flight:
            await one()

    await asyncio.gather(*(bounded() for _ in range(900)))
    assert max_in_window(arrivals, seconds=1.0) <= 60
    steady = sends[300:]  # once the path is learnt
    assert (len(steady) - 1) / (steady[-1] - steady[0]) >= least_rate


def test_protocol_and_validation() -> None:
    limiter = LocalRateLimiter(30, utilization=0.95)
    assert isinstance(limiter, RateLimiter)
    assert limiter.qps == 30
    assert limiter.rate == pytest.approx(28.5)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="qps"):
            LocalRateLimiter(bad)
    with pytest.raises(TypeError, match="qps"):
        LocalRateLimiter("60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="utilization"):
        LocalRateLimiter(60, utilization=1.0)


# -- one quota per account per process ---------------------------------------------------------


def test_clients_of_one_account_share_each_actions_limiter() -> None:
    from rtc_segment import Credentials, SegmentClient
    from rtc_segment._limiting import shared_limiter

    alice = Credentials("AKLTalice", "secret-a")
    first, second = SegmentClient(alice), SegmentClient(alice)
    assert first.limiter is second.limiter
    assert first.limiter is shared_limiter("AKLTalice", "GetSegmentTask", 60.0)
    assert (
        dict(first._limiters.items())["StopSegment"]
        is dict(second._limiters.items())["StopSegment"]
    )
    # Another account, another ceiling, or an explicit limiter: not shared.
    assert SegmentClient(Credentials("AKLTbob", "secret-b")).limiter is not first.limiter
    assert SegmentClient(alice, qps=30).limiter is not first.limiter
    own = LocalRateLimiter(60)
    assert SegmentClient(alice, limiter=own).limiter is own


def test_the_default_limiter_is_shared_by_the_host_and_says_so() -> None:
    from rtc_segment import Credentials, HostRateLimiter, SegmentClient

    client = SegmentClient(Credentials("AKLThostwide", "secret-h"))
    assert isinstance(client.limiter, HostRateLimiter)
    assert client.limiter.key == HostRateLimiter.key_for(Credentials("AKLThostwide", "x"))
    assert client.stats.limiter_scope == "host"
    limiters = dict(client._limiters.items())
    assert isinstance(limiters["StartSegment"], HostRateLimiter)
    assert limiters["StartSegment"].key.endswith("-StartSegment")
    # An explicit limiter still wins, and says it is this process's alone.
    own = SegmentClient(Credentials("AKLThostwide", "secret-h"), limiter=LocalRateLimiter(60))
    assert own.stats.limiter_scope == "process"
    # A ceiling beyond what the host's shared state holds is paced per process (a
    # host-wide one at a million QPS kept a 32 MB state: 200 requests took 23 s).
    fast = SegmentClient(Credentials("AKLThostwide", "secret-h"), qps=1e6)
    assert isinstance(fast.limiter, LocalRateLimiter)


def test_without_a_usable_directory_the_default_paces_per_process_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rtc_segment import Credentials, SegmentClient, _limiting
    from rtc_segment._host import DIRECTORY_ENV

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(DIRECTORY_ENV, str(blocker))
    monkeypatch.setattr(_limiting, "_SHARED", {})
    monkeypatch.setattr(_limiting, "_warned_process_only", False)
    with caplog.at_level(logging.WARNING, logger="rtc_segment"):
        first = SegmentClient(Credentials("AKLTnowhere", "secret-n"))  # four actions
        second = SegmentClient(Credentials("AKLTnowhere2", "secret-n"))
    assert type(first.limiter) is LocalRateLimiter
    assert type(second.limiter) is LocalRateLimiter
    assert first.stats.limiter_scope == "process"
    warnings = [r for r in caplog.records if "pacing each process on its own" in r.getMessage()]
    assert len(warnings) == 1
    assert "RedisRateLimiter" in warnings[0].getMessage()
    assert "secret" not in caplog.text


def test_a_limiter_keeps_its_state_per_event_loop() -> None:
    import gc
    import warnings

    import looptime

    limiter = LocalRateLimiter(10)

    async def burst() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):
            await limiter.acquire()
        return loop.time() - start

    def in_a_new_virtual_loop() -> float:
        loop = looptime.new_event_loop(start=0)
        try:
            return loop.run_until_complete(burst())
        finally:
            loop.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aiolimiter warns when one bucket crosses loops
        first = in_a_new_virtual_loop()
        second = in_a_new_virtual_loop()
    # Each loop paced on its own, from idle: the second did not inherit the first's level.
    assert first > 0
    assert second == pytest.approx(first)
    gc.collect()
    # A new loop finds the closed ones' state gone: only its own is kept.
    assert len(limiter._pacers) == 1


@pytest.mark.looptime
async def test_three_clients_of_one_account_stay_under_the_ceiling_together() -> None:
    from rtc_segment import SegmentClient
    from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

    emulator = Emulator(qps=60, latency=0.05)
    keys = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(360)]
    clients = [
        SegmentClient(
            DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock
        )
        for _ in range(3)
    ]
    results = await asyncio.gather(
        *(
            client.gather_segment_tasks(keys[i * 120 : (i + 1) * 120])
            for i, client in enumerate(clients)
        )
    )
    for client in clients:
        await client.aclose()
    outcomes = [outcome for result in results for outcome in result]
    assert len(outcomes) == 360
    assert all(outcome.ok for outcome in outcomes)
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= 60


# -- adaptive margin ---------------------------------------------------------------------------


@pytest.mark.looptime
async def test_the_rate_follows_the_typical_round_trip() -> None:
    limiter = LocalRateLimiter(60)
    assert limiter.adaptive
    await limiter.acquire()
    start_rate = limiter.rate
    samples = [0.05 + 0.02 * (i % 11) / 10 for i in range(64)]  # 50-70 ms
    for sample in samples:
        limiter.observe_round_trip(sample)
    # The pace allows for a typical request: the mean round trip above the fastest.
    typical = statistics.mean(samples) - min(samples) + MIN_MARGIN
    assert limiter.margin == pytest.approx(typical)
    assert limiter.rate == pytest.approx(60 / (1 + typical), rel=1e-4)
    assert limiter.rate < start_rate
    # A quiet path (1 ms of spread) gets close to the ceiling: 59.8 of 60.
    quiet = LocalRateLimiter(60)
    await quiet.acquire()
    for i in range(64):
        quiet.observe_round_trip(0.05 + 0.001 * (i % 2))
    assert quiet.rate > 0.996 * 60


@pytest.mark.looptime
async def test_a_throttle_widens_the_margin_at_once_and_it_relaxes_slowly() -> None:
    limiter = LocalRateLimiter(60)
    # At full pace, where a stray throttle can be our own margin's fault (well below the
    # ceiling it is someone else's, and the rate backs off instead: tests/test_backoff.py).
    await acquire_times(limiter, 70, concurrency=1)
    before, margin_before = limiter.rate, limiter.margin
    limiter.observe_throttle()
    widened = limiter.rate
    assert widened < before
    assert limiter.margin is not None and margin_before is not None
    assert limiter.margin > margin_before
    limiter.observe_throttle()  # the same crowded second: one event
    assert limiter.rate == widened
    await asyncio.sleep(120)
    limiter.observe_round_trip(0.05)  # any feedback re-paces
    limiter.observe_throttle()
    limiter.observe_round_trip(0.05)
    assert limiter.margin is not None and limiter.margin < 0.02


@pytest.mark.looptime
async def test_a_fixed_utilization_ignores_feedback() -> None:
    limiter = LocalRateLimiter(60, utilization=0.99)
    assert not limiter.adaptive
    await limiter.acquire()
    limiter.observe_throttle()
    for _ in range(64):
        limiter.observe_round_trip(0.3)
    assert limiter.rate == pytest.approx(59.4)
    assert limiter.margin is None
