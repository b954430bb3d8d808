"""The task store: where the emulator's tasks live, and how lifecycles move them when looked at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from _emulator_support import ManualClock

from rtc_segment import SegmentTask, StopReason, TaskKey, TaskStatus
from rtc_segment.testing import Lifecycle
from rtc_segment.testing._state import TaskHandle, TaskStore, register

EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = TaskKey("app", "room", "task")
OTHER = TaskKey("app", "room", "other")


def make_store() -> tuple[TaskStore, ManualClock]:
    clock = ManualClock(100.0)
    return TaskStore(clock, lambda: EPOCH + timedelta(seconds=clock() - 100.0)), clock


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def test_get_applies_due_transitions_stamped_when_due_and_peek_does_not() -> None:
    store, clock = make_store()
    register(store, KEY, lifecycle=Lifecycle.after_seconds(running=5, ended=30))
    clock.advance(40)
    assert store.peek(KEY) is not None
    assert store.peek(KEY).task.status is TaskStatus.NOT_STARTED  # type: ignore[union-attr]
    state = store.get(KEY)
    assert state is not None
    assert (state.task.status, state.task.stop_reason) == (
        TaskStatus.ENDED,
        StopReason.IDLE_TIMEOUT,
    )
    assert state.task.start_time == ms(EPOCH + timedelta(seconds=5))
    assert state.task.end_time == ms(EPOCH + timedelta(seconds=30))
    assert state.lifecycle is None


def test_put_replaces_a_key_and_moves_it_to_the_end() -> None:
    store, clock = make_store()
    register(store, KEY)
    register(store, OTHER)
    clock.advance(2)
    fresh = SegmentTask(start_time=1, status=TaskStatus.RUNNING)
    state = store.put(KEY, fresh)
    assert list(store) == [OTHER, KEY]
    assert (len(store), KEY in store) == (2, True)
    assert (state.task, state.added_at, state.registered_ms) == (
        fresh,
        102.0,
        ms(EPOCH + timedelta(seconds=2)),
    )
    store.remove(KEY)
    store.remove(KEY)  # forgetting twice is harmless
    assert (store.get(KEY), list(store)) == (None, [OTHER])


def test_register_fills_in_the_services_defaults() -> None:
    store, _ = make_store()
    running = register(store, KEY).task
    ended = register(store, OTHER, status=TaskStatus.ENDED).task
    waiting = register(
        store, TaskKey("a", "r", "t"), lifecycle=Lifecycle.after_reads(running=1)
    ).task
    assert (running.status, running.start_time, running.end_time) == (
        TaskStatus.RUNNING,
        ms(EPOCH),
        0,
    )
    assert (running.max_idle_time, running.duration, running.handle) == (180, 20, True)
    assert (ended.end_time, ended.stop_reason) == (ms(EPOCH), StopReason.STOP_BY_API)
    assert (waiting.status, waiting.start_time) == (TaskStatus.NOT_STARTED, 0)
    with pytest.raises(TypeError, match="Unix milliseconds"):
        register(store, KEY, start_time=1.5)  # type: ignore[arg-type]


def test_a_handle_works_through_the_store() -> None:
    store, clock = make_store()
    register(store, KEY, lifecycle=Lifecycle.after_seconds(ended=10))
    handle = TaskHandle(store, KEY)
    assert handle.ends_in == 10.0
    clock.advance(4)
    assert handle.ends_in == 6.0
    assert handle.update(identifier="renamed").identifier == "renamed"
    assert store.peek(KEY).task.identifier == "renamed"  # type: ignore[union-attr]
    ended = handle.end(StopReason.USER_DISCONNECT)
    assert (ended.status, ended.end_time) == (TaskStatus.ENDED, ms(EPOCH + timedelta(seconds=4)))
    assert handle.lifecycle is None
    handle.remove()
    with pytest.raises(KeyError, match="removed"):
        _ = handle.task
