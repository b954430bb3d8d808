"""Fan-out scheduling (rtc_segment._fanout.OutcomeStream) against a fake fetcher.

The fake paces on a real limiter in virtual time and answers from a script, so these tests
pin down the scheduler itself: one outcome per key, laziness, the concurrency bound,
cancellation and ordering. tests/test_scheduling_emulator.py runs the real client end to end.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from _fetcher_fake import RUNNING, FakeClient, max_in_window

from rtc_segment._errors import ServerError, TaskNotFoundError
from rtc_segment._fanout import OutcomeStream, gather_outcomes
from rtc_segment._models import SegmentTask, TaskKey
from rtc_segment._scheduling import default_concurrency


def keys(n: int, prefix: str = "t") -> list[TaskKey]:
    return [TaskKey("app", f"room{i}", f"{prefix}{i}") for i in range(n)]


def raiser(error: BaseException) -> Any:
    def answer(key: TaskKey, now: float) -> SegmentTask:
        raise error

    return answer


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def settle() -> None:
    """Let cancelled tasks run their handlers (no virtual time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """A key generator that records how far it has been pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[TaskKey]:
        for i in range(self.n):
            self.pulled = i + 1
            yield TaskKey("app", "room", f"t{i}")


@pytest.mark.looptime
async def test_exactly_one_outcome_per_key_whatever_fails() -> None:
    client = FakeClient(
        script={
            "t1": raiser(ServerError("boom")),
            "t2": raiser(TaskNotFoundError("gone")),
            "t3": raiser(RuntimeError("a bug")),
            "t4": raiser(KeyError("another bug")),
        }
    )
    inputs: list[Any] = [
        *keys(6),
        ("app", "room", "bad id!"),  # invalid id: ValueError, no request
        ("app", "room"),  # not a 3-tuple: TypeError
        ("app", "room", 7),  # not a str: TypeError
        ("app", "room", "t0"),  # a duplicate is fetched again
    ]
    outcomes = [o async for o in OutcomeStream(client, inputs, concurrency=3)]  # type: ignore[arg-type]

    assert Counter(o.key for o in outcomes) == Counter(
        tuple(k) if isinstance(k, tuple) and len(k) == 3 else k for k in inputs
    )
    by_id = {o.key[2]: o for o in outcomes if len(o.key) == 3}
    assert isinstance(by_id["t1"].error, ServerError)
    assert isinstance(by_id["t2"].error, TaskNotFoundError)
    assert isinstance(by_id["t3"].error, RuntimeError)
    assert isinstance(by_id["t4"].error, KeyError)
    assert isinstance(by_id["bad id!"].error, ValueError)
    assert isinstance(by_id[7].error, TypeError)
    assert type(next(o.error for o in outcomes if o.key == ("app", "room"))) is TypeError
    for o in outcomes:
        assert (o.task is None) != (o.error is None)
    assert by_id["t5"].task == RUNNING
    # Invalid keys are never sent; the duplicate is.
    assert sorted(k.task_id for _, k in client.sent) == sorted(
        ["t0", "t0", "t1", "t2", "t3", "t4", "t5"]
    )


@pytest.mark.looptime
async def test_async_source_and_completion_order() -> None:
    latencies = {"slow": 5.0, "fast": 0.1}

    class Client(FakeClient):
        async def fetch_task(self, key: TaskKey, **_: object) -> SegmentTask:
            await asyncio.sleep(latencies[key.room_id])
            return RUNNING

    async def source() -> AsyncIterator[TaskKey]:
        yield TaskKey("a", "slow", "t0")
        yield TaskKey("a", "fast", "t1")
        await asyncio.sleep(1.0)  # a slow source does not hold back finished outcomes
        yield TaskKey("a", "fast", "t2")

    loop = asyncio.get_running_loop()
    seen = []
    async for outcome in OutcomeStream(Client(), source(), concurrency=4):
        seen.append((outcome.key.task_id, round(loop.time(), 3)))
    assert seen == [("t1", 0.1), ("t2", 1.1), ("t0", 5.0)]


@pytest.mark.looptime
async def test_keys_are_pulled_lazily_and_memory_is_bounded_by_concurrency() -> None:
    client = FakeClient(qps=1000.0, latency=0.01)
    source = Recorder(1_000_000)
    stream = OutcomeStream(client, source, concurrency=5)
    assert source.pulled == 0  # nothing happens before iteration starts

    received = 0
    async for _ in stream:
        received += 1
        # Never more than `concurrency` keys ahead of what the consumer has taken.
        assert source.pulled - received <= 5
        assert client.active <= 5
        if received == 50:
            break
    assert source.pulled <= 55


@pytest.mark.looptime
async def test_concurrency_bounds_in_flight_requests() -> None:
    client = FakeClient(qps=10_000.0, latency=1.0)
    outcomes = await gather_outcomes(client, keys(40), concurrency=7)
    assert len(outcomes) == 40
    assert client.peak_active == 7
    # 40 keys, 7 at a time, 1 s each: six rounds.
    assert asyncio.get_running_loop().time() == pytest.approx(6.0, abs=0.01)


@pytest.mark.looptime
async def test_gather_keeps_input_order_though_completion_order_differs() -> None:
    class Client(FakeClient):
        async def fetch_task(self, key: TaskKey, **_: object) -> SegmentTask:
            # Later keys finish first.
            await asyncio.sleep(10.0 - int(key.task_id[1:]))
            if key.task_id == "t3":
                raise ServerError("down")
            return SegmentTask(identifier=key.task_id)

    inputs: list[Any] = [*keys(6), ("x", "y", "")]
    outcomes = await gather_outcomes(Client(), inputs, concurrency=10)  # type: ignore[arg-type]
    assert [o.key for o in outcomes] == [tuple(k) for k in inputs]
    assert [o.task.identifier if o.task else None for o in outcomes] == [
        "t0",
        "t1",
        "t2",
        None,
        "t4",
        "t5",
        None,
    ]
    assert isinstance(outcomes[3].error, ServerError)
    assert isinstance(outcomes[6].error, ValueError)


@pytest.mark.looptime
async def test_gather_of_nothing_is_empty() -> None:
    assert await gather_outcomes(FakeClient(), [], concurrency=None) == []


@pytest.mark.looptime
async def test_break_cancels_in_flight_work_promptly_and_leaks_no_task() -> None:
    client = FakeClient(qps=1000.0, latency=30.0)
    loop = asyncio.get_running_loop()
    async for outcome in OutcomeStream(client, keys(100), concurrency=10):
        assert outcome.ok
        waiting = client.active
        break
    assert waiting == 9
    started = loop.time()
    # CPython drops the iterator at once; elsewhere the collector would.
    gc.collect()
    await settle()
    assert other_tasks() == set()
    assert loop.time() == started  # no waiting for the 30 s requests
    assert client.cancelled == waiting
    assert client.active == 0
    # The client is still usable.
    again = await gather_outcomes(client, keys(3, "again"), concurrency=2)
    assert all(o.ok for o in again)


@pytest.mark.looptime
async def test_aclose_and_async_with_cancel_in_flight_work() -> None:
    client = FakeClient(qps=1000.0, latency=30.0)
    async with OutcomeStream(client, keys(100), concurrency=10) as stream:
        first = await anext(stream)
        assert first.ok
        assert len(other_tasks()) == 10  # the next request is started at once
        waiting = client.active
    assert other_tasks() == set()
    assert client.cancelled == waiting == 9
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await stream.aclose()  # idempotent


@pytest.mark.looptime
async def test_cancelling_the_consumer_cancels_in_flight_work() -> None:
    client = FakeClient(qps=1000.0, latency=30.0)
    received: list[TaskKey] = []

    async def consume() -> None:
        async for outcome in OutcomeStream(client, keys(100), concurrency=10):
            received.append(outcome.key)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(31.0)  # first round done, second in flight
    assert 0 < len(received) < 100
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert other_tasks() == set()
    assert client.cancelled == 10


@pytest.mark.looptime
async def test_a_failing_source_yields_pulled_outcomes_then_raises() -> None:
    def source() -> Iterator[TaskKey]:
        yield from keys(3)
        raise OSError("the key file went away")

    client = FakeClient()
    got: list[TaskKey] = []

    async def consume() -> None:
        async for outcome in OutcomeStream(client, source(), concurrency=10):
            got.append(outcome.key)

    with pytest.raises(OSError, match="key file"):
        await consume()
    assert sorted(got) == keys(3)


@pytest.mark.looptime
async def test_a_failing_async_source_yields_pulled_outcomes_then_raises() -> None:
    async def source() -> AsyncIterator[TaskKey]:
        for key in keys(3):
            yield key
        raise OSError("the queue went away")

    got: list[TaskKey] = []

    async def consume() -> None:
        async for outcome in OutcomeStream(FakeClient(), source(), concurrency=2):
            got.append(outcome.key)

    with pytest.raises(OSError, match="queue"):
        await consume()
    assert sorted(got) == keys(3)


@pytest.mark.looptime
async def test_pacing_holds_the_ceiling_and_keeps_the_pipe_full() -> None:
    client = FakeClient(qps=60.0, latency=0.05)
    loop = asyncio.get_running_loop()
    outcomes = await gather_outcomes(client, keys(600), concurrency=None)
    elapsed = loop.time()
    assert all(o.ok for o in outcomes)
    times = [when for when, _ in client.sent]
    assert max_in_window(times, 1.0) <= 60
    assert 600 / 60 / elapsed >= 0.98


def test_arguments_are_checked_up_front() -> None:
    client = FakeClient()
    with pytest.raises(TypeError, match="not a single key"):
        OutcomeStream(client, TaskKey("a", "r", "t"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a single key"):
        OutcomeStream(client, "art")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        OutcomeStream(client, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        OutcomeStream(client, [], concurrency=0)
    with pytest.raises(TypeError, match="int"):
        OutcomeStream(client, [], concurrency=2.5)  # type: ignore[arg-type]


def test_default_concurrency_covers_a_second_at_the_ceiling_within_the_pool() -> None:
    assert default_concurrency(FakeClient(qps=60.0)) == 60  # type: ignore[arg-type]
    assert default_concurrency(FakeClient(qps=1.0)) == 8  # type: ignore[arg-type]
    assert default_concurrency(FakeClient(qps=5000.0, max_connections=100)) == 100  # type: ignore[arg-type]
    assert default_concurrency(FakeClient(qps=60.0, max_connections=4)) == 4  # type: ignore[arg-type]


def test_stream_repr_and_properties() -> None:
    stream = OutcomeStream(FakeClient(), keys(3), concurrency=2)  # type: ignore[arg-type]
    assert stream.concurrency == 2
    assert stream.keys_pulled == 0
    assert "pulled=0" in repr(stream)
