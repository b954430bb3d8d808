"""Fan-out and watching end to end: the real client against the in-process emulator.

Virtual time (looptime) drives the client's limiter, the emulator's latency, its QPS window
and task lifecycles, so seconds of traffic run in milliseconds and are exact.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from rtc_segment import (
    Backoff,
    ResponseFormatError,
    RtcSegmentError,
    SegmentClient,
    ServerError,
    TaskKey,
    TaskNotFoundError,
    TaskStatus,
    TaskWatch,
    ThrottledError,
    TransportError,
    WaitTimeoutError,
    WatchEvent,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, Lifecycle


def make_client(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    return SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        backoff=Backoff.disabled(),
        # X-Date follows the emulator's clock, which virtual time moves far ahead.
        clock=emulator.wall_clock,
        **kwargs,
    )


# Sync fixtures on purpose: looptime starts the virtual clock at 0 when the test body
# starts, and async fixtures would already have seen the real loop time.
@pytest.fixture
def emulator() -> Emulator:
    return Emulator(qps=60, latency=0.05)


def running_tasks(emulator: Emulator, n: int, app: str = "app") -> list[TaskKey]:
    return [emulator.add_task(app, f"room{i}", f"task{i}").key for i in range(n)]


def arrivals_by_key(emulator: Emulator) -> dict[TaskKey, list[float]]:
    by_key: dict[TaskKey, list[float]] = defaultdict(list)
    for record in emulator.requests:
        if record.key is not None:
            by_key[record.key].append(record.arrival)
    return by_key


# -- fan-out --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_exactly_one_outcome_per_key_under_a_fault_mix(emulator: Emulator) -> None:
    good = running_tasks(emulator, 300)
    missing = [TaskKey("app", f"gone{i}", "task") for i in range(20)]
    invalid: list[Any] = [("app", "room", "has space"), ("app", "", "t"), ("app", "r")]
    keys: list[Any] = good + missing + invalid
    emulator.faults.set_mix(
        {
            Fault.HTTP_500: 0.06,
            Fault.HTTP_503: 0.06,
            Fault.DROP: 0.06,
            Fault.HTTP_429: 0.06,
            Fault.TRUNCATED_BODY: 0.04,
            Fault.HTML_BODY: 0.03,
            Fault.EMPTY_BODY: 0.03,
        },
        seed=11,
    )
    async with make_client(emulator, max_retries=1) as client:
        outcomes = [o async for o in client.get_segment_tasks(keys)]

        assert Counter(o.key for o in outcomes) == Counter(tuple(k) for k in keys)
        by_key = {o.key: o for o in outcomes}
        kinds: Counter[str] = Counter()
        for key in good:
            outcome = by_key[key]
            if outcome.ok:
                expected = emulator.task(*key).task
                assert outcome.task is not None
                assert (outcome.task.status, outcome.task.start_time) == (
                    expected.status,
                    expected.start_time,
                )
                kinds["ok"] += 1
            else:
                # Only faults the client could not retry away (with max_retries=1).
                assert isinstance(
                    outcome.error,
                    (ServerError, ThrottledError, TransportError, ResponseFormatError),
                )
                kinds[type(outcome.error).__name__] += 1
        missing_errors = Counter(type(by_key[key].error) for key in missing)
        assert missing_errors[TaskNotFoundError] >= 15  # the rest met a fault first
        assert all(issubclass(kind, RtcSegmentError) for kind in missing_errors)
        for key in invalid:
            assert isinstance(by_key[tuple(key)].error, (TypeError, ValueError))
        # The mix really bit, in every way, and most keys still made it.
        assert kinds["ok"] > 200
        assert {"ServerError", "ThrottledError", "TransportError", "ResponseFormatError"} <= set(
            kinds
        )
        # Invalid keys never reached the service; every attempt did.
        assert emulator.count() == client.stats.requests_sent
        assert all(r.key is None or r.key.task_id != "has space" for r in emulator.requests)


@pytest.mark.looptime
async def test_fan_out_holds_the_ceiling_at_full_utilisation(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        keys = emulator.seed_rooms(600)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await client.gather_segment_tasks(keys)
        elapsed = loop.time() - started

        assert [o.key for o in outcomes] == keys
        assert all(o.ok for o in outcomes)
        assert emulator.throttled_count == 0
        assert emulator.max_in_window(1.0) <= 60
        utilisation = (600 / 60) / elapsed
        assert utilisation >= 0.98, f"{utilisation:.3f}"


@pytest.mark.looptime
async def test_keys_are_consumed_lazily(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        keys = running_tasks(emulator, 10)
        pulled = 0

        def endless() -> Iterator[TaskKey]:
            nonlocal pulled
            while True:
                pulled += 1
                yield keys[pulled % len(keys)]

        received = 0
        async for outcome in client.get_segment_tasks(endless(), concurrency=4):
            assert outcome.ok
            received += 1
            assert pulled <= received + 4
            if received == 30:
                break
        assert emulator.count() <= 34


@pytest.mark.looptime
async def test_break_and_cancel_leave_no_task_and_a_usable_client(emulator: Emulator) -> None:
    emulator.latency = 30.0
    keys = running_tasks(emulator, 50)
    loop = asyncio.get_running_loop()
    async with make_client(emulator) as client:
        async for _ in client.get_segment_tasks(keys, concurrency=10):
            break
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

        async def consume() -> None:
            async for _ in client.get_segment_tasks(keys, concurrency=10):
                pass

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(40.0)
        consumer.cancel()
        before = loop.time()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert loop.time() == before
        assert asyncio.all_tasks() == {asyncio.current_task()}

        emulator.latency = 0.05
        assert (await client.get_segment_task(*keys[0])).status is TaskStatus.RUNNING


# -- watching one task ---------------------------------------------------------------


@pytest.mark.looptime
async def test_watch_one_yields_each_change_and_ends_after_the_terminal_state(
    emulator: Emulator,
) -> None:
    async with make_client(emulator) as client:
        handle = emulator.add_task(
            "app", "room", "task", lifecycle=Lifecycle.after_seconds(running=7, ended=22)
        )
        statuses = [
            task.status
            async for task in client.watch_segment_task("app", "room", "task", poll_interval=5.0)
        ]
        assert statuses == [TaskStatus.NOT_STARTED, TaskStatus.RUNNING, TaskStatus.ENDED]
        arrivals = arrivals_by_key(emulator)[handle.key]
        assert len(arrivals) == 6  # t = 0, 5, 10, 15, 20, 25 (plus latency)
        assert min(b - a for a, b in itertools.pairwise(arrivals)) >= 5.0


@pytest.mark.looptime
async def test_wait_for_returns_the_final_state(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        emulator.add_task(
            "app",
            "room",
            "task",
            lifecycle=Lifecycle.after_seconds(running=1, ended=12, status=TaskStatus.FAILED),
        )
        # Transient failures on the way are polled through.
        emulator.faults.next(8, Fault.HTTP_503)
        final = await client.wait_for_segment_task("app", "room", "task", poll_interval=2.0)
        assert final.status is TaskStatus.FAILED
        assert final.end_time > 0


@pytest.mark.looptime
async def test_wait_for_times_out_with_the_last_state(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        emulator.add_task("app", "room", "task")  # runs forever
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError) as caught:
            await client.wait_for_segment_task("app", "room", "task", poll_interval=5.0, timeout=60)
        error = caught.value
        assert isinstance(error, WaitTimeoutError)
        assert loop.time() == pytest.approx(60.0)
        assert error.last_task is not None and error.last_task.status is TaskStatus.RUNNING
        assert error.key == ("app", "room", "task")
        assert "did not end within 60 s" in str(error)
        assert "RUNNING" in str(error) and "timeout" in str(error)


@pytest.mark.looptime
async def test_wait_for_raises_permanent_errors(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        with pytest.raises(TaskNotFoundError):
            await client.wait_for_segment_task("app", "room", "nope", timeout=60)
        with pytest.raises(ValueError, match="task_id"):
            await client.wait_for_segment_task("app", "room", "not valid")


# -- watching many tasks --------------------------------------------------------------


async def collect(watch: TaskWatch, until: float | None = None) -> list[tuple[float, WatchEvent]]:
    loop = asyncio.get_running_loop()
    events: list[tuple[float, WatchEvent]] = []

    async def run() -> None:
        async for event in watch:
            events.append((loop.time(), event))

    if until is None:
        await run()
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run(), until)
    return events


@pytest.mark.looptime
async def test_watch_many_reports_changes_errors_and_lets_finished_tasks_go(
    emulator: Emulator,
) -> None:
    ends = emulator.add_task(
        "app", "r1", "ends", lifecycle=Lifecycle.after_seconds(running=3, ended=12)
    )
    fails = emulator.add_task(
        "app",
        "r2",
        "fails",
        lifecycle=Lifecycle.after_seconds(ended=8, status=TaskStatus.FAILED),
    )
    flaky = emulator.add_task("app", "r3", "flaky", lifecycle=Lifecycle.after_seconds(ended=30))
    late = emulator.add_task("app", "r4", "late", lifecycle=Lifecycle.after_seconds(ended=25))
    missing = TaskKey("app", "r5", "missing")
    # Two whole polls of `flaky` fail (each is 1 + max_retries=1 attempts).
    emulator.faults.next(4, Fault.HTTP_503, task_id="flaky")
    async with make_client(emulator, max_retries=1) as client:
        watch = client.watch_segment_tasks(
            [ends.key, fails.key, flaky.key, missing, ("app", "r6", "bad key!")],
            poll_interval=2.0,
        )
        loop = asyncio.get_running_loop()
        events: list[tuple[float, WatchEvent]] = []
        async with watch:
            async for event in watch:
                events.append((loop.time(), event))
                if event.key == ends.key and event.final:
                    watch.add(late.key)
                    watch.add(late.key)  # no-op

        def of(key: Any) -> list[WatchEvent]:
            return [e for _, e in events if e.key == tuple(key)]

        assert [e.task.status for e in of(ends.key) if e.task] == [
            TaskStatus.NOT_STARTED,
            TaskStatus.RUNNING,
            TaskStatus.ENDED,
        ]
        assert of(ends.key)[-1].final
        assert [e.task.status for e in of(fails.key) if e.task] == [
            TaskStatus.RUNNING,
            TaskStatus.FAILED,
        ]
        flaky_events = of(flaky.key)
        assert [type(e.error) for e in flaky_events[:2]] == [ServerError, ServerError]
        assert not any(e.final for e in flaky_events[:2])  # transient: still watched
        assert (
            flaky_events[2].task is not None and flaky_events[2].task.status is TaskStatus.RUNNING
        )
        assert flaky_events[-1].final and flaky_events[-1].task is not None
        assert [(type(e.error), e.final) for e in of(missing)] == [(TaskNotFoundError, True)]
        assert [(type(e.error), e.final) for e in of(("app", "r6", "bad key!"))] == [
            (ValueError, True)
        ]
        assert [e.task.status for e in of(late.key) if e.task] == [
            TaskStatus.RUNNING,
            TaskStatus.ENDED,
        ]
        assert len(watch) == 0

        # Never more often than poll_interval per task.
        for key, arrivals in arrivals_by_key(emulator).items():
            polls = sorted(set(arrivals))  # retries of one poll share its slot
            gaps = [b - a for a, b in itertools.pairwise(polls)]
            assert all(g >= 2.0 or g < 0.1 for g in gaps), (key, gaps)
        # Finished tasks are no longer polled.
        assert max(arrivals_by_key(emulator)[fails.key]) < 8.0 + 2.0 + 0.2


@pytest.mark.looptime
async def test_watch_over_quota_polls_round_robin_and_reports_the_interval() -> None:
    emulator = Emulator(qps=10, latency=0.05)
    keys = running_tasks(emulator, 100)
    async with make_client(emulator) as client:
        watch = client.watch_segment_tasks(keys, poll_interval=1.0)
        assert client.limiter.qps == 60  # the client's own ceiling...
    async with make_client(emulator, qps=10) as client:  # ...must match the account's
        emulator.reset_record()
        watch = client.watch_segment_tasks(keys, poll_interval=1.0)
        events = await collect(watch, until=120.0)
        await watch.aclose()

    # Only the first state of each task is news; the rest are polls without change.
    assert len(events) == 100
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) <= 10
    polls = Counter(r.key for r in emulator.requests)
    assert set(polls) == set(keys)
    # Round-robin: every task got its turn, none more than one extra.
    assert max(polls.values()) - min(polls.values()) <= 1
    assert sum(polls.values()) >= 0.98 * 10 * 120 - 10
    # 100 tasks at ~9.9 QPS: each polled about every 10.1 s.
    assert watch.achieved_interval == pytest.approx(100 / 9.9, rel=0.03)
    for arrivals in arrivals_by_key(emulator).values():
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert min(gaps) >= 9.5


@pytest.mark.looptime
async def test_watch_under_quota_polls_each_task_at_the_interval(emulator: Emulator) -> None:
    keys = running_tasks(emulator, 20)
    async with make_client(emulator) as client:
        watch = client.watch_segment_tasks(keys, poll_interval=5.0)
        events = await collect(watch, until=60.0)
        await watch.aclose()
    assert len(events) == 20
    assert watch.achieved_interval == pytest.approx(5.0, abs=0.2)
    for arrivals in arrivals_by_key(emulator).values():
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert len(arrivals) == 12
        assert all(5.0 <= g <= 5.2 for g in gaps)


@pytest.mark.looptime
async def test_watch_detects_a_change_made_mid_watch(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        handle = emulator.add_task("app", "room", "task")
        watch = client.watch_segment_tasks([handle.key], poll_interval=3.0)
        first = await anext(watch)
        assert first.task is not None and first.task.status is TaskStatus.RUNNING
        await asyncio.sleep(10.0)  # nothing polls while the consumer is away
        handle.update(identifier="renamed")
        second = await anext(watch)
        assert second.task is not None and second.task.identifier == "renamed"
        assert not second.final
        handle.end()
        third = await anext(watch)
        assert third.final and third.task is not None and third.task.status is TaskStatus.ENDED
        with pytest.raises(StopAsyncIteration):
            await anext(watch)


@pytest.mark.looptime
async def test_watch_can_wait_for_keys_when_asked_to(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        watch = TaskWatch(client, [], poll_interval=1.0, stop_when_empty=False)
        handle = emulator.add_task("app", "room", "task")

        async def add_later() -> None:
            await asyncio.sleep(5.0)
            watch.add(handle.key)

        adder = asyncio.create_task(add_later())
        event = await asyncio.wait_for(anext(watch), 10.0)
        await adder
        assert event.key == handle.key
        assert asyncio.get_running_loop().time() == pytest.approx(5.05)
        await watch.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            watch.add(handle.key)
