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

from rtc_segment._limiting import CATCH_UP, LocalRateLimiter, RateLimiter, bulk_gate
from rtc_segment._pacing import MAX_MARGIN, MIN_MARGIN, STARTING_MARGIN
from rtc_segment.testing import max_in_window


@pytest.fixture
def fresh_shared_limiters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The process's default limiters start empty, each made by the test that asks, with
    the host's shared state in a directory of the test's own (a run of several pytest
    sessions in one process, as mutmut's, removes the session's directory in between)."""
    from rtc_segment import _limiting
    from rtc_segment._host import DIRECTORY_ENV

    monkeypatch.setattr(_limiting, "_SHARED", {})
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path))


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


@pytest.mark.looptime
async def test_below_one_qps_each_send_waits_one_window_after_the_last() -> None:
    # Below 1 QPS the log holds one send, whose window is 1 / qps seconds (plus margin).
    limiter = LocalRateLimiter(0.5)
    times = await acquire_times(limiter, 4, concurrency=4)
    window = 2.0 * (1 + STARTING_MARGIN)
    # The first send after idle counts one interval (here: a window) late, and the second
    # waits for that; then one window apart.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([2 * window, window, window], rel=1e-5)


@pytest.mark.looptime
@pytest.mark.parametrize(("gap", "third_after_second"), [(2.0, 0.0), (2.5, 1.0)])
async def test_a_pause_is_a_gap_of_over_two_intervals_after_the_last_send_left(
    gap: float, third_after_second: float
) -> None:
    # docs/design/limiter.md: the first request after a gap of *over* two intervals with
    # nobody waiting is charged an interval -- the next one waits a whole interval instead
    # of catching up. The gap counts from when the last request left (not from the later
    # time a first send after idle is counted at). 50 a second: 20 ms apart, exact in floats.
    limiter = LocalRateLimiter(100, utilization=0.5)
    interval = 0.02
    loop = asyncio.get_running_loop()
    assert loop.time() == 0.0  # the boundary is exact only from a round start
    times = []
    await limiter.acquire()  # from idle: a pause
    times.append(loop.time())
    await asyncio.sleep(gap * interval)
    for _ in range(2):
        await limiter.acquire()
        times.append(loop.time())
    expected = [0.0, gap * interval, (gap + third_after_second) * interval]
    assert times == pytest.approx(expected, abs=1e-6)


@pytest.mark.looptime
async def test_after_a_pause_the_next_send_is_one_interval_away_even_if_the_pace_rose() -> None:
    # A pause leaves no credit: the send after the first is one interval away, as from a
    # standing start -- also when feedback raised the pace while nobody was sending.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    await limiter.acquire()
    await asyncio.sleep(0.01)
    for _ in range(16):  # a quiet path learnt: the margin shrinks, the pace rises
        limiter.observe_round_trip(0.05)
    interval = 1 / limiter.rate
    # Just over two intervals after the first send: a pause, though the bucket, which
    # drained at the lower pace for a while, still holds more than two intervals' worth.
    await asyncio.sleep(math.ceil((2 * interval - 0.01) * 1e6 + 1) / 1e6)
    await limiter.acquire()
    second = loop.time()
    await limiter.acquire()
    assert loop.time() - second == pytest.approx(interval, abs=2e-6)


@pytest.mark.looptime
async def test_a_round_trip_sets_the_window_of_the_send_it_belongs_to() -> None:
    # At 1 QPS the log holds one send: the next waits until that one is a second plus its
    # own lateness -- its round trip minus the least seen, plus MIN_MARGIN -- old.
    loop = asyncio.get_running_loop()
    limiter = LocalRateLimiter(1)
    for _ in range(16):  # the path: 50 ms round trips, no spread
        limiter.observe_round_trip(0.05)
    interval = 1 / limiter.rate
    await limiter.acquire()
    first = loop.time()  # counted one interval late (after idle)
    await asyncio.sleep(0.3)
    limiter.observe_round_trip(0.3)  # its answer: 250 ms slower than the fastest
    await limiter.acquire()
    assert loop.time() - first == pytest.approx(interval + 1 + 0.25 + MIN_MARGIN, abs=1e-5)

    # A late answer is matched to the send that left then, not to a later one.
    limiter = LocalRateLimiter(1)
    for _ in range(16):
        limiter.observe_round_trip(0.05)
    await limiter.acquire()
    first = loop.time()
    await limiter.acquire()
    second = loop.time()
    await asyncio.sleep(0.1)
    limiter.observe_round_trip(loop.time() - first)  # the first send's answer, 2.1 s late
    await limiter.acquire()
    # The second is unanswered: the spread of round trips (none: MIN_MARGIN) bounds it.
    assert loop.time() - second == pytest.approx(1 + MIN_MARGIN, abs=1e-5)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("round_trip", "reported_before", "cut"),
    [
        (0.02, 0.0, True),  # its request left after the stray throttle: a shared quota
        (0.5, 0.0, False),  # it left before the stray throttle: the same crowded second
        (0.02, 0.01, False),  # that round trip was another answer's: unknown, so the same
        (None, 0.0, False),  # no round trip: within a second of the stray, the same
    ],
)
async def test_a_throttle_is_told_apart_by_when_its_request_left(
    round_trip: float | None, reported_before: float, cut: bool
) -> None:
    # The client reports a throttled answer's round trip just before the throttle, in the
    # same step: then the limiter knows when that request left.
    limiter = LocalRateLimiter(60)
    await acquire_times(limiter, 120, concurrency=1)  # two seconds at full pace
    limiter.observe_throttle()  # a stray throttle: the margin widens, the pace stays
    full = limiter.rate
    await acquire_times(limiter, 18, concurrency=1)  # 0.3 s later
    if round_trip is not None:
        limiter.observe_round_trip(round_trip)
    await asyncio.sleep(reported_before)
    limiter.observe_throttle()
    if cut:
        assert limiter.rate < 0.85 * full
    else:
        assert limiter.rate == pytest.approx(full, rel=1e-3)


@pytest.mark.looptime
async def test_a_throttle_a_whole_step_after_a_round_trip_is_not_that_answers() -> None:
    # The client reports a throttled answer's round trip just before the throttle: only a
    # throttle less than a step (1 ms) after it is that answer's. At 1 QPS one send is the
    # full pace, so a stray throttle can come at once -- within the first milliseconds of
    # the loop's clock, where loop times are exact enough to meet the boundary.
    limiter = LocalRateLimiter(1)
    loop = asyncio.get_running_loop()
    assert loop.time() == 0.0
    await limiter.acquire()
    limiter.observe_throttle()  # a stray throttle: the margin widens, the pace stays
    full = limiter.rate
    await asyncio.sleep(0.002)
    limiter.observe_round_trip(0.002)  # the answer to the request sent with the throttle
    reported = loop.time()
    await asyncio.sleep(0.001)
    assert loop.time() - reported == 0.001
    limiter.observe_throttle()  # whose request left when is unknown: within a second, the same
    assert limiter.rate == pytest.approx(full, rel=1e-3)


@pytest.mark.looptime
async def test_a_send_counts_until_its_window_has_passed_even_beside_a_pause() -> None:
    # The first send after a pause counts one interval late, and the log forgets what no
    # window can reach any more: measured from that later time, it forgot a send whose
    # window (here the widest, 1 + MAX_MARGIN) had one interval left -- and when the pace
    # rose just then, the next send went out inside it, the ceiling's 61st.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    for round_trip in [0.05] * 8 + [1.0] * 8:  # a path with a slow half: about 41 a second
        limiter.observe_round_trip(round_trip)
    await limiter.acquire()  # the oldest: from idle, counted one interval late
    oldest_at = loop.time() + 1 / limiter.rate
    await acquire_times(limiter, 58, concurrency=1)
    limiter.observe_round_trip(loop.time())  # the oldest's answer, slow: the widest window
    window = 1 + MAX_MARGIN
    # A pause, then a send (the 60th) just as the oldest's window has one interval left.
    await asyncio.sleep(oldest_at + window - 1 / limiter.rate + 2e-6 - loop.time())
    await limiter.acquire()
    for _ in range(15):  # round trips that make the path look quicker: the pace rises
        limiter.observe_round_trip(0.05)
    await limiter.acquire()  # the 61st counting from the oldest
    assert loop.time() >= oldest_at + window - 1e-6


@pytest.mark.looptime
@pytest.mark.parametrize("sends_while_backed_off", [5, 0])
async def test_once_a_backoff_ends_the_sends_go_at_the_full_pace_again(
    sends_while_backed_off: int,
) -> None:
    # Also when it ended while nobody was sending (the bucket kept the lowered rate then).
    limiter = LocalRateLimiter(60)
    full = limiter.rate
    await acquire_times(limiter, 30, concurrency=1)  # half a second at full pace
    limiter.observe_throttle()  # well below the ceiling: someone else uses the quota
    assert limiter.rate < 0.85 * full
    await acquire_times(limiter, sends_while_backed_off, concurrency=1)
    await asyncio.sleep(30)  # the backoff climbs back to the ceiling and disengages
    assert limiter.rate == pytest.approx(full)
    times = (await acquire_times(limiter, 40, concurrency=1))[1:]  # after the pause
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(full, rel=1e-4)


@pytest.mark.looptime
async def test_a_fixed_utilization_keeps_each_window_of_one_over_it_to_the_ceiling() -> None:
    # At 30.5 QPS and utilization 0.5 the pace (15.25 a second) would put 30.5 sends in a
    # window of 1 / 0.5 seconds: the log keeps every such window to 30.
    limiter = LocalRateLimiter(30.5, utilization=0.5)
    times = await acquire_times(limiter, 95, concurrency=5)
    assert max_in_window(times, seconds=2.0) <= 30


@pytest.mark.looptime
async def test_while_backed_off_the_sends_are_spaced_evenly_at_the_lowered_rate() -> None:
    limiter = LocalRateLimiter(60)
    await acquire_times(limiter, 30, concurrency=1)  # half a second at full pace
    limiter.observe_throttle()  # well below the ceiling: someone else uses the quota
    await acquire_times(limiter, 30, concurrency=1)  # the server's window turns over first
    times = await acquire_times(limiter, 10, concurrency=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Evenly about 26 a second (climbing) -- not bursts at the old pace, and pauses between.
    assert 1 / 40 < min(gaps) <= max(gaps) < 1 / 20


@pytest.mark.looptime
async def test_the_sends_follow_the_pace_as_a_throttles_widening_relaxes() -> None:
    # The widening halves every 30 s by time alone, with no feedback to re-pace on: the
    # sends keep to the rate the limiter reports all the same.
    limiter = LocalRateLimiter(60)
    await acquire_times(limiter, 70, concurrency=1)
    limiter.observe_throttle()  # a stray throttle at full pace: the margin widens
    widened = limiter.rate
    await asyncio.sleep(60)
    assert limiter.rate > widened
    times = (await acquire_times(limiter, 40, concurrency=1))[1:]  # after the pause
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(limiter.rate, rel=1e-4)


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
    assert LocalRateLimiter().qps == 60.0  # GetSegmentTask's ceiling
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


@pytest.mark.parametrize(
    ("qps", "utilization", "error", "message"),
    [
        (0, None, ValueError, "qps must be a positive number, got 0"),
        ("60", None, TypeError, "qps must be a number, not str"),
        (60, float("nan"), ValueError, "utilization must be a finite number, got nan"),
        (60, "0.5", TypeError, "utilization must be a number, not str"),
        (60, 0, ValueError, "utilization must be in (0, 1), got 0"),
        (60, 1.0, ValueError, "utilization must be in (0, 1), got 1.0"),
        (60, 1.5, ValueError, "utilization must be in (0, 1), got 1.5"),
        (60, -0.5, ValueError, "utilization must be in (0, 1), got -0.5"),
    ],
)
def test_bad_arguments_are_refused_with_messages_that_name_them(
    qps: object, utilization: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as refused:
        LocalRateLimiter(qps, utilization=utilization)  # type: ignore[arg-type]
    assert str(refused.value) == message


@pytest.mark.usefixtures("fresh_shared_limiters")
def test_a_ceiling_up_to_what_the_host_holds_is_shared_by_the_host() -> None:
    from rtc_segment import HostRateLimiter
    from rtc_segment._host_limiter import MAX_HOST_QPS
    from rtc_segment._limiting import shared_limiter

    at_most = shared_limiter("AKLTedge", "GetSegmentTask", MAX_HOST_QPS)
    assert isinstance(at_most, HostRateLimiter)
    assert at_most.qps == MAX_HOST_QPS
    assert shared_limiter("AKLTedge", "StopSegment", 150.0).qps == 150.0
    beyond = shared_limiter("AKLTedge", "GetSegmentTask", MAX_HOST_QPS + 1)
    assert type(beyond) is LocalRateLimiter
    assert beyond.qps == MAX_HOST_QPS + 1


# -- the gate bulk work queues at --------------------------------------------------------------


class _Unreferenceable:
    """A limiter that cannot be weakly referenced (slots, no __weakref__)."""

    __slots__ = ("qps",)

    def __init__(self) -> None:
        self.qps = 60.0

    async def acquire(self) -> None:
        return None


def test_bulk_work_queues_at_one_gate_per_limiter_and_event_loop() -> None:
    first, second = LocalRateLimiter(60), LocalRateLimiter(60)
    odd, other_odd = _Unreferenceable(), _Unreferenceable()

    async def gates() -> list[asyncio.Lock]:
        return [
            bulk_gate(first),
            bulk_gate(first),
            bulk_gate(second),
            bulk_gate(odd),
            bulk_gate(other_odd),
        ]

    one_loop = asyncio.run(gates())
    assert all(isinstance(gate, asyncio.Lock) for gate in one_loop)
    first_gate, again, second_gate, odd_gate, other_odd_gate = one_loop
    assert again is first_gate
    assert second_gate is not first_gate
    # Limiters that cannot be weakly referenced share one gate per loop.
    assert other_odd_gate is odd_gate
    assert odd_gate not in (first_gate, second_gate)
    # Another loop, other gates: a lock belongs to its loop.
    another_loop = asyncio.run(gates())
    assert not {id(gate) for gate in another_loop} & {id(gate) for gate in one_loop}


# -- the limiter of each action -----------------------------------------------------------------

_CEILINGS = {"GetSegmentTask": 60.0, "StartSegment": 60.0, "StopSegment": 150.0}


@pytest.mark.usefixtures("fresh_shared_limiters")
def test_each_action_waits_on_the_accounts_shared_limiter_at_its_ceiling() -> None:
    from rtc_segment._limiting import ActionLimiters, shared_limiter

    account = "AKLTactions"
    limiters = ActionLimiters("GetSegmentTask", None, account=account, qps=30.0, ceilings=_CEILINGS)
    # The primary action at the client's qps, every other at its own ceiling.
    assert limiters.primary is shared_limiter(account, "GetSegmentTask", 30.0)
    assert limiters.items() == [
        ("GetSegmentTask", limiters.primary),
        ("StartSegment", shared_limiter(account, "StartSegment", 60.0)),
        ("StopSegment", shared_limiter(account, "StopSegment", 150.0)),
    ]
    # An action met later gets its limiter once, at the ceiling it came with.
    update = limiters.get("UpdateSegment", 150.0)
    assert update is shared_limiter(account, "UpdateSegment", 150.0)
    assert limiters.get("UpdateSegment", 1.0) is update
    assert limiters.items()[-1] == ("UpdateSegment", update)
    # A limiter given for the primary action paces it alone; the others keep the defaults.
    own = LocalRateLimiter(10)
    given = ActionLimiters("GetSegmentTask", own, account=account, qps=10.0, ceilings=_CEILINGS)
    assert given.primary is own
    assert given.items() == [
        ("GetSegmentTask", own),
        ("StartSegment", shared_limiter(account, "StartSegment", 60.0)),
        ("StopSegment", shared_limiter(account, "StopSegment", 150.0)),
    ]


def test_a_limiter_that_offers_for_action_makes_the_others_and_overrides_win() -> None:
    from rtc_segment._limiting import ActionLimiters

    class Derivable:
        qps = 60.0

        def __init__(self) -> None:
            self.made: list[tuple[str, float, LocalRateLimiter]] = []

        async def acquire(self) -> None:
            return None

        def for_action(self, action: str, qps: float) -> LocalRateLimiter:
            limiter = LocalRateLimiter(qps)
            self.made.append((action, qps, limiter))
            return limiter

    primary = Derivable()
    override = LocalRateLimiter(5)
    limiters = ActionLimiters(
        "GetSegmentTask",
        primary,
        account="AKLTderived",
        qps=60.0,
        ceilings=_CEILINGS,
        overrides={"StopSegment": override},
    )
    assert [(action, qps) for action, qps, _ in primary.made] == [("StartSegment", 60.0)]
    assert dict(limiters.items()) == {
        "GetSegmentTask": primary,
        "StartSegment": primary.made[0][2],
        "StopSegment": override,
    }
    later = limiters.get("UpdateSegment", 150.0)
    assert primary.made[-1] == ("UpdateSegment", 150.0, later)
    assert limiters.get("UpdateSegment", 150.0) is later
    assert len(primary.made) == 2


def test_an_override_for_an_unknown_action_or_of_another_type_is_refused() -> None:
    from rtc_segment._limiting import ActionLimiters

    def make(overrides: dict[str, object]) -> None:
        ActionLimiters(
            "GetSegmentTask",
            LocalRateLimiter(60),
            account="AKLTrefused",
            qps=60.0,
            ceilings=_CEILINGS,
            overrides=overrides,  # type: ignore[arg-type]
        )

    with pytest.raises(ValueError, match="unknown action") as unknown:
        make({"Nope": LocalRateLimiter(1)})
    assert str(unknown.value) == (
        "action_limiters: unknown action 'Nope'; use one of GetSegmentTask, StartSegment, "
        "StopSegment"
    )
    with pytest.raises(TypeError) as wrong:
        make({"StartSegment": 60})
    assert str(wrong.value) == "action_limiters['StartSegment'] must be a RateLimiter"


# -- one quota per account per process ---------------------------------------------------------


@pytest.mark.usefixtures("fresh_shared_limiters")
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


@pytest.mark.usefixtures("fresh_shared_limiters")
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
    from rtc_segment import Credentials, HostRateLimiter, SegmentClient, _limiting
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
    # What the operator reads: why, what it costs, and the two ways out.
    with pytest.raises(OSError, match="cannot create") as refused:
        HostRateLimiter("probe", 60)
    assert str(blocker) in str(refused.value)
    assert warnings[0].getMessage() == (
        "rtc_segment: cannot share the rate limit with the other processes on this host "
        f"({refused.value}); pacing each process on its own, so N processes of one account "
        "can together exceed its ceiling N times over. Set RTC_SEGMENT_LIMITER_DIR to a "
        "private, writable directory, or give the clients a RedisRateLimiter."
    )
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
