"""Tests for rtc_segment._pacing: the jitter margin the limiter keeps below the ceiling,
and the send log that enforces it."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable

import pytest

from rtc_segment._pacing import (
    MAX_MARGIN,
    MIN_MARGIN,
    STARTING_MARGIN,
    JitterMargin,
    SendLog,
    paced_rate,
)
from rtc_segment.testing import max_in_window


def test_the_margin_starts_at_the_old_fixed_one_until_enough_samples() -> None:
    margin = JitterMargin()
    assert margin.margin(0.0) == STARTING_MARGIN
    for _ in range(15):
        assert not margin.record(0.05)
    assert margin.spread is None
    assert margin.record(0.05)  # the 16th sample updates the estimate
    assert margin.spread == 0.0
    assert margin.margin(0.0) == MIN_MARGIN  # never below the timer-lateness floor


def test_the_spread_skips_one_outlier_at_each_end() -> None:
    margin = JitterMargin()
    samples = [0.05 + 0.01 * (i % 3) for i in range(30)] + [5.0, 0.0]
    for sample in samples:
        margin.record(sample)
    # The inner range (20 ms), scaled up to the range 32 samples are drawn from.
    assert margin.spread == pytest.approx(0.02 * 33 / 29)


@pytest.mark.parametrize("count", [16, 48, 128])
def test_the_spread_estimates_the_whole_range_of_a_uniform_path(count: int) -> None:
    # The forward delay of a jittery path spreads uniformly over 0..J: the estimate must
    # not fall short of J on average, however few samples are known.
    rng = random.Random(count)
    estimates, inner_ranges = [], []
    for _ in range(400):
        margin = JitterMargin()
        samples = [0.05 + rng.uniform(0.0, 0.02) for _ in range(count)]
        for sample in samples:
            margin.record(sample)
        assert margin.spread is not None
        estimates.append(margin.spread)
        ordered = sorted(samples)
        inner_ranges.append(ordered[-2] - ordered[1])
    assert statistics.mean(estimates) == pytest.approx(0.02, rel=0.02)
    assert statistics.mean(inner_ranges) < 0.98 * 0.02  # what the scaling makes up for


def test_bad_samples_are_ignored() -> None:
    margin = JitterMargin()
    for bad in (math.nan, math.inf, -1.0):
        assert not margin.record(bad)
    assert margin.spread is None


def test_throttles_double_the_widening_once_per_second_and_it_halves_every_30_s() -> None:
    margin = JitterMargin()
    for _ in range(16):
        margin.record(0.05)
    margin.throttled(10.0)
    assert margin.margin(10.0) == pytest.approx(MIN_MARGIN + 0.005)
    margin.throttled(10.5)  # the same event
    assert margin.margin(10.5) == pytest.approx(MIN_MARGIN + 0.005, rel=0.02)
    margin.throttled(11.0)
    assert margin.margin(11.0) == pytest.approx(MIN_MARGIN + 0.01, rel=0.03)
    assert margin.margin(41.0) == pytest.approx(MIN_MARGIN + 0.005, rel=0.03)
    for second in range(100):
        margin.throttled(100.0 + second)
    assert margin.margin(200.0) <= MAX_MARGIN


def test_the_paced_rate_keeps_any_second_of_arrivals_under_the_ceiling() -> None:
    qps = 60.0
    for jitter in (0.0, 0.005, 0.02, 0.1):
        rate = paced_rate(qps, jitter)
        # Sends exactly 1 / rate apart: at most floor(1 + (1 + jitter) * rate) in any
        # closed (1 + jitter) s window, so at most qps in a half-open one.
        assert math.floor(1 + (1 + jitter) * rate) <= qps
        assert rate > 0.99 * qps / (1 + jitter)


def fixed(window: float) -> Callable[[float | None], float]:
    """The same window for every send, answered or not."""
    return lambda _round_trip: window


def test_the_send_log_allows_the_limit_per_window_and_then_waits_for_the_oldest() -> None:
    log = SendLog(3, horizon=2.0)
    for at in (0.0, 0.1, 0.2):
        assert log.wait(at, fixed(1.0)) == 0.0
        log.record(at)
    assert log.wait(0.3, fixed(1.0)) == pytest.approx(0.7)  # until the oldest leaves the window
    assert log.wait(0.3, fixed(1.5)) == pytest.approx(1.2)  # the window is given at each check
    assert log.wait(1.0, fixed(1.0)) == 0.0
    log.record(1.0)
    assert log.wait(1.0, fixed(1.0)) == pytest.approx(0.1)
    assert len(log) == 3


def test_the_send_log_keeps_times_ordered() -> None:
    # A send counted later than it happened (the first after a pause) pushes the next
    # ones no earlier than it, so checking the limit-th previous send stays enough.
    log = SendLog(2, horizon=2.0)
    log.record(1.0)
    log.record(0.5)
    assert log.wait(1.5, fixed(1.0)) == pytest.approx(0.5)
    log.record(1.6)
    assert log.wait(1.7, fixed(1.0)) == pytest.approx(0.3)  # the moved one counts at 1.0


def test_a_send_log_never_lets_a_window_hold_more_than_its_limit() -> None:
    rng = random.Random(7)
    log, times, now = SendLog(10, horizon=1.0), [], 0.0
    for _ in range(500):
        now += rng.choice([0.0, 0.0, 0.01, 0.05, 0.3])  # bursts, steady sends, pauses
        now += log.wait(now, fixed(1.0))
        log.record(now)
        times.append(now)
    assert max_in_window(times, seconds=1.0) <= 10


def test_a_wait_within_a_microsecond_counts_as_none() -> None:
    # Timers fire within the clock's resolution; a sliver left must not mean another sleep.
    log = SendLog(1, horizon=1.0)
    log.record(0.0)
    assert log.wait(1.0 - 5e-7, fixed(1.0)) == 0.0
    assert log.wait(1.0 - 5e-6, fixed(1.0)) == pytest.approx(5e-6)


def test_a_send_log_needs_room_for_one_send() -> None:
    with pytest.raises(ValueError, match="limit"):
        SendLog(0, horizon=1.0)


def test_a_send_log_forgets_sends_older_than_its_horizon() -> None:
    log = SendLog(1000, horizon=1.55)
    for i in range(100):
        log.record(i * 0.1)
    assert len(log) == 16  # the last 1.55 s: a huge limit holds no huge record
    assert log.wait(9.9, fixed(1.55)) == 0.0  # fewer than the limit in any window: no wait


def test_a_send_log_forgets_by_when_the_newest_send_left_not_when_it_counts() -> None:
    # A first send after a pause counts one interval later than it leaves. What the log
    # forgets then must have no window left at the time it left: the send at 0.0 still
    # makes a send at 1.49 wait for its 1.5 s window.
    log = SendLog(2, horizon=1.5)
    log.record(0.0)
    log.record(1.52, sent=1.49)
    assert len(log) == 2
    assert log.wait(1.49, fixed(1.5)) == pytest.approx(0.01)


def test_each_send_gets_the_window_its_own_round_trip_asks_for() -> None:
    log = SendLog(2, horizon=2.0)
    log.record(0.0)
    log.record(0.5)
    windows: list[float | None] = []

    def window(round_trip: float | None) -> float:
        windows.append(round_trip)
        return 1.0 if round_trip is None else 1.0 + round_trip

    assert log.wait(0.6, window) == pytest.approx(0.4)
    assert log.answered(0.0 + 0.001, 0.05)  # the answer to the send that left at 0.0
    assert log.wait(0.6, window) == pytest.approx(0.45)
    assert windows == [None, 0.05]


def test_an_answer_goes_to_the_latest_unanswered_send_that_had_left() -> None:
    log = SendLog(4, horizon=10.0)
    for at in (0.0, 1.0, 1.0, 2.0):
        log.record(at)
    assert log.answered(1.0, 0.3)  # one of the two sends at 1.0 ...
    assert log.answered(1.0, 0.4)  # ... then the other
    assert log.answered(0.5, 0.2)  # the one at 0.0
    assert not log.answered(0.5, 0.2)  # nothing unanswered left by then
    assert not log.answered(-1.0, 0.2)  # before anything recorded here
    log.record(3.0)  # forgets the send at 0.0 (the limit is 4)
    asked: list[float | None] = []

    def window(round_trip: float | None) -> float:
        asked.append(round_trip)
        return 1.0

    log.wait(3.5, window)
    assert asked == [0.4]  # the oldest now: the second send at 1.0, answered 0.4


def test_a_send_counted_late_keeps_when_it_left() -> None:
    # The first send after a pause counts one interval late, but its answer is matched by
    # when it actually left.
    log = SendLog(1, horizon=10.0)
    assert log.last_sent == float("-inf")
    log.record(1.1, sent=1.0)
    assert log.last_sent == 1.0
    assert log.answered(1.0, 0.05)
    assert log.wait(1.5, lambda rt: 1.0 + (rt or 0.0)) == pytest.approx(1.1 + 1.05 - 1.5)


def test_a_request_s_margin_is_its_round_trip_above_the_fastest() -> None:
    margin = JitterMargin()
    for i in range(32):
        margin.record(0.05 + 0.001 * (i % 4))  # 50-53 ms
    # How much later than the fastest this one can have arrived, plus MIN_MARGIN for what
    # the fastest round trip does not tell.
    assert margin.margin_for(0.07, 0.0) == pytest.approx(0.02 + MIN_MARGIN)
    assert margin.margin_for(0.04, 0.0) == pytest.approx(MIN_MARGIN)  # faster than seen
    assert margin.margin_for(None, 0.0) == margin.margin(0.0)  # not answered: the spread
    # The pace allows for the typical request: the mean above the fastest (1.5 ms).
    assert margin.pace(0.0) == pytest.approx(0.0015 + MIN_MARGIN)
    margin.throttled(0.0)  # a throttle widens all three
    assert margin.margin_for(0.07, 0.0) == pytest.approx(0.02 + MIN_MARGIN + 0.005)
    assert margin.pace(0.0) == pytest.approx(0.0015 + MIN_MARGIN + 0.005)


def test_before_enough_samples_every_margin_is_the_starting_one() -> None:
    margin = JitterMargin()
    margin.record(0.05)
    assert margin.margin_for(0.3, 0.0) == STARTING_MARGIN
    assert margin.pace(0.0) == STARTING_MARGIN


# --- what mutation testing found untested (docs/testing.md#mutation-testing) -------------


def test_the_floor_is_the_single_fastest_round_trip() -> None:
    margin = JitterMargin()
    margin.record(0.010)  # one fast answer among slow ones: it sets the floor
    for _ in range(15):
        margin.record(0.020)
    assert margin.margin_for(0.030, 0.0) == pytest.approx(0.030 - 0.010 + MIN_MARGIN)
    # the pace: the mean above the fastest (15/16 of 10 ms)
    assert margin.pace(0.0) == pytest.approx(0.010 * 15 / 16 + MIN_MARGIN)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.001])
def test_a_bad_round_trip_neither_counts_nor_moves_the_estimate(bad: float) -> None:
    margin = JitterMargin()
    for _ in range(15):
        margin.record(0.05)
    assert not margin.record(bad)  # not the 16th sample
    assert margin.spread is None
    assert margin.record(0.05)  # this one is
    assert margin.spread == 0.0
    assert margin.margin_for(0.05, 0.0) == pytest.approx(MIN_MARGIN)  # floor still 50 ms
    assert margin.pace(0.0) == pytest.approx(MIN_MARGIN)


def test_zero_is_a_valid_round_trip() -> None:
    margin = JitterMargin()
    for _ in range(15):
        margin.record(0.05)
    assert margin.record(0.0)  # the 16th: counted
    assert margin.margin_for(0.05, 0.0) == pytest.approx(0.05 + MIN_MARGIN)


def test_a_throttle_before_enough_samples_widens_the_starting_margin() -> None:
    margin = JitterMargin()
    margin.record(0.05)
    margin.throttled(5.0)
    widened = STARTING_MARGIN + 0.005
    assert margin.margin(5.0) == pytest.approx(widened)
    assert margin.margin_for(0.3, 5.0) == pytest.approx(widened)
    assert margin.margin_for(None, 5.0) == pytest.approx(widened)
    assert margin.pace(5.0) == pytest.approx(widened)
    margin.throttled(5.999)  # the same crowded second: no further widening
    assert margin.margin(5.999) == pytest.approx(widened, rel=2e-2)
    margin.throttled(6.0)  # a second event a second later: the widening doubles
    assert margin.margin(6.0) == pytest.approx(STARTING_MARGIN + 0.01, rel=2e-2)
    # and halves every 30 s without another
    assert margin.margin(36.0) == pytest.approx(STARTING_MARGIN + 0.005, rel=1e-2)
    assert margin.margin(66.0) == pytest.approx(STARTING_MARGIN + 0.0025, rel=1e-2)


def test_a_throttle_long_after_the_last_starts_from_the_relaxed_widening() -> None:
    margin = JitterMargin()
    margin.throttled(0.0)
    margin.throttled(300.0)  # ten half-lives later: almost nothing left, so about one step
    assert margin.margin(300.0) == pytest.approx(STARTING_MARGIN + 0.005, rel=1e-2)


def test_the_widening_never_takes_a_margin_past_the_most() -> None:
    margin = JitterMargin()
    for second in range(20):
        margin.throttled(float(second))
    assert margin.margin(19.0) == MAX_MARGIN
    assert margin.pace(19.0) == MAX_MARGIN
    assert margin.margin_for(10.0, 19.0) == MAX_MARGIN


def test_the_estimate_is_recomputed_every_16_samples() -> None:
    margin = JitterMargin()
    for _ in range(16):
        margin.record(0.05)
    assert margin.spread == 0.0
    for _ in range(15):
        assert not margin.record(0.09)  # pending: the estimate stays
    assert margin.spread == 0.0
    assert margin.record(0.09)
    assert margin.spread is not None and margin.spread > 0.0


def test_a_send_leaving_within_a_microsecond_after_counts_as_left_by_then() -> None:
    log = SendLog(limit=2, horizon=10.0)
    log.record(1e-6)  # left a microsecond after the answer's send time: the same send
    assert log.answered(0.0, 0.05)
    assert not log.answered(0.0, 0.05)  # and it has its round trip now


def test_a_send_exactly_the_horizon_old_is_forgotten() -> None:
    log = SendLog(limit=3, horizon=1.0)
    log.record(0.0)
    log.record(1.0)
    assert len(log) == 1
    log.record(1.5)
    assert len(log) == 2


def test_a_wait_of_exactly_a_microsecond_counts_as_none() -> None:
    log = SendLog(limit=1, horizon=10.0)
    log.record(0.0)
    assert log.wait(0.0, fixed(1e-6)) == 0.0
    assert log.wait(0.0, fixed(2e-6)) == 2e-6
