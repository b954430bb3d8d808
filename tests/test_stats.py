"""Tests for rtc_segment._stats: when throttled answers persist (the operator's warning)."""

from __future__ import annotations

from rtc_segment._stats import ClientStats, ThrottleEpisodes


def test_a_stray_throttle_is_no_episode() -> None:
    episodes = ThrottleEpisodes()
    # One every 6 s: never three within 10 s.
    assert not any(episodes.throttled(second * 6.0) for second in range(20))


def test_persisting_throttles_are_told_once_per_episode() -> None:
    episodes = ThrottleEpisodes()
    told = [episodes.throttled(t) for t in (0.0, 0.5, 1.0, 1.5, 2.0, 30.0, 80.0)]
    assert told == [False, False, True, False, False, False, False]
    # A minute without any ends the episode: the next persisting throttles are told again.
    told = [episodes.throttled(t) for t in (141.0, 141.5, 142.0)]
    assert told == [False, False, True]


def test_the_limiter_rate_is_unknown_by_default() -> None:
    assert ClientStats().limiter_rate is None
