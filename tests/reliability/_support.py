"""Helpers shared by the reliability suite."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rtc_segment import Backoff, SegmentClient, TaskKey
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, RequestRecord


def emulator_client(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    """A real client on the in-process emulator, signing with the emulator's (virtual) clock."""
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("clock", emulator.wall_clock)
    return SegmentClient(transport=emulator.transport(), **kwargs)


def records_by_key(emulator: Emulator) -> dict[TaskKey, list[RequestRecord]]:
    """Every recorded request, grouped by the task key it asked about, in arrival order."""
    grouped: dict[TaskKey, list[RequestRecord]] = defaultdict(list)
    for record in emulator.requests:
        if record.key is not None:
            grouped[record.key].append(record)
    return grouped
