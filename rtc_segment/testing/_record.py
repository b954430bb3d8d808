"""What the emulator saw: one frozen :class:`RequestRecord` per request, and exact counters.

The record list is a bounded deque (``record_limit``) so that long benchmark runs keep
flat memory; the counters in :class:`EmulatorStats` and the 1-second window maxima stay
exact however many records were evicted.

:func:`max_in_window` is the one sliding-window count of the project: the emulator's record
uses it, and so can any test that collects its own timestamps.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from .._models import TaskKey
from ._clock import RESOLUTION
from ._faults import Fault

__all__ = ["EmulatorStats", "RequestRecord", "max_in_window"]

THROTTLE_CODE = "FlowLimitExceeded"


@attrs.frozen
class RequestRecord:
    """One request as the emulator received and answered it.

    Attributes:
        request_id: The ``RequestId`` it answered with.
        arrival: When the request reached the service and was counted against the ceiling,
            on the emulator's monotonic clock (seconds): after its forward delay, if any.
        method: The HTTP method.
        action: The ``Action`` query parameter (``None`` when absent).
        version: The ``Version`` query parameter (``None`` when absent).
        key: The task key, when ``AppId``, ``RoomId`` and ``TaskId`` were all given.
        account: The account of the access key, once the signature was verified.
        access_key_id: The access key id the request claimed (not necessarily valid).
        x_date: The request's ``X-Date`` header as sent.
        http_status: The status answered; ``None`` when the connection was dropped.
        error_code: ``Error.Code`` of the answer, if it was an error.
        fault: The injected fault, if any.
        admitted: Whether it passed the QPS ceiling (and so counted toward it).
        forward_delay: Seconds the request spent on the way in (``Emulator(forward_delay=
            ...)``); it was handed to the emulator at ``arrival - forward_delay``.
    """

    request_id: str
    arrival: float
    method: str
    action: str | None
    version: str | None
    key: TaskKey | None
    account: str | None
    access_key_id: str | None
    x_date: str | None
    http_status: int | None
    error_code: str | None
    fault: Fault | None
    admitted: bool
    forward_delay: float = 0.0

    @property
    def throttled(self) -> bool:
        """Refused by the emulator's own QPS ceiling (not an injected 429 fault)."""
        return self.error_code == THROTTLE_CODE and self.fault is None

    @property
    def ok(self) -> bool:
        """Answered with a success."""
        return (
            self.http_status is not None
            and 200 <= self.http_status < 300
            and (self.error_code is None)
            and self.fault in (None, Fault.SLOW)
        )


@attrs.frozen
class EmulatorStats:
    """Exact totals since the last ``reset_record()`` (independent of ``record_limit``).

    Attributes:
        requests: Every request received.
        admitted: Requests that passed the QPS ceiling.
        throttled: Requests refused by the QPS ceiling.
        by_status: Count per HTTP status (dropped connections under ``None``).
        by_error: Count per ``Error.Code``.
        by_fault: Count per injected fault.
        max_in_second: Most arrivals in any sliding 1-second window.
        max_admitted_in_second: Most admitted arrivals in any sliding 1-second window.
    """

    requests: int
    admitted: int
    throttled: int
    by_status: dict[int | None, int]
    by_error: dict[str, int]
    by_fault: dict[Fault, int]
    max_in_second: int
    max_admitted_in_second: int


class _WindowMax:
    """The most events in any half-open window ``[t, t + width)``, updated in O(1) amortised."""

    __slots__ = ("_times", "max", "width")

    def __init__(self, width: float = 1.0) -> None:
        self.width = width
        self._times: deque[float] = deque()
        self.max = 0

    def add(self, at: float) -> None:
        times = self._times
        horizon = at - self.width + RESOLUTION
        while times and times[0] <= horizon:
            times.popleft()
        times.append(at)
        if len(times) > self.max:
            self.max = len(times)


def max_in_window(times: Iterable[float], seconds: float = 1.0) -> int:
    """The most of ``times`` in any sliding window of ``seconds``: the measure of a ceiling.

    Windows are half-open, ``[t, t + seconds)``, the rule the emulator's ceiling applies: two
    events exactly ``seconds`` apart are never in one window. Like the ceiling, it treats
    events less than a nanosecond short of ``seconds`` apart as ``seconds`` apart, so that
    floating-point noise does not invent an extra event in a window. ``times`` may come in
    any order (they are sorted here).

    Example: ``max_in_window([0.0, 0.5, 0.99, 1.0]) == 3``.

    Raises:
        ValueError: ``seconds`` is not a positive number.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    ordered = sorted(times)
    return max(
        (
            bisect.bisect_left(ordered, start + seconds - RESOLUTION) - i
            for i, start in enumerate(ordered)
        ),
        default=0,
    )


def task_key_of(params: Mapping[str, Any]) -> TaskKey | None:
    """The task a request names, when its ``AppId``, ``RoomId`` and ``TaskId`` are strings."""
    app_id, room_id, task_id = (params.get(n) for n in ("AppId", "RoomId", "TaskId"))
    if isinstance(app_id, str) and isinstance(room_id, str) and isinstance(task_id, str):
        return TaskKey(app_id, room_id, task_id)
    return None


_KEY_PARTS = {"app_id": 0, "room_id": 1, "task_id": 2}


def matches(record: RequestRecord, filters: Mapping[str, Any]) -> bool:
    """Whether ``record`` has every attribute in ``filters`` (plus ``app_id``/``room_id``/
    ``task_id``, parts of its key; ``key`` compares with any 3-sequence)."""
    for name, wanted in filters.items():
        index = _KEY_PARTS.get(name)
        if index is not None:
            if record.key is None or record.key[index] != wanted:
                return False
        elif name == "key":
            if record.key != (None if wanted is None else TaskKey(*wanted)):
                return False
        elif getattr(record, name) != wanted:
            return False
    return True


class Recorder:
    """Keeps records (bounded) and exact counters."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"record_limit must be an int >= 0 or None, got {limit!r}")
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=self._limit)
        self.total = 0
        self.admitted = 0
        self.throttled = 0
        self.by_status: Counter[int | None] = Counter()
        self.by_error: Counter[str] = Counter()
        self.by_fault: Counter[Fault] = Counter()
        self._window_all = _WindowMax()
        self._window_admitted = _WindowMax()

    @property
    def evicted(self) -> int:
        """How many records were dropped to honour the limit."""
        return self.total - len(self.records)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.total += 1
        self._window_all.add(record.arrival)
        if record.admitted:
            self.admitted += 1
            self._window_admitted.add(record.arrival)
        if record.throttled:
            self.throttled += 1
        self.by_status[record.http_status] += 1
        if record.error_code is not None:
            self.by_error[record.error_code] += 1
        if record.fault is not None:
            self.by_fault[record.fault] += 1

    def count(self, filters: Mapping[str, Any]) -> int:
        """Exact without filters; otherwise counted over the kept records."""
        if not filters:
            return self.total
        return sum(1 for record in self.records if matches(record, filters))

    def max_in_window(
        self, seconds: float, *, admitted_only: bool, filters: Mapping[str, Any]
    ) -> int:
        """Exact for a 1-second window without filters; otherwise from the kept records."""
        if seconds == 1.0 and not filters:
            return (self._window_admitted if admitted_only else self._window_all).max
        if admitted_only:
            filters = {**filters, "admitted": True}
        return max_in_window(
            (record.arrival for record in self.records if matches(record, filters)), seconds
        )

    def stats(self) -> EmulatorStats:
        return EmulatorStats(
            requests=self.total,
            admitted=self.admitted,
            throttled=self.throttled,
            by_status=dict(self.by_status),
            by_error=dict(self.by_error),
            by_fault=dict(self.by_fault),
            max_in_second=self._window_all.max,
            max_admitted_in_second=self._window_admitted.max,
        )

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.records)
