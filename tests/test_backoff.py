"""Tests for rtc_segment._backoff: the rate that backs off when someone else uses the quota.

:class:`ThrottleBackoff` takes its clock as an argument, so most tests step it by hand;
the last ones drive a :class:`LocalRateLimiter` through it in virtual time (looptime).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from rtc_segment._backoff import (
    FLOOR_SHARE,
    KEEP,
    OWN_SHARE,
    PLATEAU,
    SETTLE,
    STRAY_WINDOW,
    SendCounter,
    ThrottleBackoff,
    ThrottleCause,
)
from rtc_segment._limiting import LocalRateLimiter
from rtc_segment.testing import max_in_window

QPS = 60.0
FULL_PACE = 59  # sends in the last second while pacing at the ceiling


def curve(
    backoff: ThrottleBackoff, start: float, seconds: float, step: float = 0.01
) -> list[float]:
    """The backoff's rate every ``step`` s from ``start``; the ceiling once it disengages."""
    rates = []
    for i in range(round(seconds / step) + 1):
        rate = backoff.rate(start + i * step)
        rates.append(QPS if rate is None else rate)
    return rates


def test_a_lone_throttle_at_full_pace_is_left_to_the_margin() -> None:
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(10.0, FULL_PACE) is ThrottleCause.OWN_PACING
    assert backoff.rate(10.0) is None
    assert not backoff.engaged(10.0)


def test_a_throttle_well_below_the_ceiling_cuts_at_once() -> None:
    # 30 sends in the last second cannot overfill a window on their own: someone else
    # uses the quota, and our share of the over-full window was at most 30.
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(10.0, 30) is ThrottleCause.SHARED_QUOTA
    assert backoff.rate(10.0) == pytest.approx(KEEP * 30)
    assert backoff.throttled_rate == 30


@pytest.mark.parametrize("sent_below", [OWN_SHARE * QPS - 1, 0])
def test_the_threshold_of_own_pacing(sent_below: float) -> None:
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(1.0, int(sent_below)) is ThrottleCause.SHARED_QUOTA
    # Never below the floor, whatever was sent (here possibly nothing).
    assert backoff.rate(1.0) is not None
    assert backoff.rate(1.0) >= FLOOR_SHARE * QPS  # type: ignore[operator]
    assert ThrottleBackoff(QPS).on_throttle(1.0, 40) is ThrottleCause.OWN_PACING


def test_a_throttle_that_persists_past_the_widened_margin_cuts() -> None:
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(10.0, FULL_PACE, sent=9.98) is ThrottleCause.OWN_PACING
    # The same crowded second: sent before the first throttle came back.
    assert backoff.on_throttle(10.01, FULL_PACE, sent=9.99) is ThrottleCause.SAME_EPISODE
    assert backoff.rate(10.01) is None
    # Sent after it, with the widened margin, and throttled again: not our pacing.
    assert backoff.on_throttle(10.05, FULL_PACE, sent=10.02) is ThrottleCause.SHARED_QUOTA
    assert backoff.rate(10.05) == pytest.approx(KEEP * FULL_PACE)


def test_without_send_times_a_throttle_a_second_later_persists() -> None:
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(10.0, FULL_PACE) is ThrottleCause.OWN_PACING
    assert backoff.on_throttle(10.5, FULL_PACE) is ThrottleCause.SAME_EPISODE
    assert backoff.on_throttle(11.2, FULL_PACE) is ThrottleCause.SHARED_QUOTA


def test_stray_throttles_far_apart_stay_strays() -> None:
    backoff = ThrottleBackoff(QPS)
    for second in range(5):
        now = 10.0 + second * (STRAY_WINDOW + 0.1)
        assert backoff.on_throttle(now, FULL_PACE, sent=now - 0.02) is ThrottleCause.OWN_PACING
    assert backoff.rate(100.0) is None


def test_echoes_of_one_overshoot_cut_once_and_a_later_throttle_cuts_deeper() -> None:
    backoff = ThrottleBackoff(QPS)
    assert backoff.on_throttle(5.0, 30, sent=4.98) is ThrottleCause.SHARED_QUOTA
    first = backoff.rate(5.0)
    assert first == pytest.approx(24.0)
    # Requests sent before the cut, or while the window still held the old rate.
    for sent in (4.99, 5.0, 5.0 + SETTLE - 0.01):
        assert backoff.on_throttle(sent + 0.02, 30, sent=sent) is ThrottleCause.SAME_EPISODE
    once = ThrottleBackoff(QPS)
    once.on_throttle(5.0, 30)
    assert backoff.rate(5.0 + SETTLE + 0.01) == once.rate(5.0 + SETTLE + 0.01)
    # Sent at the lowered rate and still throttled: cut again, from the rate allowed (our
    # count of the last second still holds the old rate's sends).
    now = 5.0 + SETTLE + 0.03
    allowed = backoff.rate(now)
    assert allowed is not None
    assert backoff.on_throttle(now, 30, sent=now - 0.02) is ThrottleCause.SHARED_QUOTA
    assert backoff.rate(now) == pytest.approx(KEEP * allowed)
    assert backoff.throttled_rate == pytest.approx(allowed)


def test_without_send_times_echoes_are_the_next_second() -> None:
    backoff = ThrottleBackoff(QPS)
    backoff.on_throttle(5.0, 30)
    assert backoff.on_throttle(5.9, 30) is ThrottleCause.SAME_EPISODE
    assert backoff.on_throttle(6.05, 30) is ThrottleCause.SHARED_QUOTA


@pytest.mark.parametrize("throttled_at", [59, 30, 15, 3])
def test_the_rate_levels_off_below_the_throttled_rate_then_probes_up_to_the_ceiling(
    throttled_at: int,
) -> None:
    backoff = ThrottleBackoff(QPS)
    if throttled_at >= OWN_SHARE * QPS:
        # At full pace the first throttle is a stray one; the second (sent after) cuts.
        assert backoff.on_throttle(-0.1, throttled_at) is ThrottleCause.OWN_PACING
    assert backoff.on_throttle(0.0, throttled_at, sent=-0.05) is ThrottleCause.SHARED_QUOTA
    rates = curve(backoff, 0.0, 60.0)
    assert rates[0] == pytest.approx(KEEP * throttled_at)
    # It only climbs, never past the ceiling, and disengages once back there.
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert max(rates) <= QPS
    assert backoff.rate(60.0) is None
    # A plateau: the rate dwells just below the rate that was throttled for a while.
    near = [r for r in rates if PLATEAU * throttled_at - 0.5 <= r < throttled_at]
    assert len(near) * 0.01 >= 1.0
    # ...and is not above the throttled rate for at least 1.5 s after the cut (longer
    # for higher rates: the curve's steepness is a share of the ceiling, not of the rate).
    assert all(r <= throttled_at for r in rates[:150])


def test_recovery_from_a_stray_cut_at_the_ceiling_is_quick_and_cheap() -> None:
    # The worst wrongly attributed throttle: a cut while we had the whole ceiling.
    backoff = ThrottleBackoff(QPS)
    backoff.on_throttle(0.0, FULL_PACE, sent=-0.02)
    backoff.on_throttle(0.1, FULL_PACE, sent=0.05)
    assert backoff.engaged(0.1)
    rates = curve(backoff, 0.1, 20.0)
    back = next(i for i, rate in enumerate(rates) if rate >= FULL_PACE) * 0.01
    lost = sum(FULL_PACE - min(rate, FULL_PACE) for rate in rates) * 0.01
    assert back <= 6.0
    # Requests not sent that could have been: about half a second's worth (0.54 s).
    assert lost <= 0.6 * FULL_PACE


def test_uncoordinated_consumers_converge_on_the_ceiling_together() -> None:
    # Two backoffs sharing a 60/s window that charges both: each cut when their sum is
    # over, as throttles would tell them. They end near the ceiling, in near-equal shares.
    one, two = ThrottleBackoff(QPS), ThrottleBackoff(QPS)
    one.on_throttle(0.0, 50)  # one had most of the quota, two little
    two.on_throttle(0.0, 10)
    shares: list[tuple[float, float]] = []
    step = 0.05
    for i in range(1, 2400):  # 120 s
        now = i * step
        rates = [b.rate(now) or QPS for b in (one, two)]
        if sum(rates) > QPS:
            for backoff, rate in zip((one, two), rates, strict=True):
                backoff.on_throttle(now, round(rate), sent=now - 0.02)
        shares.append((rates[0], rates[1]))
    late = shares[len(shares) // 2 :]
    totals = [a + b for a, b in late]
    assert sum(totals) / len(totals) >= 0.8 * QPS
    gap = sum(abs(a - b) for a, b in late) / len(late)
    assert gap <= 0.15 * QPS


def test_a_bad_ceiling_is_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ceiling"):
            ThrottleBackoff(bad)
    assert ThrottleBackoff(5).ceiling == 5.0
    assert "ceiling=60" in repr(ThrottleBackoff(60))


def test_the_send_counter_counts_a_sliding_second() -> None:
    counter = SendCounter()
    for i in range(30):
        counter.record(i / 30)
    assert counter.count(29 / 30) == 30
    assert counter.count(1.0) == 29  # the send at 0.0 is a second old
    assert counter.count(2.5) == 0


# -- through LocalRateLimiter, in virtual time ---------------------------------------


async def pace(limiter: LocalRateLimiter, seconds: float) -> list[float]:
    """Acquire back to back for ``seconds``; the send times."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    times = []
    while loop.time() < end:
        await limiter.acquire()
        times.append(loop.time())
    return times


@pytest.mark.looptime
async def test_the_limiter_backs_off_on_persisting_throttles_and_climbs_back() -> None:
    limiter = LocalRateLimiter(QPS)
    full = limiter.rate
    await pace(limiter, 2.0)
    # A stray throttle at full pace: the margin widens, the rate barely moves.
    limiter.observe_round_trip(0.02)
    limiter.observe_throttle()
    widened = limiter.margin
    stray_rate = limiter.rate
    assert stray_rate > 0.98 * full
    await pace(limiter, 1.2)  # past the margin's own one-second grouping of throttles
    # Another, of a request sent after that: someone else uses the quota.
    limiter.observe_round_trip(0.02)
    limiter.observe_throttle()
    assert limiter.rate == pytest.approx(KEEP * 59, rel=0.05)
    assert limiter.margin is not None and widened is not None
    assert limiter.margin <= widened  # not our margin's fault: not widened again
    times = await pace(limiter, 0.5)
    assert len(times) <= 0.9 * 59 / 2
    # It climbs back to the pace the margin allows, and no higher, within seconds.
    times = await pace(limiter, 8.0)
    assert limiter.rate == pytest.approx(stray_rate, rel=0.02)
    assert max_in_window(times) <= QPS


@pytest.mark.looptime
async def test_a_fixed_utilization_does_not_back_off() -> None:
    limiter = LocalRateLimiter(QPS, utilization=0.9)
    await pace(limiter, 1.0)
    for _ in range(3):
        limiter.observe_throttle()
        await asyncio.sleep(1.5)
    assert limiter.rate == pytest.approx(54.0)


def test_the_send_counter_says_when_one_more_send_keeps_a_rate_in_every_second() -> None:
    counter = SendCounter()
    for i in range(30):
        counter.record(i / 60)  # 30 sends in half a second
    assert counter.wait(0.5, 40.0) == 0.0
    # At most 24 in any second, this one included: the 7th send (at 6/60 s) must be a
    # second old.
    assert counter.wait(0.5, 24.6) == pytest.approx(6 / 60 + 1.0 - 0.5)
    assert counter.wait(2.0, 24.0) == 0.0


@pytest.mark.looptime
async def test_after_a_cut_no_second_of_our_sends_holds_more_than_the_lowered_rate() -> None:
    # Half a second at full pace, then a throttle: 30 sends in the last second, well below
    # the ceiling, so someone else uses the quota and the rate drops to 24. The server's
    # window still holds those 30: the next sends wait until they fit beside them.
    limiter = LocalRateLimiter(QPS)
    times = await pace(limiter, 0.5)
    limiter.observe_throttle()
    cut_at = asyncio.get_running_loop().time()
    times += await pace(limiter, 2.0)
    before = len(times) - len([t for t in times if t > cut_at])
    after = [t for t in times if cut_at < t <= cut_at + 1.5]
    assert after and after[0] - cut_at >= 0.3
    for t in after:
        # The lowered rate, climbing towards its plateau below the throttled one.
        assert sum(1 for s in times if t - 1.0 < s <= t) <= PLATEAU * before
