"""The emulator's tasks: the store that holds them, and how they move through their lifecycle.

A task may carry a :class:`Lifecycle`: "not started -> running -> ended (or failed)" after
some seconds on the emulator's clock and/or after some reads. Transitions are applied
lazily, whenever the task is looked at, and are stamped with the time they were due, so
``StartTime``/``EndTime`` are the same whether a task is read often or rarely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs

from .._models import (
    Control,
    SegmentTask,
    StopReason,
    StorageConfig,
    StorageType,
    TargetStreams,
    TaskKey,
    TaskStatus,
    TosConfig,
)

__all__ = ["Lifecycle", "TaskHandle", "TaskState", "TaskStore", "register"]

QUERY_WINDOW = timedelta(hours=72)
_NO_LIFECYCLE_STATES = (TaskStatus.ENDED, TaskStatus.FAILED)


def _check_stage(name: str, value: float | None, *, integer: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind} or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@attrs.frozen
class Lifecycle:
    """When a task starts and ends, in seconds on the emulator's clock and/or in reads.

    Times are measured from ``add_task``; reads are successful GetSegmentTask answers
    for the task. A stage happens as soon as either of its conditions holds. Read ``k``
    (1-based) of a task with ``running_after_reads=n`` still sees "not started" while
    ``k <= n``, and "running" from read ``n + 1``.

    Build one with :meth:`after_seconds` or :meth:`after_reads`.

    Attributes:
        running_at: Seconds after registration when it becomes running.
        ended_at: Seconds after registration when it ends (or fails).
        running_after_reads: Reads after which it becomes running.
        ended_after_reads: Reads after which it ends (or fails).
        final_status: :attr:`TaskStatus.ENDED` or :attr:`TaskStatus.FAILED`.
        stop_reason: The ``StopReason`` it ends with.
    """

    running_at: float | None = None
    ended_at: float | None = None
    running_after_reads: int | None = None
    ended_after_reads: int | None = None
    final_status: TaskStatus = TaskStatus.ENDED
    stop_reason: StopReason = StopReason.IDLE_TIMEOUT

    def __attrs_post_init__(self) -> None:
        _check_stage("running_at", self.running_at, integer=False)
        _check_stage("ended_at", self.ended_at, integer=False)
        _check_stage("running_after_reads", self.running_after_reads, integer=True)
        _check_stage("ended_after_reads", self.ended_after_reads, integer=True)
        if self.final_status not in _NO_LIFECYCLE_STATES:
            raise ValueError(f"final_status must be ENDED or FAILED, got {self.final_status!r}")
        for start, end, what in (
            (self.running_at, self.ended_at, "seconds"),
            (self.running_after_reads, self.ended_after_reads, "reads"),
        ):
            if start is not None and end is not None and end < start:
                raise ValueError(f"the task cannot end ({what}={end}) before it runs ({start})")

    @classmethod
    def after_seconds(
        cls,
        *,
        running: float | None = None,
        ended: float | None = None,
        status: TaskStatus = TaskStatus.ENDED,
        stop_reason: StopReason = StopReason.IDLE_TIMEOUT,
    ) -> Lifecycle:
        """Running ``running`` seconds and ended ``ended`` seconds after ``add_task``.

        Example: ``Lifecycle.after_seconds(running=5, ended=30)`` -- not started for 5 s,
        then running, then ended with ``IdleTimeOut`` 30 s after registration.
        """
        return cls(running_at=running, ended_at=ended, final_status=status, stop_reason=stop_reason)

    @classmethod
    def after_reads(
        cls,
        *,
        running: int | None = None,
        ended: int | None = None,
        status: TaskStatus = TaskStatus.ENDED,
        stop_reason: StopReason = StopReason.IDLE_TIMEOUT,
    ) -> Lifecycle:
        """Running after ``running`` reads and ended after ``ended`` reads (moto-style)."""
        return cls(
            running_after_reads=running,
            ended_after_reads=ended,
            final_status=status,
            stop_reason=stop_reason,
        )

    @property
    def has_start(self) -> bool:
        """Whether the task waits to start (so it is registered as not started)."""
        return self.running_at is not None or self.running_after_reads is not None

    @property
    def has_end(self) -> bool:
        """Whether the task ends on its own."""
        return self.ended_at is not None or self.ended_after_reads is not None


def to_ms(when: datetime) -> int:
    """Unix milliseconds of an aware datetime."""
    if when.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware (e.g. tzinfo=timezone.utc)")
    return int(when.timestamp() * 1000)


#: The storage a task reports when ``add_task`` is not given one.
DEFAULT_STORAGE = StorageConfig(
    type=StorageType.TOS,
    tos_config=TosConfig(account_id="2100000000", bucket="emulator-bucket", region=0),
)


@attrs.define
class TaskState:
    """Internal, mutable state of one registered task."""

    key: TaskKey
    task: SegmentTask
    added_at: float
    registered_ms: int
    lifecycle: Lifecycle | None
    reads: int = 0

    def advance(self, now: float, wall_ms_at: Callable[[float], int]) -> None:
        """Apply every lifecycle transition that is due at monotonic time ``now``."""
        lc = self.lifecycle
        if lc is None:
            return
        task = self.task
        if task.status is TaskStatus.NOT_STARTED and lc.has_start:
            at = self._due(lc.running_at, lc.running_after_reads, now)
            if at is None:
                return
            start = task.start_time or wall_ms_at(at)
            task = attrs.evolve(task, status=TaskStatus.RUNNING, start_time=start)
        if lc.has_end and task.status in (TaskStatus.NOT_STARTED, TaskStatus.RUNNING):
            at = self._due(lc.ended_at, lc.ended_after_reads, now)
            if at is not None:
                task = attrs.evolve(
                    task,
                    status=lc.final_status,
                    end_time=wall_ms_at(at),
                    stop_reason=lc.stop_reason,
                )
                self.lifecycle = None
        self.task = task

    def _due(self, seconds: float | None, reads: int | None, now: float) -> float | None:
        """When the stage became due (monotonic time), or ``None`` if it is not due yet."""
        if seconds is not None and now >= self.added_at + seconds:
            return self.added_at + seconds
        if reads is not None and self.reads >= reads:
            return now
        return None

    def queryable(self, now_ms: int) -> bool:
        """Whether GetSegmentTask may still see it: started (or registered) within 72 hours."""
        reference = self.task.start_time or self.registered_ms
        return reference >= now_ms - QUERY_WINDOW // timedelta(milliseconds=1)


class TaskStore:
    """The emulator's registered tasks by key, and the clocks that move their lifecycles.

    The one place task state lives: the actions, the handles and the seeding read and change
    tasks through it. :meth:`get` applies every lifecycle transition that is due before
    returning a task, so whoever looks sees the task as it is now.

    Args:
        clock: Monotonic seconds (lifecycles are scheduled on it).
        wall_clock: The current time as an aware UTC datetime (``StartTime``/``EndTime``).
    """

    def __init__(self, clock: Callable[[], float], wall_clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._tasks: dict[TaskKey, TaskState] = {}

    def now(self) -> float:
        """Monotonic seconds."""
        return self._clock()

    def wall_time(self) -> datetime:
        """The current wall time (aware UTC datetime)."""
        return self._wall_clock()

    def wall_ms(self) -> int:
        """The current wall time in Unix milliseconds."""
        return to_ms(self._wall_clock())

    def wall_ms_at(self, monotonic: float) -> int:
        """The wall time, in Unix milliseconds, of an earlier instant on the monotonic clock."""
        return to_ms(self._wall_clock() - timedelta(seconds=self._clock() - monotonic))

    def get(self, key: TaskKey) -> TaskState | None:
        """The task under ``key`` as it is now (due transitions applied), or ``None``."""
        state = self._tasks.get(key)
        if state is not None:
            state.advance(self._clock(), self.wall_ms_at)
        return state

    def peek(self, key: TaskKey) -> TaskState | None:
        """The task under ``key`` as last stored, without applying its lifecycle."""
        return self._tasks.get(key)

    def put(self, key: TaskKey, task: SegmentTask, lifecycle: Lifecycle | None = None) -> TaskState:
        """Store ``task`` under ``key`` as registered now, replacing any task there.

        A replaced key moves to the end of the iteration order, like a new one.
        """
        self._tasks.pop(key, None)
        state = self._tasks[key] = TaskState(
            key=key,
            task=task,
            added_at=self._clock(),
            registered_ms=self.wall_ms(),
            lifecycle=lifecycle,
        )
        return state

    def remove(self, key: TaskKey) -> None:
        """Forget the task under ``key`` (nothing happens if there is none)."""
        self._tasks.pop(key, None)

    def __iter__(self) -> Iterator[TaskKey]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks


#: Marks a keyword of :func:`register` that was not given (``None`` is a value there).
UNSET: Any = object()


def register(
    store: TaskStore,
    key: TaskKey,
    *,
    status: TaskStatus | None = None,
    start_time: datetime | int | None = None,
    end_time: datetime | int | None = None,
    stop_reason: StopReason | None = UNSET,
    identifier: str | None = None,
    lifecycle: Lifecycle | None = None,
    **fields: Any,
) -> TaskState:
    """Store a task built from ``Emulator.add_task``'s arguments (see there); defaults as the
    service's: omitted ``fields`` (or ones given as :data:`UNSET`) take :func:`default_fields`.
    """
    if status is None:
        has_start = lifecycle is not None and lifecycle.has_start
        status = TaskStatus.NOT_STARTED if has_start else TaskStatus.RUNNING
    status = TaskStatus(status)
    now_ms = store.wall_ms()
    if start_time is None:
        start_ms = 0 if status in (TaskStatus.NOT_STARTED, TaskStatus.UNKNOWN) else now_ms
    else:
        start_ms = as_ms(start_time)
    end_ms = (now_ms if status.is_terminal else 0) if end_time is None else as_ms(end_time)
    if stop_reason is UNSET:
        stop_reason = {
            TaskStatus.ENDED: StopReason.STOP_BY_API,
            TaskStatus.FAILED: StopReason.START_TASK_FAILED,
        }.get(status)
    given = default_fields()
    given.update({name: value for name, value in fields.items() if value is not UNSET})
    task = SegmentTask(
        start_time=start_ms,
        end_time=end_ms,
        status=status,
        stop_reason=stop_reason,
        identifier=identifier,
        **given,
    )
    return store.put(key, task, lifecycle)


def as_ms(value: datetime | int) -> int:
    """Unix milliseconds of a time given as an aware datetime or as Unix milliseconds."""
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"times must be datetimes or Unix milliseconds, not {value!r}")
    return value


class TaskHandle:
    """A registered task, as ``Emulator.add_task`` returns it.

    Lets a test look at the task without counting a read, and change it mid-test (for
    example to end it while a watcher polls).
    """

    def __init__(self, store: TaskStore, key: TaskKey) -> None:
        self._store = store
        self.key = key
        """The task's key."""

    def _state(self, *, advance: bool = True) -> TaskState:
        state = self._store.get(self.key) if advance else self._store.peek(self.key)
        if state is None:
            raise KeyError(f"task {self.key} was removed from the emulator")
        return state

    @property
    def task(self) -> SegmentTask:
        """The task as a read would see it now (lifecycle applied; no read counted)."""
        return self._state().task

    @property
    def reads(self) -> int:
        """How many successful GetSegmentTask answers returned this task."""
        return self._state(advance=False).reads

    @property
    def lifecycle(self) -> Lifecycle | None:
        """The remaining lifecycle schedule (``None`` once it has finished or if there is none)."""
        return self._state(advance=False).lifecycle

    @property
    def ends_in(self) -> float | None:
        """Seconds until a time-scheduled end, or ``None`` when the end is not time-based."""
        state = self._state(advance=False)
        lc = state.lifecycle
        if lc is None or lc.ended_at is None:
            return None
        return max(0.0, state.added_at + lc.ended_at - self._store.now())

    def update(self, **fields: Any) -> SegmentTask:
        """Change fields of the task (any :class:`SegmentTask` field); returns the new task."""
        state = self._state()
        state.task = attrs.evolve(state.task, **fields)
        return state.task

    def end(
        self,
        stop_reason: StopReason = StopReason.STOP_BY_API,
        *,
        status: TaskStatus = TaskStatus.ENDED,
    ) -> SegmentTask:
        """End (or fail) the task now, cancelling what is left of its lifecycle."""
        state = self._state()
        now_ms = self._store.wall_ms()
        if state.task.status is TaskStatus.NOT_STARTED:
            state.task = attrs.evolve(state.task, start_time=now_ms)
        state.lifecycle = None
        state.task = attrs.evolve(
            state.task, status=status, stop_reason=stop_reason, end_time=now_ms
        )
        return state.task

    def remove(self) -> None:
        """Forget the task: reads answer "not found" from now on."""
        self._store.remove(self.key)

    def __repr__(self) -> str:
        return f"TaskHandle({self.key!r})"


def default_fields() -> dict[str, Any]:
    """The fields of a task registered without them: the service's defaults."""
    return {
        "max_idle_time": 180,
        "duration": 20,
        "handle": True,
        "target_streams": TargetStreams(),
        "control": Control(),
        "storage_config": DEFAULT_STORAGE,
    }
