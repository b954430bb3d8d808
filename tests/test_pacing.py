"""Tests for rtc_segment._pacing: the jitter margin the limiter keeps below the ceiling."""

from __future__ import annotations

import math

import pytest

from rtc_segment._pacing import (
    MAX_MARGIN,
    MIN_MARGIN,
    STARTING_MARGIN,
    JitterMargin,
    paced_rate,
)


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
    assert margin.spread == pytest.approx(0.02)


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
