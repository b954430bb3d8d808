"""Guarantee 1: nothing lost, nothing duplicated.

A fan-out of 2,000 keys meets a seeded fault mix on 20 % of requests. Every key yields
exactly one outcome; each outcome is the task the emulator holds, or a typed error whose
class is the one the *last* request of that key called for; no key is tried more than
``1 + max_retries`` times, and never retried without a transient failure; no sliding second
holds more requests than the ceiling, retries included.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from rtc_segment import (
    Backoff,
    ClientTimeoutError,
    ResponseFormatError,
    SegmentTask,
    ServerError,
    TaskKey,
    TaskNotFoundError,
    ThrottledError,
    TransportError,
)
from rtc_segment.testing import Emulator, Fault, Latency

from ._support import emulator_client, records_by_key

QPS = 60
MAX_RETRIES = 3
TIMEOUT = 2.0

# What the client must make of each fault, written out by hand (not derived from the
# client's own classification).
ERROR_FOR_FAULT: dict[Fault, type[Exception]] = {
    Fault.HTTP_500: ServerError,
    Fault.HTTP_502: ServerError,
    Fault.HTTP_503: ServerError,
    Fault.HTTP_504: ServerError,
    Fault.SLOW: ClientTimeoutError,  # no answer within the client's timeout
    Fault.DROP: TransportError,
    Fault.HTTP_429: ThrottledError,
    Fault.TRUNCATED_BODY: ResponseFormatError,
    Fault.HTML_BODY: ResponseFormatError,
}
# Worth another attempt: the failure may not happen again. A body that cannot be
# understood is not: the same proxy would mangle it again.
TRANSIENT = {fault for fault, error in ERROR_FOR_FAULT.items() if error is not ResponseFormatError}
NOT_FOUND_CODE = "InvalidParameter.ErrorActiveTaskNotFound"


def same_task(got: object, key: TaskKey, emulator: Emulator) -> bool:
    """``got`` is the emulator's task for ``key`` (the fields a caller decides on)."""
    held = emulator.task(*key).task
    fields = ("status", "start_time", "end_time", "stop_reason", "identifier", "duration")
    return isinstance(got, SegmentTask) and all(
        getattr(got, name) == getattr(held, name) for name in fields
    )


FAULT_MIX = {fault: 0.20 / len(ERROR_FOR_FAULT) for fault in ERROR_FOR_FAULT}


@pytest.fixture
def emulator() -> Emulator:
    # Sync on purpose: looptime's virtual clock starts with the test body.
    return Emulator(qps=QPS, latency=Latency.uniform(0.01, 0.3), seed=2024)


@pytest.mark.looptime
async def test_every_key_yields_exactly_one_right_outcome_under_a_fault_mix(
    emulator: Emulator,
) -> None:
    present = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(1900)]
    missing = [TaskKey("app", f"gone{i}", "task") for i in range(100)]
    keys = present + missing
    # Interleave, so that not-found keys share the windows of the others.
    keys.sort(key=lambda key: hash(key.room_id) % 997)
    emulator.faults.set_mix(FAULT_MIX, seed=8, slow_seconds=60.0, retry_after=1)

    async with emulator_client(
        emulator,
        qps=QPS,
        max_retries=MAX_RETRIES,
        timeout=TIMEOUT,
        backoff=Backoff(initial=0.2, maximum=5.0),
    ) as client:
        outcomes = [outcome async for outcome in client.get_segment_tasks(keys)]
        stats = client.stats

    # Exactly one outcome per key: none lost, none duplicated.
    assert len(outcomes) == len(keys)
    assert Counter(outcome.key for outcome in outcomes) == Counter(keys)

    seen = records_by_key(emulator)
    assert set(seen) == set(keys)
    faults_met: Counter[Fault] = Counter()
    ok = 0
    for outcome in outcomes:
        records = seen[outcome.key]
        last = records[-1]
        # Never more than 1 + max_retries attempts, and never a retry without a transient
        # failure before it.
        assert 1 <= len(records) <= 1 + MAX_RETRIES, outcome.key
        assert all(r.fault in TRANSIENT for r in records[:-1]), (outcome.key, records)
        faults_met.update(r.fault for r in records if r.fault is not None)

        if last.fault is not None:
            expected = ERROR_FOR_FAULT[last.fault]
            assert type(outcome.error) is expected, (outcome.key, last.fault, outcome.error)
            assert outcome.error.attempts == len(records)
            if last.fault in TRANSIENT:  # gave up only with the retries spent
                assert len(records) == 1 + MAX_RETRIES
        elif last.error_code == NOT_FOUND_CODE:
            assert outcome.key in missing
            assert type(outcome.error) is TaskNotFoundError
        else:
            assert last.error_code is None, last
            assert outcome.key in present
            assert outcome.error is None
            assert same_task(outcome.task, outcome.key, emulator)
            ok += 1

    # The mix really bit, every kind of fault was met, and retries saved most keys.
    assert set(faults_met) == set(ERROR_FOR_FAULT)
    assert sum(faults_met.values()) > 0.15 * emulator.count()
    assert ok > 0.9 * len(present)

    # The ceiling held in every sliding second, retries and faulted requests included,
    # and the emulator never had to throttle.
    assert emulator.max_in_window(1.0) <= QPS
    assert emulator.throttled_count == 0
    # The client's own bookkeeping agrees with what arrived.
    assert stats.requests_sent == emulator.count()
    assert stats.retries == emulator.count() - len(keys)
    assert stats.succeeded == ok


@pytest.mark.looptime
async def test_gather_returns_the_same_outcomes_in_input_order(emulator: Emulator) -> None:
    keys = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(300)]
    emulator.faults.set_mix(FAULT_MIX, seed=3)
    async with emulator_client(emulator, qps=QPS, max_retries=1, timeout=TIMEOUT) as client:
        outcomes = await client.gather_segment_tasks(keys)
    assert [outcome.key for outcome in outcomes] == keys
    seen = records_by_key(emulator)
    for outcome in outcomes:
        last = seen[outcome.key][-1]
        if last.fault is None:
            assert same_task(outcome.task, outcome.key, emulator)
        else:
            assert type(outcome.error) is ERROR_FOR_FAULT[last.fault]
    assert emulator.max_in_window(1.0) <= QPS


@pytest.mark.looptime
async def test_concurrent_single_calls_are_not_lost_either(emulator: Emulator) -> None:
    # The same guarantee without the fan-out scheduler: plain concurrent calls.
    keys = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(300)]
    emulator.faults.set_mix(FAULT_MIX, seed=5)
    async with emulator_client(emulator, qps=QPS, max_retries=2, timeout=TIMEOUT) as client:
        results = await asyncio.gather(
            *(client.get_segment_task(*key) for key in keys), return_exceptions=True
        )
    seen = records_by_key(emulator)
    for key, result in zip(keys, results, strict=True):
        last = seen[key][-1]
        if last.fault is None:
            assert same_task(result, key, emulator)
        else:
            assert type(result) is ERROR_FOR_FAULT[last.fault]
    assert emulator.max_in_window(1.0) <= QPS
