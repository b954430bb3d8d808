"""A faithful local stand-in of the Volcengine RTC segment API, for tests, demos and benchmarks.

What moto is for AWS, async-native and with the quota modelled::

    from rtc_segment import SegmentClient
    from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    async with SegmentClient(DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:
        task = await client.get_segment_task("app", "room", "task")

The emulator serves both API versions (2022-06-01 and 2023-11-01), verifies V4
signatures, enforces the per-account QPS ceilings, serves tasks with lifecycles, injects
seeded faults, can delay requests on their way in (``forward_delay``, a jittery network)
and records every request. Serve it over HTTP with ``async with emulator.serve() as
base_url`` (extra ``emulator``), or block on :func:`run_emulator`.

:func:`max_in_window` measures any list of timestamps the way the ceiling counts them, for
tests that record their own.
"""

from __future__ import annotations

from ._emulator import DEFAULT_CREDENTIALS, Emulator
from ._envelope import Answer, EmulatorRequest, RequestHandler
from ._faults import Fault, FaultPlan, Latency, LatencyModel
from ._record import EmulatorStats, RequestRecord, max_in_window
from ._server import EmulatorASGIApp, run_emulator
from ._state import Lifecycle, TaskHandle
from ._transport import EmulatorTransport

__all__ = [
    "DEFAULT_CREDENTIALS",
    "Answer",
    "Emulator",
    "EmulatorASGIApp",
    "EmulatorRequest",
    "EmulatorStats",
    "EmulatorTransport",
    "Fault",
    "FaultPlan",
    "Latency",
    "LatencyModel",
    "Lifecycle",
    "RequestHandler",
    "RequestRecord",
    "TaskHandle",
    "max_in_window",
    "run_emulator",
]
