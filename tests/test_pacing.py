"""Tests for rtc_segment._pacing: the jitter margin the limiter keeps below the ceiling,
and the send log that enforces it."""

from __future__ import annotations

import math
import random
import statistics

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
    qps, slack = 60.0, 0.1
    for jitter in (0.0, 0.005, 0.02, 0.1):
        rate = paced_rate(qps, slack, jitter)
        # Sends in any (1 + jitter) s window: at most floor(1 + slack + (1 + jitter) * rate).
        assert math.floor(1 + slack + (1 + jitter) * rate) <= qps
        assert rate > 0.99 * (qps - slack) / (1 + jitter)


def test_the_send_log_allows_the_limit_per_window_and_then_waits_for_the_oldest() -> None:
    log = SendLog(3, horizon=2.0)
    for at in (0.0, 0.1, 0.2):
        assert log.wait(at, 1.0) == 0.0
        log.record(at)
    assert log.wait(0.3, 1.0) == pytest.approx(0.7)  # until the oldest leaves the window
    assert log.wait(0.3, 1.5) == pytest.approx(1.2)  # the window is given at each check
    assert log.wait(1.0, 1.0) == 0.0
    log.record(1.0)
    assert log.wait(1.0, 1.0) == pytest.approx(0.1)
    assert len(log) == 3


def test_the_send_log_keeps_times_ordered() -> None:
    # A send counted later than it happened (the first after a pause) pushes the next
    # ones no earlier than it, so checking the limit-th previous send stays enough.
    log = SendLog(2, horizon=2.0)
    log.record(1.0)
    log.record(0.5)
    assert log.wait(1.5, 1.0) == pytest.approx(0.5)


def test_a_send_log_never_lets_a_window_hold_more_than_its_limit() -> None:
    rng = random.Random(7)
    log, times, now = SendLog(10, horizon=1.0), [], 0.0
    for _ in range(500):
        now += rng.choice([0.0, 0.0, 0.01, 0.05, 0.3])  # bursts, steady sends, pauses
        now += log.wait(now, 1.0)
        log.record(now)
        times.append(now)
    assert max_in_window(times, seconds=1.0) <= 10


def test_a_wait_within_a_microsecond_counts_as_none() -> None:
    # Timers fire within the clock's resolution; a sliver left must not mean another sleep.
    log = SendLog(1, horizon=1.0)
    log.record(0.0)
    assert log.wait(1.0 - 5e-7, 1.0) == 0.0
    assert log.wait(1.0 - 5e-6, 1.0) == pytest.approx(5e-6)


def test_a_send_log_needs_room_for_one_send() -> None:
    with pytest.raises(ValueError, match="limit"):
        SendLog(0, horizon=1.0)


def test_a_send_log_forgets_sends_older_than_its_horizon() -> None:
    log = SendLog(1000, horizon=1.55)
    for i in range(100):
        log.record(i * 0.1)
    assert len(log) == 16  # the last 1.55 s: a huge limit holds no huge record
    assert log.wait(9.9, 1.55) == 0.0  # fewer than the limit in any window: no wait
