"""Both API versions through the real client and the emulator (issue: 2023-11-01 beside
2022-06-01): the same shapes, one ceiling per action, and StartSegment's one difference."""

from __future__ import annotations

import asyncio

import pytest

from rtc_segment import (
    InvalidParameterError,
    SegmentClient,
    StartOutcome,
    StorageConfig,
    StorageType,
    TaskStatus,
    TosConfig,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = ("app", "room", "task")
TOS = StorageConfig(type=StorageType.TOS, tos_config=TosConfig(account_id="2100", bucket="b"))
VERSIONS = ("2022-06-01", "2023-11-01")


def client_on(emulator: Emulator, **kwargs: object) -> SegmentClient:
    return SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_action_speaks_the_chosen_version(version: str) -> None:
    emulator = Emulator()
    async with client_on(emulator, api_version=version) as client:
        assert client.api_version == version
        assert await client.start_segment(*KEY, storage_config=TOS) is StartOutcome.STARTED
        task = await client.get_segment_task(*KEY)
        assert task.status is TaskStatus.RUNNING
        await client.update_segment(*KEY, duration=30)
        await client.stop_segment(*KEY)
    assert [record.version for record in emulator.requests] == [version] * 4


async def test_2022_06_01_refuses_to_start_a_running_task() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY, status=TaskStatus.RUNNING)
    async with client_on(emulator) as client:
        with pytest.raises(InvalidParameterError) as caught:
            await client.start_segment(*KEY, storage_config=TOS)
    assert caught.value.code == "InvalidParameter.TaskAlreadyExists"


async def test_2023_11_01_reports_a_running_task_as_already_running() -> None:
    emulator = Emulator()
    handle = emulator.add_task(*KEY, status=TaskStatus.RUNNING)
    before = handle.task
    async with client_on(emulator, api_version="2023-11-01") as client:
        outcome = await client.start_segment(*KEY, storage_config=TOS)
    assert outcome is StartOutcome.ALREADY_RUNNING
    assert outcome != StartOutcome.STARTED
    assert emulator.task(*KEY).task == before  # the task was not touched


@pytest.mark.looptime
@pytest.mark.parametrize("version", VERSIONS)
async def test_an_ambiguous_start_is_resolved_by_reading_back_on_both_versions(
    version: str,
) -> None:
    emulator = Emulator()
    # The start lands, but its answer is lost: the client must not call it "already
    # running" (2023-11-01) or fail (2022-06-01) -- it reads the task back instead.
    emulator.faults.next(1, Fault.SLOW, slow_seconds=30)
    async with client_on(emulator, api_version=version, max_retries=2, timeout=2.0) as client:
        outcome = await client.start_segment(*KEY, storage_config=TOS)
    assert outcome is StartOutcome.STARTED
    assert emulator.task(*KEY).task.status is TaskStatus.RUNNING
    assert [r.action for r in emulator.requests] == ["StartSegment", "GetSegmentTask"]


@pytest.mark.looptime
async def test_both_versions_share_one_ceiling() -> None:
    emulator = Emulator(qps=60, latency=0.01)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(120)]
    old, new = (client_on(emulator, api_version=version) for version in VERSIONS)
    async with old, new:
        assert old.limiter is new.limiter
        results = await asyncio.gather(
            old.gather_segment_tasks(keys[:60]), new.gather_segment_tasks(keys[60:])
        )
    assert all(outcome.ok for result in results for outcome in result)
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= 60


@pytest.mark.parametrize(
    ("bad", "error"), [("2024-01-01", ValueError), ("", ValueError), (20231101, TypeError)]
)
def test_an_unknown_version_is_refused_naming_the_argument(
    bad: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="api_version"):
        client_on(Emulator(), api_version=bad)
