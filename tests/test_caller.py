"""Tests for rtc_segment._caller: deadlines and interactive-before-bulk, in virtual time,
and the round trip fed back to the limiter (in real time: it times a blocking stall).

The rest of the HTTP path (retries, classification, cancellation) is tested through the
client in tests/test_client.py, tests/test_transports.py and tests/reliability/.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from rtc_segment import (
    AuthenticationError,
    Backoff,
    CallDetails,
    CallRecorder,
    ClientClosedError,
    ClientTimeoutError,
    Credentials,
    CredentialsUnavailableError,
    DeadlineExceededError,
    InvalidParameterError,
    LocalRateLimiter,
    ResponseFormatError,
    SegmentClient,
    ServerError,
    TaskNotFoundError,
    TaskOutcome,
    TransportError,
    __version__,
    set_call_hooks,
)
from rtc_segment._wire import MAX_RESPONSE_BYTES
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = ("app", "room", "task")


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("clock", emulator.wall_clock)
    return SegmentClient(transport=emulator.transport(), **kwargs)


# -- deadlines ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_deadline_spent_queued_for_the_limiter_sends_nothing() -> None:
    emulator = Emulator(qps=None, latency=0.01)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=2.0) as client:
        # Sent at 0, 1.0 (the first after a pause is charged one interval more) and 1.5 s.
        calls = [asyncio.create_task(client.get_segment_task(*KEY, deadline=1.2)) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    late = [r for r in results if isinstance(r, DeadlineExceededError)]
    assert len(late) == 1
    error = late[0]
    assert isinstance(error, TimeoutError)
    assert error.attempts == 0 and error.ambiguous is False
    assert error.queued == pytest.approx(1.2, abs=0.01)
    assert "queued for the limiter" in str(error)
    assert emulator.count() == 2  # the third was never sent
    assert client.stats.errors == {"DeadlineExceededError": 1}


@pytest.mark.looptime
async def test_no_retry_starts_that_cannot_finish_in_the_deadline() -> None:
    emulator = Emulator(qps=None, latency=0.5)
    emulator.add_task(*KEY)
    emulator.faults.next(5, Fault.HTTP_500)
    async with client_on(emulator, max_retries=5) as client:
        # The first attempt takes 0.5 s; another could not finish in the 0.4 s left.
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get_segment_task(*KEY, deadline=0.9)
    error = caught.value
    # It gave up at once rather than sleeping into a retry that could not finish.
    assert error.backing_off == 0.0
    assert isinstance(error.last_error, ServerError)
    assert error.attempts == 1 and error.ambiguous
    assert emulator.count() == 1


@pytest.mark.looptime
async def test_a_deadline_cuts_a_slow_attempt_short() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, slow_seconds=30)
    async with client_on(emulator, timeout=10.0, deadline=2.0) as client:
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get_segment_task(*KEY)  # the client's default deadline
    assert caught.value.in_attempts == pytest.approx(2.0, abs=0.01)
    assert caught.value.ambiguous  # it was sent


@pytest.mark.looptime
async def test_fan_out_honours_the_deadline_per_key() -> None:
    emulator = Emulator(qps=None, latency=0.01)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(5)]
    async with client_on(emulator, qps=2.0) as client:
        outcomes: list[TaskOutcome] = await client.gather_segment_tasks(keys, deadline=1.2)
    late = [o for o in outcomes if isinstance(o.error, DeadlineExceededError)]
    # At 2 per second, keys queued more than 1.2 s behind the first run out of time.
    assert 1 <= len(late) <= 3
    assert all(o.ok for o in outcomes if o not in late)
    assert emulator.count() == 5 - len(late)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (-1, ValueError),
        (0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
async def test_bad_deadlines_are_refused_before_anything_is_sent(
    bad: object, error: type[Exception]
) -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    with pytest.raises(error, match="deadline"):
        client_on(emulator, deadline=bad)
    async with client_on(emulator) as client:
        with pytest.raises(error, match="deadline"):
            await client.get_segment_task(*KEY, deadline=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="deadline"):
            client.get_segment_tasks([KEY], deadline=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="deadline"):
            await client.stop_segment(*KEY, deadline=bad)  # type: ignore[arg-type]
    assert emulator.count() == 0


# -- the round trip the limiter learns from ---------------------------------------------------


class FeedbackRecorder:
    """A limiter that never waits and keeps the feedback a client gives it."""

    def __init__(self, qps: float = 60.0) -> None:
        self.qps = qps
        self.acquired = 0
        self.round_trips: list[float] = []
        self.throttles = 0

    async def acquire(self) -> None:
        self.acquired += 1

    def observe_round_trip(self, seconds: float) -> None:
        self.round_trips.append(seconds)

    def observe_throttle(self) -> None:
        self.throttles += 1


async def test_the_round_trip_counts_from_when_the_limiter_let_the_request_go() -> None:
    # A stall after the limiter's go and before the request leaves (a descheduled process,
    # a slow hook; here the signing clock) delays its arrival just as a slow network would:
    # the limiter's margins must see it. In real time: the stall is a blocking sleep, and
    # the round trip can only come out longer than it, never shorter, however busy the
    # machine.
    stall = 0.03
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    limiter = FeedbackRecorder()

    def stalling_clock() -> Any:
        time.sleep(stall)
        return emulator.wall_clock()

    async with client_on(emulator, limiter=limiter, clock=stalling_clock) as client:
        await client.get_segment_task(*KEY)
    assert len(limiter.round_trips) == 1
    assert limiter.round_trips[0] >= stall


# -- interactive before bulk --------------------------------------------------------------------


@pytest.mark.looptime
async def test_single_calls_go_ahead_of_a_running_fan_out() -> None:
    emulator = Emulator(qps=60, latency=0.05)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(900)]
    emulator.add_task(*KEY)
    loop = asyncio.get_running_loop()
    async with client_on(emulator) as client:
        start = loop.time()
        fan_out = asyncio.create_task(client.gather_segment_tasks(keys))
        latencies = []
        for _ in range(20):
            await asyncio.sleep(0.5)
            sent = loop.time()
            await client.get_segment_task(*KEY)
            latencies.append(loop.time() - sent)
        outcomes = await fan_out
        wall = loop.time() - start
    assert all(outcome.ok for outcome in outcomes)
    # Each single call waited behind at most one bulk request, not behind the queue.
    assert max(latencies) <= 0.25, latencies
    # The fan-out still used what the single calls left.
    assert wall <= 1.05 * (900 + 20) / 60
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= 60


@pytest.mark.looptime
async def test_bulk_work_queues_only_behind_bulk_work_on_the_same_limiter() -> None:
    emulator = Emulator(qps=None)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(5)]
    loop = asyncio.get_running_loop()
    async with (
        client_on(emulator, limiter=LocalRateLimiter(1.0)) as slow,
        client_on(emulator, limiter=FeedbackRecorder()) as fast,
    ):
        slow_fan_out = asyncio.create_task(slow.gather_segment_tasks(keys))
        await asyncio.sleep(0.1)  # a slow fan-out waits at its limiter, one request a second
        start = loop.time()
        outcomes = await fast.gather_segment_tasks(keys)
        assert loop.time() - start < 0.5  # not behind the slow one's queue
        assert all(outcome.ok for outcome in outcomes)
        assert all(outcome.ok for outcome in await slow_fan_out)


# -- the limiter wait in client.stats -----------------------------------------------------------


@pytest.mark.looptime
async def test_stats_give_the_limiter_wait_percentiles_and_who_is_waiting() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=2.0) as client:
        assert (client.stats.limiter_wait_p50, client.stats.limiter_wait_p99) == (None, None)
        calls = [asyncio.create_task(client.get_segment_task(*KEY)) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert client.stats.waiting_for_limiter == 4  # the first has gone, four wait
        await asyncio.gather(*calls)
        stats = client.stats
    assert stats.waiting_for_limiter == 0
    # All five asked at once; each waited until the limiter let it go, when it arrived.
    arrivals = sorted(record.arrival for record in emulator.requests)
    waits = [at - arrivals[0] for at in arrivals]
    assert waits[-1] >= 2.0  # at 2 per second the last waited at least 2 s
    assert stats.limiter_wait_p50 == pytest.approx(waits[2], abs=1e-3)  # nearest rank
    assert stats.limiter_wait_p99 == pytest.approx(waits[4], abs=1e-3)


@pytest.mark.looptime
async def test_the_limiter_wait_percentiles_cover_the_last_minute() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=1.0) as client:
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(3)))
        slow = client.stats.limiter_wait_p99
        assert slow is not None and slow >= 2.0
        await asyncio.sleep(30)
        await client.get_segment_task(*KEY)  # no wait: the limiter has long been idle
        assert client.stats.limiter_wait_p99 == slow  # the slow ones are still in the window
        await asyncio.sleep(45)  # now only the quick one is
        stats = client.stats
        assert stats.limiter_wait_p50 == stats.limiter_wait_p99 == pytest.approx(0.0, abs=1e-3)
        await asyncio.sleep(60)
        assert client.stats.limiter_wait_p50 is None


# -- the wait between attempts (Backoff) --------------------------------------------------------


class EdgeRandom(random.Random):
    """Draws the top of every range it is asked for, and keeps the ranges."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b


def test_the_wait_before_each_retry_is_drawn_below_a_doubling_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0)
    rng = EdgeRandom()
    waits = [backoff.delay(retry, None, rng) for retry in range(1, 6)]
    # Uniform in [0, min(maximum, initial * 2 ** (retry - 1))].
    assert rng.ranges == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_the_wait_the_service_asks_for_is_kept_within_the_cap_and_never_negative() -> None:
    backoff = Backoff(retry_after_cap=30.0)
    rng = EdgeRandom()
    assert backoff.delay(1, 4.5, rng) == 4.5
    assert backoff.delay(3, 120.0, rng) == 30.0
    assert backoff.delay(2, -5.0, rng) == 0.0
    assert rng.ranges == []  # no jitter on a wait the service asked for


def test_a_disabled_backoff_never_waits() -> None:
    backoff = Backoff.disabled()
    assert backoff == Backoff(enabled=False)
    assert backoff.delay(4, None, EdgeRandom()) == 0.0
    assert backoff.delay(1, 10.0, EdgeRandom()) == 0.0


@pytest.mark.looptime
async def test_a_retry_sleeps_its_backoff_and_books_it_as_backing_off() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.retry_after = 1
    emulator.faults.next(2, Fault.HTTP_429)  # each asks for a one-second wait
    loop = asyncio.get_running_loop()
    async with client_on(emulator, limiter=FeedbackRecorder(), backoff=Backoff()) as client:
        start = loop.time()
        await client.get_segment_task(*KEY)
        assert loop.time() - start == pytest.approx(2.0, abs=0.01)
        for _ in range(2):
            emulator.faults.next(3, Fault.HTTP_429)
            with pytest.raises(DeadlineExceededError) as caught:
                await client.get_segment_task(*KEY, deadline=2.5)
        assert client.stats.errors == {"DeadlineExceededError": 2}
    # Two waits of a second were slept; a third could not finish in the 0.5 s left.
    error = caught.value
    assert error.backing_off == pytest.approx(2.0, abs=0.01)
    assert (error.action, error.key, error.attempts, error.ambiguous) == (
        "GetSegmentTask",
        KEY,
        3,
        True,
    )


# -- what the path logs -------------------------------------------------------------------------


def caller_messages(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "rtc_segment" and record.getMessage().startswith(prefix)
    ]


@pytest.mark.looptime
async def test_each_answer_and_each_retry_is_logged_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator = Emulator(qps=None, latency=0.25)
    emulator.add_task(*KEY)
    emulator.faults.retry_after = 1
    emulator.faults.next(1, Fault.HTTP_429)
    limiter = FeedbackRecorder()
    with caplog.at_level(logging.DEBUG, logger="rtc_segment"):
        async with client_on(emulator, limiter=limiter, backoff=Backoff()) as client:
            await client.get_segment_task(*KEY)
            with pytest.raises(InvalidParameterError) as caught:  # unknown to the emulator
                await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
    assert caller_messages(caplog, "GetSegmentTask ") == [
        "GetSegmentTask app/room/task -> HTTP 429 in 250.0 ms",
        "GetSegmentTask attempt 1 failed (ThrottledError); retrying in 1.000 s",
        "GetSegmentTask app/room/task -> HTTP 200 in 250.0 ms",
    ]
    assert caught.value.http_status == 404
    assert caller_messages(caplog, "GetRoomInfo ") == ["GetRoomInfo  -> HTTP 404 in 250.0 ms"]


# -- throttling: feedback to the limiter, and the shared-quota warning -------------------------


class PacingLimiter(FeedbackRecorder):
    """A limiter that says who shares it and how fast it sends."""

    def __init__(self, qps: float, scope: object, rate: object) -> None:
        super().__init__(qps)
        self.scope = scope
        self.rate = rate


SHARED_QUOTA_WARNING = (
    "GetSegmentTask answers keep being throttled although this client paces within the "
    "{qps} QPS ceiling: something else likely uses the account's quota -- another consumer "
    "of the account (another program, SDK or tool), or processes on other hosts without a "
    "shared limiter (RedisRateLimiter). The limiter (scope: {scope}) backs off while they "
    "go on{rate}."
)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("says", "qps", "scope", "rate"),
    [
        (True, "12.5", "process", "; it sends 27.9 requests/s now"),
        (False, "60", "unknown", ""),  # a limiter that says neither its scope nor its rate
    ],
)
async def test_persisting_throttles_warn_once_that_someone_else_uses_the_quota(
    caplog: pytest.LogCaptureFixture, says: bool, qps: str, scope: str, rate: str
) -> None:
    limiter = PacingLimiter(12.5, "process", 27.94) if says else FeedbackRecorder(60.0)
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.retry_after = 1
    emulator.faults.next(4, Fault.HTTP_429)
    with caplog.at_level(logging.WARNING, logger="rtc_segment"):
        async with client_on(emulator, limiter=limiter, backoff=Backoff(), max_retries=5) as client:
            await client.get_segment_task(*KEY)  # throttled at 0, 1, 2 and 3 s
            stats = client.stats
    assert limiter.throttles == stats.throttled == 4  # each one told to the limiter
    # (Other warnings may come, e.g. the default limiters of other actions saying they
    # cannot share the host's state; only those about throttling count here.)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "throttled" in r.getMessage().lower()
    ]
    assert warnings == [SHARED_QUOTA_WARNING.format(qps=qps, scope=scope, rate=rate)]


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(27.94, 27.94), (7, 7.0), (True, None), ("5", None), (None, None)],
)
async def test_stats_show_the_limiters_rate_only_when_it_is_a_number(
    rate: object, shown: float | None
) -> None:
    emulator = Emulator(qps=None)
    limiter = PacingLimiter(60.0, "process", rate) if rate is not None else FeedbackRecorder()
    async with client_on(emulator, limiter=limiter) as client:
        stats = client.stats
    assert stats.limiter_rate == shown
    assert stats.limiter_rate is None or type(stats.limiter_rate) is float
    assert stats.limiter_scope == ("process" if rate is not None else None)


# -- attempts, retries and what a failed call says ----------------------------------------------

ENDPOINT = "https://rtc.volcengineapi.com"


def answer(status: int, code: str | None = None, result: Any = None) -> httpx.Response:
    metadata: dict[str, Any] = {"RequestId": f"req-{status}", "Action": "GetSegmentTask"}
    if code is not None:
        metadata["Error"] = {"Code": code, "Message": "m"}
    return httpx.Response(status, json={"ResponseMetadata": metadata, "Result": result or {}})


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=ENDPOINT, assert_all_called=False) as router:
        yield router


class DerivingLimiter(FeedbackRecorder):
    """A limiter that makes the limiters of other actions (as RedisRateLimiter does)."""

    def __init__(self) -> None:
        super().__init__()
        self.derived: dict[str, FeedbackRecorder] = {}

    def for_action(self, action: str, qps: float) -> FeedbackRecorder:
        self.derived[action] = FeedbackRecorder(qps)
        return self.derived[action]


def mocked_client(**kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("limiter", DerivingLimiter())  # no waiting, for any action
    return SegmentClient(**kwargs)


def always(status: int, code: str | None = None) -> Any:
    return lambda request: answer(status, code)


NOT_FOUND = "InvalidParameter.ErrorActiveTaskNotFound"


def scripted(*specs: Any) -> Any:
    """A respx side effect that answers with each spec in turn: ``(status, code)``, or an
    httpx exception class to raise."""
    queue = list(specs)

    def serve(request: httpx.Request) -> httpx.Response:
        spec = queue.pop(0)
        if isinstance(spec, type):
            raise spec("scripted", request=request)
        return answer(*spec)

    return serve


@pytest.mark.parametrize(
    ("answers", "attempts", "ambiguous"),
    [
        ([(400, NOT_FOUND)], 1, False),  # answered: it did not happen
        ([(503, None), (400, NOT_FOUND)], 2, True),  # the 503 may have landed
        ([httpx.ConnectError, (400, NOT_FOUND)], 2, False),  # never sent
        # The answer has no SegmentTask: parsing it says so.
        ([(200, None)], 1, False),
        ([(503, None), (200, None)], 2, True),
    ],
)
async def test_a_call_that_may_have_landed_once_stays_ambiguous(
    mock: respx.MockRouter, answers: list[Any], attempts: int, ambiguous: bool
) -> None:
    route = mock.get("/").mock(side_effect=scripted(*answers, *answers))
    async with mocked_client() as client:
        for _ in range(2):
            with pytest.raises(TaskNotFoundError) as caught:
                await client.get_segment_task(*KEY)
            assert caught.value.attempts == attempts
            assert caught.value.ambiguous is ambiguous
        stats = client.stats
    assert route.call_count == 2 * attempts
    assert (stats.errors, stats.succeeded, stats.retries) == (
        {"TaskNotFoundError": 2},
        0,
        2 * (attempts - 1),
    )


async def test_a_stale_signature_is_signed_again_once_even_without_retries(
    mock: respx.MockRouter,
) -> None:
    served = 0

    def serve(request: httpx.Request) -> httpx.Response:
        nonlocal served
        served += 1
        assert served <= 3, "the client keeps signing again"
        return answer(400, "InvalidTimestamp")

    mock.get("/").mock(side_effect=serve)
    async with mocked_client(max_retries=0) as client:
        with pytest.raises(AuthenticationError, match="InvalidTimestamp") as caught:
            await client.get_segment_task(*KEY)
    assert served == 2
    assert caught.value.attempts == 2


async def test_a_request_that_was_never_sent_is_not_ambiguous(mock: respx.MockRouter) -> None:
    mock.get("/").mock(side_effect=httpx.ConnectError("refused"))
    async with mocked_client(max_retries=2) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_segment_task(*KEY)
    assert caught.value.attempts == 3 and caught.value.ambiguous is False
    assert (caught.value.action, caught.value.key) == ("GetSegmentTask", KEY)


@pytest.mark.looptime
async def test_a_dropped_connection_on_any_transport_names_the_call() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.DROP)
    async with client_on(emulator, limiter=FeedbackRecorder(), max_retries=0) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_segment_task(*KEY)
    error = caught.value
    assert (error.action, error.key, error.attempts, error.ambiguous) == (
        "GetSegmentTask",
        KEY,
        1,
        True,
    )


@pytest.mark.parametrize(
    ("idempotent", "failure", "sent"),
    [
        (False, httpx.ConnectError("refused"), 2),  # never sent: safe to send again
        (False, httpx.RemoteProtocolError("dropped"), 1),  # may have landed: not again
        (True, httpx.RemoteProtocolError("dropped"), 2),  # landing twice is harmless
    ],
)
async def test_an_action_that_is_not_idempotent_is_retried_only_when_it_was_never_sent(
    mock: respx.MockRouter, idempotent: bool, failure: Exception, sent: int
) -> None:
    route = mock.post("/").mock(side_effect=[failure, answer(200)])
    async with mocked_client() as client:
        outcome = client.call(
            "StartRecord", "2023-11-01", qps=10.0, json={"RoomId": "r"}, idempotent=idempotent
        )
        if sent == 1:
            with pytest.raises(TransportError) as caught:
                await outcome
            assert caught.value.ambiguous and caught.value.attempts == 1
        else:
            assert (await outcome).http_status == 200
    assert route.call_count == sent


async def test_requests_carry_the_clients_headers_and_a_json_body_its_type(
    mock: respx.MockRouter,
) -> None:
    get = mock.get("/").mock(side_effect=always(200))
    post = mock.post("/").mock(side_effect=always(200))
    async with mocked_client() as client:
        await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
        await client.call("StartRecord", "2023-11-01", qps=10.0, json={"RoomId": "r"})
    for route in (get, post):
        headers = route.calls.last.request.headers
        assert headers["Accept"] == "application/json"
        assert headers["Accept-Encoding"] == "identity"
        assert headers["User-Agent"] == f"rtc-segment/{__version__} httpx/{httpx.__version__}"
    assert "Content-Type" not in get.calls.last.request.headers
    assert post.calls.last.request.headers["Content-Type"] == "application/json"
    assert json.loads(post.calls.last.request.content) == {"RoomId": "r"}


async def test_each_action_waits_on_its_own_limiter_at_its_own_ceiling(
    mock: respx.MockRouter,
) -> None:
    mock.get("/").mock(side_effect=always(200))
    limiter = DerivingLimiter()
    async with mocked_client(limiter=limiter) as client:
        await client.call("GetRoomInfo", "2023-11-01", qps=7.0)
        await client.call("GetRoomInfo", "2023-11-01", qps=7.0)
    assert limiter.acquired == 0  # the primary action's limiter was not asked
    room_info = limiter.derived["GetRoomInfo"]
    assert (room_info.qps, room_info.acquired) == (7.0, 2)


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("https://rtc.volcengineapi.com", "rtc.volcengineapi.com", 443),
        ("http://127.0.0.1", "127.0.0.1", 80),
        ("http://127.0.0.1:8080", "127.0.0.1", 8080),
    ],
)
async def test_hooks_are_told_the_server_and_port_requests_go_to(
    endpoint: str, address: str, port: int
) -> None:
    with respx.mock(base_url=endpoint) as local:
        local.get("/").mock(side_effect=always(200))
        async with mocked_client(endpoint=endpoint) as client:
            with CallRecorder() as recorded:
                await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
    assert recorded.started == [CallDetails("GetRoomInfo", None, False, address, port)]
    # No wait at this limiter: the turn came at once (one-sided, in real time).
    assert len(recorded.limiter_waits) == 1 and 0.0 <= recorded.limiter_waits[0] < 5.0


async def test_a_closed_client_says_so_and_sends_nothing(mock: respx.MockRouter) -> None:
    route = mock.get("/").mock(side_effect=always(200))
    client = mocked_client()
    assert client.closed is False
    await client.aclose()
    assert client.closed is True
    with pytest.raises(ClientClosedError) as caught:
        await client.get_segment_task(*KEY)
    assert caught.value.message == "this SegmentClient is closed"
    assert route.call_count == 0


# -- timeouts, and exchanges left behind --------------------------------------------------------


class HangingTransport(httpx.AsyncBaseTransport):
    """A transport (not httpcore's) whose requests are never answered."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def _hang(request: httpx.Request) -> httpx.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.looptime
@pytest.mark.timeout(30)  # a client that never times out would hang
@pytest.mark.parametrize("sheltered", [True, False], ids=["httpcore", "other-transport"])
async def test_an_unanswered_attempt_times_out_with_a_clear_message(
    mock: respx.MockRouter, sheltered: bool
) -> None:
    mock.get("/").mock(side_effect=_hang)
    transport = None if sheltered else HangingTransport()
    loop = asyncio.get_running_loop()
    async with mocked_client(timeout=2.0, max_retries=0, transport=transport) as client:
        start = loop.time()
        with pytest.raises(ClientTimeoutError) as caught:
            await client.get_segment_task(*KEY)
        assert loop.time() - start == pytest.approx(2.0, abs=0.01)
        with pytest.raises(DeadlineExceededError) as cut:  # a deadline shorter than the timeout
            await client.get_segment_task(*KEY, deadline=1.5)
    error = caught.value
    assert error.message == "no complete answer within the 2 s timeout"
    assert (error.action, error.key, error.attempts, error.ambiguous) == (
        "GetSegmentTask",
        KEY,
        1,
        True,
    )
    assert cut.value.in_attempts == pytest.approx(1.5, abs=0.01)
    assert (cut.value.action, cut.value.key, cut.value.attempts, cut.value.ambiguous) == (
        "GetSegmentTask",
        KEY,
        1,
        True,
    )


class StallingBody(httpx.AsyncByteStream):
    """An answer whose body stops coming after its first bytes."""

    async def __aiter__(self) -> Any:
        yield b'{"ResponseMetadata": '
        await asyncio.Event().wait()


@pytest.mark.looptime
@pytest.mark.timeout(30)
async def test_an_exchange_left_behind_reading_a_stalled_body_still_ends(
    mock: respx.MockRouter,
) -> None:
    mock.get("/").mock(return_value=httpx.Response(200, stream=StallingBody()))
    async with mocked_client(timeout=2.0, max_retries=0, max_connections=1) as client:
        assert client.max_connections == 1
        with pytest.raises(ClientTimeoutError):
            await client.get_segment_task(*KEY)
        await asyncio.sleep(2.5)  # its body read is bounded by the timeout too
        assert client.stats.in_flight == 0


@pytest.mark.looptime
@pytest.mark.timeout(30)
async def test_exchanges_left_behind_end_quietly_however_they_end(
    mock: respx.MockRouter,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []  # what the loop would log as an error
    loop.set_exception_handler(lambda _, context: reported.append(context))
    release = asyncio.Event()
    arrivals = 0

    async def serve(request: httpx.Request) -> httpx.Response:
        nonlocal arrivals
        arrivals += 1
        number = arrivals
        await release.wait()
        if number == 1:
            raise httpx.RemoteProtocolError("dropped")
        if number == 2:
            return answer(200)
        await asyncio.Event().wait()  # never answered: aclose abandons it
        raise AssertionError("unreachable")

    mock.get("/").mock(side_effect=serve)
    try:
        async with mocked_client(max_retries=0) as client:
            calls = [asyncio.ensure_future(client.get_segment_task(*KEY)) for _ in range(2)]
            await asyncio.sleep(0.1)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            assert client.stats.in_flight == 2  # both still on the wire
            release.set()  # one fails, one is answered: nobody is there to hear either
            await asyncio.wait_for(client._caller.exchanges_settled(), timeout=1.0)
            assert client.stats.in_flight == 0
            third = asyncio.ensure_future(client.get_segment_task(*KEY))
            await asyncio.sleep(0.1)
            third.cancel()
            with pytest.raises(asyncio.CancelledError):
                await third
            assert client.stats.in_flight == 1
        assert client.stats.in_flight == 0  # aclose ended it
        gc.collect()  # an exception never retrieved would be reported now
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


@pytest.mark.looptime
async def test_requests_on_the_wire_are_counted_in_flight() -> None:
    emulator = Emulator(qps=None, latency=1.0)
    emulator.add_task(*KEY)
    async with client_on(emulator, limiter=FeedbackRecorder()) as client:
        calls = [asyncio.create_task(client.get_segment_task(*KEY)) for _ in range(3)]
        await asyncio.sleep(0.5)
        assert client.stats.in_flight == 3
        assert client.stats.waiting_for_limiter == 0  # on the wire, not waiting
        await asyncio.gather(*calls)
        assert client.stats.in_flight == 0


class BrokenOnceLimiter(FeedbackRecorder):
    """A limiter whose first acquire fails (e.g. its shared store is unreachable)."""

    async def acquire(self) -> None:
        await super().acquire()
        if self.acquired == 1:
            raise RuntimeError("the limiter is down")


@pytest.mark.looptime
async def test_a_limiter_failure_gives_the_connection_slot_back() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with client_on(emulator, limiter=BrokenOnceLimiter(), max_connections=1) as client:
        with pytest.raises(RuntimeError, match="limiter is down"):
            await client.get_segment_task(*KEY)
        assert (client.stats.in_flight, client.stats.waiting_for_limiter) == (0, 0)
        await asyncio.wait_for(client.get_segment_task(*KEY), timeout=1.0)
    assert emulator.count() == 1


# -- the typical round trip, and the retry it decides against ------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize(("deadline", "retried"), [(1.0, True), (0.8, False)])
async def test_a_retry_is_started_only_if_a_typical_round_trip_fits_the_deadline(
    deadline: float, retried: bool
) -> None:
    # Round trips of 1.0, 0.1 and 0.1 s: the typical one follows slowly (an exponential
    # moving average: 1.0, then 0.91, then 0.829 s), so a retry needs more than 0.829 s.
    latencies = iter([1.0, 0.1, 0.1, 0.1])
    emulator = Emulator(qps=None, latency=lambda rng: next(latencies))
    emulator.add_task(*KEY)
    async with client_on(
        emulator, limiter=FeedbackRecorder(), backoff=Backoff.disabled()
    ) as client:
        await client.get_segment_task(*KEY)
        await client.get_segment_task(*KEY)
        emulator.faults.next(1, Fault.HTTP_500)
        if retried:  # 0.9 s are left after the first attempt
            await client.get_segment_task(*KEY, deadline=deadline)
        else:  # 0.7 s are left
            with pytest.raises(DeadlineExceededError) as caught:
                await client.get_segment_task(*KEY, deadline=deadline)
            assert caught.value.attempts == 1
    assert emulator.count() == (4 if retried else 3)


@pytest.mark.looptime
async def test_before_any_round_trip_a_retry_needs_only_its_backoff_to_fit(
    mock: respx.MockRouter,
) -> None:
    mock.get("/").mock(side_effect=[httpx.ConnectError("refused"), answer(200)])
    async with mocked_client() as client:
        result = await client.call("GetRoomInfo", "2023-11-01", qps=10.0, deadline=0.5)
    assert result.http_status == 200


# -- credentials: providers that fail, wait, rotate ------------------------------------------------


class ScriptedProvider:
    """A provider of temporary credentials, scripted by the test."""

    name = "scripted"

    def __init__(self, *keys: Credentials, fresh: bool = True, load_seconds: float = 0.0) -> None:
        self.keys = list(keys)
        self.fresh = fresh
        self.load_seconds = load_seconds
        self.load_timeouts: list[float | None] = []
        self.rejected: list[Credentials] = []
        self.currents = 0

    def current(self) -> Credentials | None:
        self.currents += 1
        return self.keys[0] if self.fresh else None

    async def load(self, *, timeout: float | None = None) -> Credentials:
        self.load_timeouts.append(timeout)
        await asyncio.sleep(self.load_seconds)
        self.fresh = True
        return self.keys[0]

    def reject(self, credentials: Credentials) -> bool:
        self.rejected.append(credentials)
        if credentials is self.keys[0] and len(self.keys) > 1:
            self.keys.pop(0)
        return len(self.rejected) < 10  # a client that loops would not hang the test


KEY_A = Credentials("AKLTkeyA", "secret-a", "token-a")
KEY_B = Credentials("AKLTkeyB", "secret-b", "token-b")


def signed_with(request: httpx.Request) -> str:
    return request.headers["Authorization"].split("Credential=")[1].split("/")[0]


@pytest.mark.parametrize(
    ("refused", "code", "sent", "rejected"),
    [
        ({"AKLTkeyA"}, "ExpiredToken", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA"}, "InvalidSecurityToken", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA"}, "InvalidAccessKey", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA"}, "InvalidClientTokenId", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA"}, "InvalidCredential", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA"}, "SignatureDoesNotMatch", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # cured
        ({"AKLTkeyA", "AKLTkeyB"}, "ExpiredToken", ["AKLTkeyA", "AKLTkeyB"], [KEY_A]),  # once
        ({"AKLTkeyA"}, "AccessDenied", ["AKLTkeyA"], []),  # new keys cannot cure it
    ],
)
async def test_refused_temporary_credentials_are_replaced_once_per_call(
    mock: respx.MockRouter, refused: set[str], code: str, sent: list[str], rejected: list[Any]
) -> None:
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(signed_with(request))
        return answer(401, code) if seen[-1] in refused else answer(200)

    mock.post("/").mock(side_effect=serve)
    provider = ScriptedProvider(KEY_A, KEY_B)
    async with mocked_client(credentials=provider, max_retries=3) as client:
        outcome = client.call("StartRecord", "2023-11-01", qps=10.0, json={})
        if "AKLTkeyB" in refused or len(sent) == 1:
            with pytest.raises(AuthenticationError, match=code):
                await outcome
        else:
            assert (await outcome).http_status == 200
    assert seen == sent
    assert provider.rejected == rejected


class RefreshingLimiter(FeedbackRecorder):
    """A limiter during whose wait the provider's refresh lands."""

    def __init__(self, provider: ScriptedProvider) -> None:
        super().__init__()
        self.provider = provider

    async def acquire(self) -> None:
        await super().acquire()
        if self.acquired == 1:
            self.provider.keys.pop(0)  # key A is replaced by key B meanwhile

    def for_action(self, action: str, qps: float) -> RefreshingLimiter:
        return self


async def test_an_attempt_signs_with_the_newest_key_and_reports_that_one_if_refused(
    mock: respx.MockRouter,
) -> None:
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(signed_with(request))
        return answer(401, "ExpiredToken") if len(seen) == 1 else answer(200)

    mock.get("/").mock(side_effect=serve)
    provider = ScriptedProvider(KEY_A, KEY_B, Credentials("AKLTkeyC", "secret-c", "token-c"))
    async with mocked_client(credentials=provider, limiter=RefreshingLimiter(provider)) as client:
        await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
    assert seen == ["AKLTkeyB", "AKLTkeyC"]
    assert provider.rejected == [KEY_B]


@pytest.mark.parametrize("own_action", [None, "AssumeRole"])
async def test_credentials_that_cannot_be_had_fail_the_call_before_sending(
    mock: respx.MockRouter, own_action: str | None
) -> None:
    route = mock.get("/").mock(side_effect=always(200))

    class Unavailable(ScriptedProvider):
        async def load(self, *, timeout: float | None = None) -> Credentials:
            raise CredentialsUnavailableError("the STS refused", action=own_action)

    async with mocked_client(credentials=Unavailable(KEY_A, fresh=False)) as client:
        for _ in range(2):
            with pytest.raises(CredentialsUnavailableError) as caught:
                await client.get_segment_task(*KEY)
        assert client.stats.errors == {"CredentialsUnavailableError": 2}
    assert caught.value.action == (own_action or "GetSegmentTask")
    assert caught.value.key == KEY
    assert route.call_count == 0


@pytest.mark.looptime
async def test_a_call_waits_for_credentials_within_its_deadline(mock: respx.MockRouter) -> None:
    route = mock.get("/").mock(side_effect=always(200))
    provider = ScriptedProvider(KEY_A, fresh=False, load_seconds=1.0)
    async with mocked_client(credentials=provider) as client:
        await client.call("GetRoomInfo", "2023-11-01", qps=10.0, deadline=3.0)
        provider.fresh = False
        await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
        provider.fresh, provider.load_seconds = False, 10.0
        for _ in range(2):
            with pytest.raises(DeadlineExceededError) as caught:
                await client.call("GetRoomInfo", "2023-11-01", qps=10.0, deadline=2.0)
        assert client.stats.errors == {"DeadlineExceededError": 2}
    assert provider.load_timeouts == [pytest.approx(3.0), None] + [pytest.approx(2.0)] * 2
    error = caught.value
    assert error.queued == pytest.approx(2.0, abs=0.01)  # waiting for credentials is queueing
    assert (error.attempts, error.ambiguous, error.in_attempts) == (0, False, 0.0)
    assert error.last_error is None
    assert route.call_count == 2


@pytest.mark.parametrize("deadline", [30.0, 0.5])
async def test_a_provider_that_times_out_on_its_own_is_not_a_deadline(
    mock: respx.MockRouter, deadline: float
) -> None:
    # (However little of the deadline is left, as long as some is.)
    class TimingOut(ScriptedProvider):
        async def load(self, *, timeout: float | None = None) -> Credentials:
            raise TimeoutError("the STS did not answer")

    async with mocked_client(credentials=TimingOut(KEY_A, fresh=False)) as client:
        with pytest.raises(TimeoutError, match="STS") as caught:
            await client.call("GetRoomInfo", "2023-11-01", qps=10.0, deadline=deadline)
    assert not isinstance(caught.value, DeadlineExceededError)


async def test_usable_credentials_are_never_fetched_again(mock: respx.MockRouter) -> None:
    mock.get("/").mock(side_effect=always(200))
    provider = ScriptedProvider(KEY_A)
    async with mocked_client(credentials=provider) as client:
        for _ in range(3):
            await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
    assert provider.load_timeouts == []  # current() had them: no load, no STS request


async def test_a_key_that_lapses_during_the_limiter_wait_still_signs_its_request(
    mock: respx.MockRouter,
) -> None:
    # The key read before the turn is the one to sign with if the provider has none after
    # it (a refresh failed meanwhile): never a request signed with nothing.
    class Lapsing(ScriptedProvider):
        def current(self) -> Credentials | None:
            self.currents += 1
            return self.keys[0] if self.currents % 2 else None  # before the turn only

    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(signed_with(request))
        return answer(200)

    mock.get("/").mock(side_effect=serve)
    async with mocked_client(credentials=Lapsing(KEY_A)) as client:
        await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
    assert seen == ["AKLTkeyA"]


async def test_an_answer_without_the_task_names_the_call_and_counts_no_success(
    mock: respx.MockRouter,
) -> None:
    mock.get("/").mock(side_effect=lambda request: answer(200, result={"Other": 1}))
    async with mocked_client() as client:
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_segment_task(*KEY)
        assert client.stats.succeeded == 0
    assert (caught.value.action, caught.value.key) == ("GetSegmentTask", KEY)
    assert caught.value.attempts == 1


async def test_every_success_is_counted(mock: respx.MockRouter) -> None:
    mock.get("/").mock(side_effect=always(200))
    async with mocked_client() as client:
        for _ in range(3):
            await client.call("GetRoomInfo", "2023-11-01", qps=10.0)
        assert client.stats.succeeded == 3


async def test_a_fixed_key_is_the_signers_own_and_a_providers_keys_are_not() -> None:
    async with mocked_client(credentials=KEY_A) as fixed:
        assert fixed._caller.signer.credentials is KEY_A
    async with mocked_client(credentials=ScriptedProvider(KEY_A)) as provided:
        assert provided._caller.signer.credentials is None


class MinimalLimiter:
    """A limiter with only what RateLimiter requires: no feedback hooks, no scope, no rate."""

    qps = 60.0

    async def acquire(self) -> None:
        return None


@pytest.mark.looptime
async def test_a_limiter_without_feedback_hooks_is_not_told_anything() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.HTTP_429)
    async with client_on(emulator, limiter=MinimalLimiter(), backoff=Backoff.disabled()) as client:
        await client.get_segment_task(*KEY)
        stats = client.stats
    assert (stats.throttled, stats.succeeded, stats.limiter_rate, stats.limiter_scope) == (
        1,
        1,
        None,
        None,
    )


@pytest.mark.timeout(60)
async def test_an_exchange_left_behind_on_a_silent_server_ends_within_the_timeout() -> None:
    # In real time, over loopback: a server that accepts and never answers. The call gives
    # up at its timeout; the exchange it leaves behind is bounded by the same timeout
    # (httpx's own), so it ends too and gives back its connection slot.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client goes
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with mocked_client(
            endpoint=f"http://127.0.0.1:{port}", timeout=0.5, max_retries=0
        ) as client:
            with pytest.raises(ClientTimeoutError):
                await client.get_segment_task(*KEY)
            await asyncio.wait_for(client._caller.exchanges_settled(), timeout=10.0)
            assert client.stats.in_flight == 0
    finally:
        server.close()
        await server.wait_closed()


class StallingHook:
    """A hook that blocks the loop when told of the limiter wait (a slow exporter, say)."""

    def on_call(self, call: CallDetails) -> StallingHook:
        return self

    def on_run(self, run: Any) -> None:
        return None

    def on_limiter_wait(self, seconds: float) -> None:
        time.sleep(0.05)

    def on_retry(self, retry: Any) -> None:
        return None

    def on_end(self, result: Any) -> None:
        return None


async def test_a_turn_that_comes_as_the_deadline_runs_out_sends_nothing(
    mock: respx.MockRouter,
) -> None:
    # In real time: the 0.05 s the hook blocks can only be longer on a busy machine.
    route = mock.get("/").mock(side_effect=always(200))
    set_call_hooks([StallingHook()])
    async with mocked_client() as client:
        with pytest.raises(DeadlineExceededError) as caught:
            await client.call("GetRoomInfo", "2023-11-01", qps=10.0, deadline=0.01)
    assert (caught.value.attempts, caught.value.ambiguous) == (0, False)
    assert route.call_count == 0


@pytest.mark.looptime
async def test_a_post_is_signed_over_its_body() -> None:
    emulator = Emulator(qps=None)  # it verifies every signature, the body's hash included
    emulator.add_task(*KEY)
    async with client_on(emulator, limiter=DerivingLimiter(), max_retries=0) as client:
        await client.stop_segment(*KEY)
    assert [(r.action, r.http_status) for r in emulator.requests] == [("StopSegment", 200)]


async def test_an_oversized_answer_names_the_call(mock: respx.MockRouter) -> None:
    oversized = b"{" + b" " * MAX_RESPONSE_BYTES + b"}"
    mock.get("/").mock(side_effect=lambda request: httpx.Response(200, content=oversized))
    async with mocked_client(max_retries=0) as client:
        with pytest.raises(ResponseFormatError, match="limit") as caught:
            await client.get_segment_task(*KEY)
    assert (caught.value.action, caught.value.key) == ("GetSegmentTask", KEY)


@pytest.mark.looptime
@pytest.mark.timeout(30)
async def test_a_deadline_that_cuts_a_retry_short_says_why_the_first_attempt_failed(
    mock: respx.MockRouter,
) -> None:
    mock.get("/").mock(side_effect=[answer(503), _hang])
    async with mocked_client(timeout=10.0) as client:
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get_segment_task(*KEY, deadline=2.0)
    error = caught.value
    assert isinstance(error.last_error, ServerError)
    assert (error.attempts, error.ambiguous) == (2, True)
