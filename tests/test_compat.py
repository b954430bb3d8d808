"""Tests for rtc_segment._compat: one per touch of another library's internals.

Each test fails if the library we rely on changes the detail we use, so that a dependency
upgrade breaks here, loudly, rather than quietly breaking a guarantee.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import httpx
import pytest

from rtc_segment import _compat
from rtc_segment._compat import (
    IncompatibleDependencyError,
    PacedBucket,
    disable_connection_retry,
    transport_for_url,
    url_maker,
    warm_up_http_stack,
)

# -- aiolimiter ------------------------------------------------------------------------------


def test_the_aiolimiter_self_check_passes_on_the_installed_version() -> None:
    _compat._check_aiolimiter()


def test_the_aiolimiter_self_check_fails_loudly_when_internals_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Renamed:
        __slots__ = ("_bucket_level", "_rate_per_sec")

    monkeypatch.setattr(_compat, "AsyncLimiter", Renamed)
    with pytest.raises(IncompatibleDependencyError, match="_level"):
        _compat._check_aiolimiter()


@pytest.mark.looptime
async def test_paced_bucket_exposes_level_rate_and_clock() -> None:
    loop = asyncio.get_running_loop()
    bucket = PacedBucket(1.5, 1.5 / 10.0)  # drains 10 requests per second
    assert bucket.rate == pytest.approx(10.0)
    assert bucket.now() == loop.time()
    await bucket.acquire()
    assert bucket.level == pytest.approx(1.0)
    await asyncio.sleep(0.05)
    assert bucket.level == pytest.approx(0.5)
    bucket.add(1)
    assert bucket.level == pytest.approx(1.5)


@pytest.mark.looptime
async def test_changing_the_rate_is_not_retroactive() -> None:
    bucket = PacedBucket(1.0, 0.1)  # 10 per second
    await bucket.acquire()
    await asyncio.sleep(0.05)  # half drained at the old rate
    bucket.rate = 1.0
    assert bucket.level == pytest.approx(0.5)
    await asyncio.sleep(0.25)
    assert bucket.level == pytest.approx(0.25)
    assert bucket.time_period == pytest.approx(1.0)


@pytest.mark.looptime
async def test_a_wake_up_a_microsecond_early_counts_as_on_time() -> None:
    loop = asyncio.get_running_loop()
    bucket = PacedBucket(1.0, 1.0)  # one per second, capacity one
    await bucket.acquire()
    start = loop.time()
    # Without the snap, the sliver left at the due time would re-arm a timer due "now"
    # forever under looptime; with it, the second acquire returns one interval later.
    await asyncio.wait_for(bucket.acquire(), timeout=5)
    assert loop.time() - start == pytest.approx(1.0, abs=1e-3)


async def test_a_waiter_is_woken_a_few_times_not_in_a_busy_loop() -> None:
    """In real time, on whichever loop runs the tests (the uvloop nox session: uvloop's,
    whose timers and clock tick in milliseconds -- a timer due within half a tick ran at
    once and was re-armed, ~80 wake-ups per request at 60 QPS, ~300 at 1,000)."""
    wake_ups = 0

    class Counting(PacedBucket):
        __slots__ = ()

        def _wake_next(self, *args: object) -> None:
            nonlocal wake_ups
            wake_ups += 1
            super()._wake_next(*args)

    # As LocalRateLimiter makes it: 60 per second (16.7 ms apart, not a whole number of
    # milliseconds), room for three to catch up.
    bucket = Counting(4.0, 4.0 / 60)
    requests = 30
    for _ in range(requests):
        await bucket.acquire()
    assert wake_ups <= 6 * requests  # about 3 each on either loop


def test_timers_tick_in_milliseconds_on_other_loops_than_asyncios() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert _compat._timer_tick(loop) == 0.0
    finally:
        loop.close()
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert _compat._timer_tick(loop) == 1e-3
    finally:
        loop.close()


# -- httpx -----------------------------------------------------------------------------------


def test_the_httpx_self_check_fails_loudly_when_internals_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _compat._check_httpx()
    monkeypatch.delattr(httpx.AsyncClient, "_transport_for_url")
    with pytest.raises(IncompatibleDependencyError, match="_transport_for_url"):
        _compat._check_httpx()


async def test_transport_for_url_is_the_one_send_would_use() -> None:
    mounted = httpx.MockTransport(lambda request: httpx.Response(204))
    async with httpx.AsyncClient(transport=mounted) as client:
        assert transport_for_url(client, httpx.URL("https://example.test/")) is mounted


def test_fast_urls_equal_parsed_ones() -> None:
    for root in ("http://127.0.0.1:8080/", "https://rtc.volcengineapi.com/", "http://[::1]:9/"):
        make = url_maker(httpx.URL(root))
        assert make.__name__ == "swapped"  # the fast path is in use on this httpx
        for query in ("Action=GetSegmentTask&AppId=a%40b&TaskId=t.-_~", "A=%E4%BD%A0&B="):
            assert make(query) == httpx.URL(f"{root}?{query}")
            assert str(make(query)) == f"{root}?{query}"


def test_url_maker_falls_back_to_parsing_without_the_internal() -> None:
    class PlainRoot:
        def __str__(self) -> str:
            return "https://rtc.volcengineapi.com/"

    make = url_maker(PlainRoot())  # type: ignore[arg-type]
    assert make.__name__ == "parsed"
    assert make("A=1") == httpx.URL("https://rtc.volcengineapi.com/?A=1")


# -- aiohttp ---------------------------------------------------------------------------------


async def test_aiohttp_connection_retry_is_switched_off() -> None:
    async with aiohttp.ClientSession() as session:
        assert session._retry_connection is True  # aiohttp's default: it would resend a GET
        disable_connection_retry(session)
        assert session._retry_connection is False


def test_a_missing_aiohttp_switch_fails_loudly() -> None:
    class Session:
        pass

    with pytest.raises(IncompatibleDependencyError, match="_retry_connection"):
        disable_connection_retry(Session())  # type: ignore[arg-type]


# -- httpcore --------------------------------------------------------------------------------


def test_the_warm_up_imports_what_httpcore_loads_on_its_first_request() -> None:
    warm_up_http_stack()
    assert "httpcore._backends.anyio" in sys.modules
    assert "anyio._backends._asyncio" in sys.modules
