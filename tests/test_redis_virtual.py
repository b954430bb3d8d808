"""RedisRateLimiter's own logic in virtual time, against a Redis simulated in this process.

``tests/test_redis.py`` runs the limiter against a real redis-server, in real time; these
run it against ``tests/_redis_fake.py`` (plain GCRA on the loop's clock, ``skew`` ahead)
under looptime, in milliseconds: when each send goes for the slot it was handed, what each
reservation tells Redis (its settings, the reports of earlier sends, the newest slot
seen), how the script is loaded and called, what a lost answer, a hung or a stopped Redis
do, the fallback, the backoff, the settings' checks and the key. They are the tests that
the mutation run (``tests/mutation/run_mutation.py``) uses for ``_redis``.

The limiter reads ``time.monotonic`` (retry times, the margin's clock) and
``time.perf_counter`` (the stats): here both read the loop's clock, so that the outage
logic runs in virtual time too.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import re
from typing import Any

import pytest
import redis as redis_py
from _redis_fake import REFUSED, CommandNamePool, FakeCluster, FakePool, FakeRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from rtc_segment import _redis
from rtc_segment._backoff import KEEP, PLATEAU
from rtc_segment._credentials import Credentials
from rtc_segment._errors import RateLimiterUnavailableError
from rtc_segment._pacing import JitterMargin, paced_rate
from rtc_segment._redis import RedisRateLimiter
from rtc_segment.testing import max_in_window

LATENCY = 0.004  # the fake's round trip; the script runs half way
#: A tolerance for times and microsecond values computed from clocks ~1000 s apart.
US = 2e-6


class LoopClock:
    """``_redis``'s view of the ``time`` module: the running loop's (virtual) clock."""

    @staticmethod
    def monotonic() -> float:
        return asyncio.get_running_loop().time()

    perf_counter = monotonic


@pytest.fixture(autouse=True)
def loop_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redis, "time", LoopClock)


def limiter_on(
    server: FakeRedis, *, pool: FakePool | None = None, **settings: Any
) -> tuple[RedisRateLimiter, FakePool]:
    pool = FakePool(server) if pool is None else pool
    limiter = RedisRateLimiter(Redis(connection_pool=pool), **{"key": "k", **settings})
    return limiter, pool


def now() -> float:
    return asyncio.get_running_loop().time()


async def timed_acquire(limiter: RedisRateLimiter) -> float:
    await limiter.acquire()
    return now()


def close_to(value: float, expected: float, tolerance: float = US) -> bool:
    return abs(value - expected) <= tolerance


# --- settings, repr, the key ---------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"key": ""}, ValueError, "key must be a non-empty string"),
        ({"key": 5}, ValueError, "key must be a non-empty string"),
        ({"qps": 0}, ValueError, "qps must be a positive number, got 0"),
        ({"qps": "60"}, TypeError, "qps must be a number, not str"),
        ({"redis_timeout": 0}, ValueError, "redis_timeout must be a positive number, got 0"),
        ({"retry_interval": 0}, ValueError, "retry_interval must be a positive number, got 0"),
        ({"utilization": "0.5"}, TypeError, "utilization must be a number, not str"),
        ({"utilization": 0}, ValueError, "utilization must be in (0, 1), got 0"),
        ({"utilization": 1.0}, ValueError, "utilization must be in (0, 1), got 1.0"),
        ({"max_pending": 0}, ValueError, "max_pending must be >= 1, got 0"),
        ({"max_pending": 2.0}, ValueError, "max_pending must be an int, not float"),
        ({"wait_for_redis": -1}, ValueError, "wait_for_redis must be at least 0, got -1"),
        ({"wait_for_redis": "1"}, TypeError, "wait_for_redis must be a number, not str"),
        (
            {"fallback_fraction": 0},
            ValueError,
            "fallback_fraction must be a positive number, got 0",
        ),
        ({"fallback_fraction": 1.5}, ValueError, "fallback_fraction must be in (0, 1], got 1.5"),
        ({"fallback_fraction": "x"}, TypeError, "fallback_fraction must be a number, not str"),
    ],
)
def test_each_invalid_setting_is_refused_with_a_message_naming_it(
    settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        limiter_on(FakeRedis(), **settings)


def test_the_edges_of_each_setting_are_accepted_and_shown_by_repr() -> None:
    limiter, _ = limiter_on(
        FakeRedis(), qps=50, utilization=0.5, max_pending=1, fallback_fraction=1.0, wait_for_redis=0
    )
    assert repr(limiter) == (
        "RedisRateLimiter(key='k', qps=50.0, utilization=0.5, max_pending=1, fallback_fraction=1.0)"
    )
    default, _ = limiter_on(FakeRedis(), qps=60)
    assert repr(default) == (
        "RedisRateLimiter(key='k', qps=60.0, utilization=None, max_pending=8, "
        "fallback_fraction=None)"
    )


@pytest.mark.parametrize(("pool_size", "max_pending"), [(1, 1), (3, 3), (8, 8), (9, 8), (0, 8)])
def test_max_pending_is_capped_at_the_connection_pool_size(
    pool_size: int, max_pending: int
) -> None:
    pool = FakePool(FakeRedis())
    pool.max_connections = pool_size  # 0: a pool that states no limit
    limiter, _ = limiter_on(FakeRedis(), pool=pool, max_pending=8)
    assert f"max_pending={max_pending}," in repr(limiter)


def test_the_rate_can_be_read_outside_an_event_loop() -> None:
    limiter, _ = limiter_on(FakeRedis(), qps=60)
    assert limiter.rate == pytest.approx(60 / 1.008 * (1 - 1e-6), rel=1e-12)
    fixed, _ = limiter_on(FakeRedis(), qps=60, utilization=0.5)
    assert fixed.rate == 30.0


def fingerprint(access_key_id: str) -> str:
    return hashlib.sha256(access_key_id.encode()).hexdigest()[:16]


def test_key_for_names_the_account_by_a_fingerprint_and_the_action() -> None:
    class KeyIdOnly:
        access_key_id = "AKLTexampleaccesskeyid"

    class WithFingerprint:
        access_key_id = "AKLTexampleaccesskeyid"
        account_fingerprint = "0123456789abcdef"

    expected = fingerprint("AKLTexampleaccesskeyid")
    assert RedisRateLimiter.key_for(KeyIdOnly()) == (
        f"rtc_segment:ratelimit:{{{expected}}}:GetSegmentTask"
    )
    assert RedisRateLimiter.key_for(Credentials("AKLTexampleaccesskeyid", "s"), "StopSegment") == (
        f"rtc_segment:ratelimit:{{{expected}}}:StopSegment"
    )
    # An object that names its account itself is taken at its word.
    assert RedisRateLimiter.key_for(WithFingerprint()) == (
        "rtc_segment:ratelimit:{0123456789abcdef}:GetSegmentTask"
    )


@pytest.mark.parametrize(
    ("key", "derived"),
    [
        ("rtc_segment:ratelimit:{abc}:GetSegmentTask", "rtc_segment:ratelimit:{abc}:StartSegment"),
        ("team-a", "team-a:StartSegment"),
        ("team:a", "team:a:StartSegment"),
        ("rtc_segment:ratelimit:{abc}:", "rtc_segment:ratelimit:{abc}::StartSegment"),
    ],
)
def test_for_action_derives_the_other_actions_key(key: str, derived: str) -> None:
    limiter, _ = limiter_on(
        FakeRedis(), key=key, qps=60, utilization=0.9, max_pending=3, fallback_fraction=0.25
    )
    other = limiter.for_action("StartSegment", 150)
    assert repr(other) == (
        f"RedisRateLimiter(key={derived!r}, qps=150.0, utilization=0.9, max_pending=3, "
        "fallback_fraction=0.25)"
    )


@pytest.mark.looptime
async def test_for_action_keeps_the_timeouts_and_retry_settings() -> None:
    # A hung Redis: each try times out after redis_timeout, the next comes retry_interval
    # after a failure, and the caller gives up after wait_for_redis.
    server = FakeRedis(hung=True)
    limiter, _ = limiter_on(
        server, qps=60, redis_timeout=0.0625, retry_interval=0.15625, wait_for_redis=0.5
    )
    other = limiter.for_action("StopSegment", 30)
    started = now()
    with pytest.raises(RateLimiterUnavailableError, match=r"wait_for_redis=0\.5 s"):
        await other.acquire()
    assert close_to(now() - started, 0.5625)
    assert [round(t - started, 6) for t in server.attempts] == [0.0, 0.21875, 0.4375]
    assert other.stats.failures == 3


def test_helpers() -> None:
    assert _redis._whole_us(0.5) == 500_000
    assert _redis._whole_us(2.5e-7) == 1  # rounded up: a lateness is never understated
    assert _redis._interval_us(80.0) == 12_500
    assert _redis._interval_us(3.0) == 333_334  # rounded up: never a shorter spacing
    assert _redis._slot_and_now([5, 7]) == (5, 7)
    assert _redis._slot_and_now([b"5", b"7"]) == (5, 7)
    assert _redis._describe(TimeoutError()) == "timed out"
    assert _redis._describe(RedisConnectionError(" refused \n")) == "ConnectionError: refused"
    assert _redis._describe(RedisConnectionError()) == "ConnectionError"


def test_the_connection_checkout_names_a_command_only_where_one_is_required() -> None:
    class OptionalName(FakePool):
        async def get_connection(  # type: ignore[override]
            self, command_name: str | None = None, *keys: Any, **options: Any
        ) -> Any:
            return await super().get_connection(*keys, **options)

    server = FakeRedis()
    assert _redis._checkout_args(CommandNamePool(server)) == ("EVALSHA",)
    assert _redis._checkout_args(OptionalName(server)) == ()
    assert _redis._checkout_args(FakePool(server)) == ()


@pytest.mark.parametrize("client", [redis_py.Redis(), object(), None])
def test_a_client_without_a_connection_pool_is_refused_by_name(client: object) -> None:
    message = (
        "redis must be a redis.asyncio.Redis client (with a connection pool; "
        "Sentinel.master_for gives one) or a redis.asyncio.RedisCluster, "
        f"not {type(client).__module__}.{type(client).__qualname__}"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        RedisRateLimiter(client, key="k")  # type: ignore[arg-type]


# --- what each reservation sends, and when each send goes -------------------------------


@pytest.mark.looptime
async def test_each_send_goes_at_its_slot_and_is_reported_on_the_next_reservation() -> None:
    server = FakeRedis()
    # qps 100 at utilization 0.8: 80/s, slots 12.5 ms apart; the jitter allowed for a send
    # whose round trip is not known: (1 / 0.8 - 1) of a second's share, 250 ms.
    # (A pool of redis-py before 5.3, whose checkout requires a command name.)
    pool = CommandNamePool(server)
    limiter, _ = limiter_on(server, pool=pool, key="shared", qps=100, utilization=0.8)
    sends = [await timed_acquire(limiter) for _ in range(3)]
    first, second, third = server.reservations
    for reservation in server.reservations:
        assert reservation.key == "shared"
        assert (reservation.interval, reservation.limit, reservation.window) == (
            12_500,
            100,
            1_000_000,
        )
        assert reservation.unreported == 250_000
    assert second.slot - first.slot == third.slot - second.slot == 12_500
    # Each send goes when its slot comes, as bounded on this clock: half a round trip late
    # here (the script ran half way); never earlier.
    for went, reservation in zip(sends, server.reservations, strict=True):
        assert close_to(went, server.loop_time_of(reservation.slot) + LATENCY / 2)
    # The newest slot seen, and each send's report (its slot; how late it may have gone on
    # Redis's clock -- one round trip, by the bounds on the offset -- plus the jitter
    # allowed) ride on the next reservation.
    assert [r.seen for r in server.reservations] == [0, first.slot, second.slot]
    assert first.reports == []
    # (The first reservation took two round trips, NOSCRIPT then EVAL: a looser bound.)
    for reservation, before, bound in ((second, first, 8_000), (third, second, 4_000)):
        [(slot, late)] = reservation.reports
        assert slot == before.slot
        assert abs(late - (bound + 250_000)) <= 1
    assert pool.checkouts == [("EVALSHA",)] * 3


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # adaptive: the starting margin, 8 ms of a second, is the jitter assumed
        ({"qps": 60}, (math.ceil(1e6 / (60 / 1.008 * (1 - 1e-6))), 60, 1_000_000, 8_000)),
        # below 1 QPS: one send per 1 / qps seconds; a window of 2 s
        ({"qps": 0.5}, (math.ceil(1e6 / (0.5 / 1.008 * (1 - 1e-6))), 1, 2_000_000, 16_000)),
        ({"qps": 0.5, "utilization": 0.8}, (2_500_000, 1, 2_000_000, 500_000)),
        ({"qps": 150, "utilization": 0.9}, (7_408, 150, 1_000_000, 111_112)),
    ],
)
async def test_a_reservation_carries_the_spacing_the_log_and_the_jitter_assumed(
    settings: dict[str, Any], expected: tuple[int, int, int, int]
) -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, **settings)
    await limiter.acquire()
    [reservation] = server.reservations
    sent = (reservation.interval, reservation.limit, reservation.window, reservation.unreported)
    assert sent == expected
    assert reservation.seen == 0


@pytest.mark.looptime
async def test_stats_count_reservations_and_their_round_trips() -> None:
    limiter, _ = limiter_on(FakeRedis(), qps=100)
    assert limiter.stats.mean_round_trip == 0.0
    for _ in range(3):
        await limiter.acquire()
    stats = limiter.stats
    assert stats.reservations == 3
    # (The first took two round trips: NOSCRIPT, then EVAL.)
    assert stats.redis_seconds == pytest.approx(4 * LATENCY, abs=US)
    assert stats.mean_round_trip == pytest.approx(4 * LATENCY / 3, abs=US)
    assert (stats.failures, stats.fallback_acquisitions) == (0, 0)


@pytest.mark.looptime
async def test_max_pending_bounds_the_reservations_held_at_once() -> None:
    server = FakeRedis()
    limiter, pool = limiter_on(server, qps=100, utilization=0.8, max_pending=4)
    sends = await asyncio.gather(*(timed_acquire(limiter) for _ in range(20)))
    assert pool.most_in_use == 4
    assert len(sends) == 20
    # No slot was reserved more than max_pending slots ahead of Redis's clock.
    assert max(r.slot - r.now for r in server.reservations) <= 4 * 12_500
    capped, capped_pool = limiter_on(FakeRedis(), pool=FakePool(server, 3), qps=100, max_pending=8)
    await asyncio.gather(*(capped.acquire() for _ in range(10)))
    assert capped_pool.most_in_use == 3


@pytest.mark.looptime
async def test_a_round_trip_reports_how_late_its_send_may_have_arrived() -> None:
    server = FakeRedis()
    # Below 1 QPS a second's share is 2 s: jitter counts double.
    limiter, _ = limiter_on(server, qps=0.5)
    first_went = await timed_acquire(limiter)
    second_went = await timed_acquire(limiter)
    first, second = server.reservations
    await asyncio.sleep(0.03)
    # The second send's answer came 30 ms after it went: before 16 round trips are known,
    # the whole round trip bounds how much later than the fastest it arrived.
    limiter.observe_round_trip(0.03)
    # Another answer for a request that went at the same moment: the second send is
    # answered already, so it is the first's (its round trip counted from when it went).
    limiter.observe_round_trip(0.03)
    await limiter.acquire()
    third = server.reservations[-1]
    reported = third.reports
    assert [slot for slot, _ in reported] == [second.slot, second.slot, first.slot]
    assert abs(reported[0][1] - (4_000 + 16_000)) <= 1  # when it went: 8 ms x 2 assumed
    assert abs(reported[1][1] - (4_000 + 2 * 30_000)) <= 1
    from_first = now() - first_went
    assert from_first > second_went - first_went
    # (The first reservation took two round trips, NOSCRIPT then EVAL: 8 ms.)
    expected = 0.008 + 2 * (second_went + 0.03 - first_went)
    assert abs(reported[2][1] - math.ceil(expected * 1e6)) <= 2


@pytest.mark.looptime
async def test_a_fixed_utilization_ignores_round_trips_and_throttles() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=100, utilization=0.8)
    await limiter.acquire()
    limiter.observe_round_trip(0.001)
    limiter.observe_throttle()
    assert limiter.rate == 80.0
    await limiter.acquire()
    assert len(server.reservations[-1].reports) == 1  # the send's own report only
    assert server.reservations[-1].interval == 12_500


async def round_trips(limiter: RedisRateLimiter, samples: list[float]) -> None:
    """One send per sample, each answered ``sample`` seconds after it went."""
    for sample in samples:
        await limiter.acquire()
        await asyncio.sleep(sample)
        limiter.observe_round_trip(sample)


SAMPLES = [0.010 + 0.002 * (i % 5) for i in range(20)]


@pytest.mark.looptime
async def test_the_spacing_follows_the_round_trips_and_a_throttle_at_full_pace_widens_it() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=3)
    margin = JitterMargin()  # the same estimate, fed the same round trips
    for sample in SAMPLES:
        margin.record(sample)
    await round_trips(limiter, SAMPLES)
    assert limiter.rate == pytest.approx(paced_rate(3, margin.pace(now())), rel=1e-12)
    assert server.reservations[-1].interval == math.ceil(1e6 / limiter.rate)
    # A throttle right after this process's sends filled its second: perhaps its own
    # margin was thin -- it widens, and the spacing with it.
    limiter.observe_throttle()
    throttled_at = now()
    margin.throttled(throttled_at)
    assert limiter.rate == pytest.approx(paced_rate(3, margin.pace(now())), rel=1e-12)
    went = await timed_acquire(limiter)
    assert server.reservations[-1].interval == math.ceil(1e6 / limiter.rate)
    await asyncio.sleep(0.02)
    limiter.observe_round_trip(0.02)
    answered = now()
    await limiter.acquire()
    reports = server.reservations[-1].reports
    # Once the round trips are known: the jitter is the spread (plus the widening) for a
    # send not answered yet, and a round trip's excess over the fastest for one answered.
    unreported = 0.004 + margin.margin(went)
    answered_late = 0.004 + margin.margin_for(0.02, answered)
    assert [late for _, late in reports[-2:]] == [
        pytest.approx(unreported * 1e6, abs=2),
        pytest.approx(answered_late * 1e6, abs=2),
    ]
    assert server.reservations[-1].unreported == pytest.approx(margin.margin(answered) * 1e6, abs=1)


@pytest.mark.looptime
async def test_throttles_below_the_ceiling_lower_the_rate_in_every_second() -> None:
    limiter, _ = limiter_on(FakeRedis(), qps=100)
    sends = [await timed_acquire(limiter) for _ in range(10)]
    # Ten sends, then a throttle: this process cannot have filled a second on its own.
    limiter.observe_throttle()
    cut_at = now()
    assert limiter.rate == pytest.approx(KEEP * 10)
    after = []
    while now() - cut_at < 1.5:
        after.append(await timed_acquire(limiter))
    # The next send waits until the second before it holds fewer than the cut rate's 8
    # sends: a second after the third, plus its round trip.
    assert close_to(after[0], sends[2] + 1.0 + LATENCY, 1e-5)
    assert max_in_window(sends + after) <= 10
    assert len([t for t in after if t < cut_at + 1.0]) <= PLATEAU * 10
    # The rate climbs back with time alone.
    assert limiter.rate > KEEP * 10


@pytest.mark.looptime
async def test_a_throttle_is_judged_by_when_its_request_went() -> None:
    limiter, _ = limiter_on(FakeRedis(), qps=100)
    for _ in range(10):
        await limiter.acquire()
    limiter.observe_throttle()
    cut_at = now()
    # A request that went 0.2 s after the cut (before the cut could show), answered 0.1 s
    # later and then throttled: the echo of the same episode, the rate is kept.
    await asyncio.sleep(0.3)
    limiter.observe_round_trip(0.1)
    before = limiter.rate
    limiter.observe_throttle()
    assert limiter.rate == before
    # One that went 0.4 s after the cut, when the cut showed, and was throttled anyway:
    # the rate is cut again.
    await asyncio.sleep(0.2)
    limiter.observe_round_trip(0.1)
    before = limiter.rate
    limiter.observe_throttle()
    assert limiter.rate < 0.9 * before
    recut_at = now()
    assert close_to(recut_at - cut_at, 0.5)
    # A throttle 2 ms after the latest round trip is not that round trip's answer: without
    # a send time, within a second of the cut it counts as an echo.
    await asyncio.sleep(0.35)
    limiter.observe_round_trip(0.05)
    await asyncio.sleep(0.002)
    before = limiter.rate
    limiter.observe_throttle()
    assert limiter.rate == before


# --- the script, lost answers, errors ---------------------------------------------------


@pytest.mark.looptime
async def test_the_script_is_loaded_once_and_again_after_a_flush() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=100)
    for _ in range(3):
        await limiter.acquire()
    assert server.commands == ["EVALSHA", "EVAL", "EVALSHA", "EVALSHA"]
    server.flush_scripts()
    await limiter.acquire()
    assert server.commands[4:] == ["EVALSHA", "EVAL"]
    assert limiter.stats.reservations == 4
    assert limiter.stats.failures == 0


@pytest.mark.looptime
async def test_a_cluster_client_runs_the_script_through_its_command_api() -> None:
    server = FakeRedis()
    limiter = RedisRateLimiter(FakeCluster.of(server), key="{account}:GetSegmentTask", qps=100)
    assert "max_pending=8," in repr(limiter)
    sends = [await timed_acquire(limiter) for _ in range(3)]
    assert server.commands == ["EVALSHA", "EVAL", "EVALSHA", "EVALSHA"]
    assert {r.key for r in server.reservations} == {"{account}:GetSegmentTask"}
    for went, reservation in zip(sends, server.reservations, strict=True):
        assert close_to(went, server.loop_time_of(reservation.slot) + LATENCY / 2)
    assert limiter.stats.reservations == 3


@pytest.mark.looptime
async def test_a_lost_answer_costs_one_slot_and_is_retried_on_a_new_connection() -> None:
    server = FakeRedis()
    limiter, pool = limiter_on(server, qps=100, utilization=0.8, wait_for_redis=0)
    await limiter.acquire()
    server.drop_answers = 1
    went = await timed_acquire(limiter)
    lost, used = server.reservations[1:]
    assert used.slot == lost.slot + 12_500
    assert close_to(went, server.loop_time_of(used.slot) + LATENCY / 2)
    assert server.connections == 2
    assert pool.created == 1  # the same connection object, connected anew
    assert limiter.stats.reservations == 2
    assert limiter.stats.failures == 0
    # Twice in a row: an outage; nothing is sent.
    server.drop_answers = 2
    with pytest.raises(RateLimiterUnavailableError) as raised:
        await limiter.acquire()
    assert str(raised.value).startswith(
        "the shared rate limiter could not reach Redis (ConnectionError: Connection closed by "
        "server.) within wait_for_redis=0 s; the request was not sent"
    )
    assert server.connections == 3  # a new connection for the retry only
    assert len(server.reservations) == 5
    assert limiter.stats.failures == 1
    assert limiter.stats.reservations == 2


@pytest.mark.looptime
async def test_an_error_answer_is_an_outage_on_a_connection_still_in_step() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=100, retry_interval=0.25, wait_for_redis=0)
    await limiter.acquire()
    server.error = "OOM command not allowed when used memory > 'maxmemory'."
    with pytest.raises(
        RateLimiterUnavailableError,
        match=re.escape("(ResponseError: OOM command not allowed when used memory"),
    ):
        await limiter.acquire()
    await asyncio.sleep(0.25)
    await limiter.acquire()
    assert server.connections == 1
    assert limiter.stats.failures == 1


@pytest.mark.looptime
async def test_a_hung_redis_times_out_and_its_late_answer_is_never_read() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(
        server, qps=100, redis_timeout=0.0625, retry_interval=0.25, wait_for_redis=0
    )
    await limiter.acquire()
    server.hung = True
    started = now()
    with pytest.raises(RateLimiterUnavailableError) as raised:
        await limiter.acquire()
    assert close_to(now() - started, 0.0625)
    assert "could not reach Redis (timed out)" in str(raised.value)
    server.resume()  # runs the script it held, and answers -- too late
    await asyncio.sleep(0.25)
    went = await timed_acquire(limiter)
    stale, used = server.reservations[1:]
    assert used.slot > stale.slot
    assert close_to(went, server.loop_time_of(used.slot) + LATENCY / 2)
    assert server.connections == 2  # the timed-out exchange's connection was dropped
    assert limiter.stats.failures == 1


# --- outages -----------------------------------------------------------------------------


@pytest.mark.looptime
async def test_callers_wait_for_a_stopped_redis_one_probe_at_a_time_then_give_up() -> None:
    server = FakeRedis(down=True)
    limiter, _ = limiter_on(server, qps=100, retry_interval=0.25, wait_for_redis=1.1)
    started = now()
    gave_up: list[float] = []

    async def caller() -> None:
        with pytest.raises(RateLimiterUnavailableError) as raised:
            await limiter.acquire()
        gave_up.append(now() - started)
        assert str(raised.value).startswith(
            f"the shared rate limiter could not reach Redis (ConnectionError: {REFUSED}) "
            "within wait_for_redis=1.1 s; the request was not sent"
        )

    await asyncio.gather(*(caller() for _ in range(8)))
    assert gave_up == pytest.approx([1.1] * 8, abs=US)
    # The 8 callers already on their way fail once each (a refused connection is retried
    # once at once); then one probe per retry_interval, the others waiting for it.
    connects = [round(t - started, 6) for t in server.attempts]
    assert connects == [0.0] * 16 + [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert limiter.stats.failures == 12


@pytest.mark.looptime
async def test_callers_waiting_for_redis_go_together_once_a_probe_finds_it_back() -> None:
    server = FakeRedis(down=True)
    limiter, _ = limiter_on(server, qps=100, utilization=0.8, retry_interval=0.25)
    started = now()
    asyncio.get_running_loop().call_later(0.8, setattr, server, "down", False)
    sends = await asyncio.gather(*(timed_acquire(limiter) for _ in range(8)))
    assert limiter.stats.failures == 11  # 8, then the probes at 0.25, 0.5 and 0.75 s
    probes = [round(t - started, 6) for t in server.attempts[16:23]]
    assert probes == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]
    assert len(server.reservations) == 8
    for went, reservation in zip(sorted(sends), server.reservations, strict=True):
        assert close_to(went, server.loop_time_of(reservation.slot) + LATENCY / 2)
    assert close_to(min(sends) - started, 1.0 + 2 * LATENCY)  # NOSCRIPT, then EVAL
    # The probe's send released the others at once: they all reserved within a round trip
    # (each then waits for its own slot).
    first, *others = server.reservations
    assert max(r.now for r in others) - first.now <= 2 * LATENCY * 1e6 + 1


@pytest.mark.looptime
async def test_callers_wait_for_a_hung_redis_while_one_probes() -> None:
    server = FakeRedis(hung=True)
    limiter, _ = limiter_on(
        server, qps=100, redis_timeout=0.0625, retry_interval=0.25, wait_for_redis=0.5
    )
    started = now()
    results = await asyncio.gather(*(limiter.acquire() for _ in range(4)), return_exceptions=True)
    assert all(isinstance(result, RateLimiterUnavailableError) for result in results)
    assert close_to(now() - started, 0.5625)
    assert [round(t - started, 6) for t in server.attempts] == [0.0] * 4 + [0.3125]
    assert limiter.stats.failures == 5


@pytest.mark.looptime
async def test_wait_for_redis_zero_fails_at_once_and_later_callers_fail_fast() -> None:
    server = FakeRedis(down=True)
    limiter, _ = limiter_on(server, qps=100, retry_interval=60, wait_for_redis=0)
    started = now()
    for _ in range(3):
        with pytest.raises(RateLimiterUnavailableError, match="the request was not sent"):
            await limiter.acquire()
    assert now() == started
    assert len(server.attempts) == 2  # within retry_interval nobody asks Redis again
    assert limiter.stats.failures == 1


@pytest.mark.looptime
async def test_the_fallback_paces_locally_warns_once_per_outage_and_returns_to_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtc_segment.redis")
    server = FakeRedis(down=True)
    limiter, _ = limiter_on(server, qps=100, retry_interval=0.25, fallback_fraction=0.5)
    local = [await timed_acquire(limiter) for _ in range(30)]
    assert limiter.stats.fallback_acquisitions == 30
    assert limiter.stats.reservations == 0
    # Paced at 0.5 x 100 x 0.99 (the local limiter's utilization), never faster...
    gaps = [later - earlier for earlier, later in itertools.pairwise(local)]
    assert min(gaps) == pytest.approx(1 / 49.5, abs=US)
    assert max_in_window(local) <= 50
    # ...and Redis is probed when its retry time has come (after 0.25 s, and 0.25 s after
    # that probe): the local slot that found a probe due is not used, the caller tries
    # Redis and then takes the next one. 29 gaps, two of them double.
    assert local[-1] - local[0] == pytest.approx(31 / 49.5, abs=US)
    assert limiter.stats.failures == 3
    server.down = False
    await asyncio.sleep(0.25)
    for _ in range(5):
        await limiter.acquire()
    assert limiter.stats.reservations == 5
    assert limiter.stats.fallback_acquisitions == 30
    server.down = True
    await asyncio.sleep(0.01)
    await limiter.acquire()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    warning = (
        logging.WARNING,
        f"Redis is unavailable for the shared rate limit (ConnectionError: {REFUSED}); pacing "
        "this process locally at 49.5 requests/s (0.5 of 100) and retrying Redis every 0.25s",
    )
    back = (logging.INFO, "Redis is reachable again; shared rate limiting resumed")
    assert messages == [warning, back, warning]


@pytest.mark.looptime
async def test_the_fallback_keeps_a_fixed_utilization() -> None:
    limiter, _ = limiter_on(
        FakeRedis(down=True), qps=100, utilization=0.8, retry_interval=60, fallback_fraction=0.5
    )
    local = [await timed_acquire(limiter) for _ in range(21)]
    assert (len(local) - 1) / (local[-1] - local[0]) == pytest.approx(40, rel=0.02)


@pytest.mark.looptime
async def test_the_clock_offset_follows_the_last_64_reservations() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=100, utilization=0.8)
    for _ in range(5):
        await limiter.acquire()
    # Redis's clock jumps back a second (a failover to a server whose clock is behind):
    # for the next 64 reservations the old bound says Redis is a second further ahead, so
    # sends go early on its clock; then the bound is the new clock's again.
    server.skew -= 1.0
    sends = [await timed_acquire(limiter) for _ in range(70)]
    for went, reservation in zip(sends[-5:], server.reservations[-5:], strict=True):
        assert close_to(went, server.loop_time_of(reservation.slot) + LATENCY / 2)
    # It jumps forward a second: for 64 reservations the old lower bound makes every send
    # look on time; then each is reported late by its round trip again.
    server.skew += 2.0
    for _ in range(70):
        await limiter.acquire()
    [(_, late)] = server.reservations[-1].reports
    assert abs(late - (4_000 + 250_000)) <= 1
    [(_, late)] = server.reservations[-66].reports
    assert late == 250_000


@pytest.mark.looptime
async def test_round_trips_match_only_the_last_256_sends() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=1000)
    first_went = await timed_acquire(limiter)
    for _ in range(256):
        await limiter.acquire()
    # The first send is forgotten: a round trip from when it went matches no send.
    limiter.observe_round_trip(now() - first_went)
    await limiter.acquire()
    assert len(server.reservations[-1].reports) == 1  # the last send's own report


@pytest.mark.looptime
async def test_reports_wait_16_per_reservation_and_only_the_newest_64_are_kept() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=1000)
    went = [await timed_acquire(limiter) for _ in range(70)]
    # Answers for all 70, while nothing is sent: 71 reports wait (with the last send's).
    for at in went:
        limiter.observe_round_trip(now() - at)
    for _ in range(6):
        await limiter.acquire()
    carried = [len(r.reports) for r in server.reservations[-6:]]
    # The newest 64, 16 a reservation, each of which adds its own send's report.
    assert carried == [16, 16, 16, 16, 4, 1]


@pytest.mark.looptime
async def test_a_waiter_whose_wait_is_over_only_yields() -> None:
    # (On a real clock the retry time may pass between a waiter's look at Redis and its
    # reading of the clock: its wait is then zero, and it looks again at once.)
    limiter, _ = limiter_on(FakeRedis(), qps=100)
    started = now()
    await limiter._await_outage_news(0.0)
    await limiter._await_outage_news(-0.5)
    assert now() == started


def test_the_default_ceiling_is_60_qps() -> None:
    limiter = RedisRateLimiter(Redis(connection_pool=FakePool(FakeRedis())), key="k")
    assert "qps=60.0," in repr(limiter)


@pytest.mark.looptime
async def test_by_default_a_caller_waits_10_s_for_redis_probing_it_every_quarter_second() -> None:
    server = FakeRedis(down=True)
    limiter = RedisRateLimiter(Redis(connection_pool=FakePool(server)), key="k")
    started = now()
    with pytest.raises(RateLimiterUnavailableError, match=r"within wait_for_redis=10 s"):
        await limiter.acquire()
    assert now() - started == 10.0
    probes = [0.25 * n for n in range(41)]  # 0, 0.25, ..., 10.0 (each retried once at once)
    assert [round(t - started, 6) for t in server.attempts] == [t for t in probes for _ in "ab"]
    assert limiter.stats.failures == 41


@pytest.mark.looptime
async def test_by_default_a_redis_call_times_out_after_a_second() -> None:
    server = FakeRedis(hung=True)
    limiter = RedisRateLimiter(Redis(connection_pool=FakePool(server)), key="k", wait_for_redis=0)
    started = now()
    with pytest.raises(RateLimiterUnavailableError, match=r"\(timed out\)"):
        await limiter.acquire()
    assert now() - started == 1.0


@pytest.mark.looptime
async def test_callers_queued_for_a_reservation_do_not_go_to_redis_once_it_failed() -> None:
    server = FakeRedis(down=True)
    # One reservation at a time: two callers queue behind the first, which fails.
    limiter, _ = limiter_on(server, qps=100, max_pending=1, wait_for_redis=0)
    results = await asyncio.gather(*(limiter.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, RateLimiterUnavailableError) for result in results)
    assert len(server.attempts) == 2  # the first caller's try and its one retry
    assert limiter.stats.failures == 1


@pytest.mark.looptime
async def test_a_round_trip_is_its_sends_if_it_started_within_a_microsecond_after_it() -> None:
    server = FakeRedis()
    limiter, _ = limiter_on(server, qps=100)
    went = await timed_acquire(limiter)
    await asyncio.sleep(0.03)
    answered = now()

    def round_trip_starting(edge: float) -> float:
        """The round trip (seconds) for which the limiter computes ``started + 1e-6`` as
        exactly ``edge`` (or the nearest above it)."""
        seconds = answered - (edge - 1e-6)
        for _ in range(64):
            computed = (answered - seconds) + 1e-6
            if computed == edge:
                break
            seconds = math.nextafter(seconds, math.inf if computed > edge else -math.inf)
        return seconds

    # Started a microsecond (a tick of the clock) before it went: another request's.
    early = round_trip_starting(went)
    while (answered - early) + 1e-6 >= went:
        early = math.nextafter(early, math.inf)
    limiter.observe_round_trip(early)
    await limiter.acquire()
    assert len(server.reservations[-1].reports) == 1  # the send's own report only
    # Started exactly then: this send's (a round trip from its turn, a tick before).
    went = now()
    slot = server.reservations[-1].slot
    await asyncio.sleep(0.03)
    answered = now()
    seconds = round_trip_starting(went)
    assert (answered - seconds) + 1e-6 == went
    limiter.observe_round_trip(seconds)
    await limiter.acquire()
    assert [reported for reported, _ in server.reservations[-1].reports] == [slot, slot]


# --- a cluster client breaking under reservations (redis-py closes its connections for a
# topology refresh; tests/test_redis_cluster.py does it to a real cluster) ----------------------------------

NOW_US = 1_700_000_000_000_000


def redis_frame_error(
    kind: type[Exception], message: str, module: str = "redis.asyncio.connection"
) -> Exception:
    """An exception raised by code of ``module`` (redis-py's, by default)."""
    scope: dict[str, Any] = {"__name__": module, "kind": kind}
    exec("def send(message):\n    raise kind(message)\n", scope)
    try:
        scope["send"](message)
    except kind as exc:
        return exc
    raise AssertionError("unreachable")


class ScriptedCluster:
    """Stands in for a cluster client's ``evalsha``: answers slots a millisecond apart on a
    fake server clock, failing as told, and notes how many calls overlapped."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.first_may_answer = asyncio.Event()
        self.first_may_answer.set()
        self.calls = 0
        self.keys: list[object] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.slot = NOW_US

    async def evalsha(self, *args: object) -> list[int]:
        self.calls += 1
        self.keys.append(args[2])  # (sha, 1, key, *arguments)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.calls == 1:
                await self.first_may_answer.wait()
            await asyncio.sleep(0.001)
            if self.failures:
                raise self.failures.pop(0)
            self.slot += 1000
            return [self.slot, self.slot]
        finally:
            self.in_flight -= 1


def scripted_limiter(
    failures: list[Exception], **settings: Any
) -> tuple[RedisRateLimiter, ScriptedCluster]:
    cluster = RedisCluster(host="127.0.0.1", port=1)  # never connects: evalsha is replaced
    scripted = ScriptedCluster(failures)
    cluster.evalsha = scripted.evalsha  # type: ignore[method-assign]
    return RedisRateLimiter(
        cluster, key="{scripted}:GetSegmentTask", qps=1000.0, **settings
    ), scripted


@pytest.mark.looptime
async def test_the_first_reservation_on_a_cluster_goes_alone() -> None:
    limiter, scripted = scripted_limiter([])
    scripted.first_may_answer.clear()
    callers = asyncio.gather(*(limiter.acquire() for _ in range(10)))
    for _ in range(20):  # every caller has had its turn to run meanwhile
        await asyncio.sleep(0)
    assert (scripted.calls, scripted.in_flight) == (1, 1)  # the others wait for it
    scripted.first_may_answer.set()
    await callers
    assert scripted.calls == 10
    # After it, reservations overlap again (up to max_pending).
    assert scripted.most_in_flight > 1


@pytest.mark.looptime
async def test_redis_py_breaking_under_a_reservation_is_a_lost_connection() -> None:
    broken = redis_frame_error(AttributeError, "'NoneType' object has no attribute 'writelines'")
    limiter, scripted = scripted_limiter([broken])
    await limiter.acquire()  # retried at once, on the client's next connection
    assert scripted.keys == [limiter.key, limiter.key]
    assert limiter.stats.failures == 0
    # Twice in a row: an outage, which the caller waits out (here: the third call works).
    # (The second from asyncio's transport under redis-py: redis/redis-py#3546.)
    twice = [
        redis_frame_error(AttributeError, "'NoneType' object has no attribute 'writelines'"),
        redis_frame_error(
            TypeError, "'NoneType' object is not callable", "asyncio.selector_events"
        ),
    ]
    limiter, scripted = scripted_limiter(twice)
    await limiter.acquire()
    assert (scripted.calls, limiter.stats.failures) == (3, 1)


@pytest.mark.looptime
async def test_a_cluster_client_that_keeps_breaking_is_an_outage_that_says_so() -> None:
    broken = [
        redis_frame_error(AttributeError, "'NoneType' object has no attribute 'writelines'")
        for _ in range(100)
    ]
    limiter, _ = scripted_limiter(broken, wait_for_redis=1.0)
    with pytest.raises(RateLimiterUnavailableError) as caught:
        await limiter.acquire()
    assert (
        "could not reach Redis (ConnectionError: the cluster client broke under the command "
        "(AttributeError: 'NoneType' object has no attribute 'writelines')) within "
        "wait_for_redis=1 s" in str(caught.value)
    )


@pytest.mark.looptime
async def test_an_attribute_error_of_our_own_is_not_taken_for_redis() -> None:
    ours = AttributeError("a bug of ours")  # raised here, in the test's own frame
    try:
        raise ours
    except AttributeError as exc:
        ours = exc
    limiter, scripted = scripted_limiter([ours])
    with pytest.raises(AttributeError, match="a bug of ours"):
        await limiter.acquire()
    assert scripted.calls == 1
