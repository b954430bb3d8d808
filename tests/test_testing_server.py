"""The loopback server embedded in the caller's loop leaves signal handling to the caller."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from rtc_segment import SegmentClient, TaskStatus
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_serving_does_not_replace_the_sigint_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    async with emulator.serve() as url:
        assert signal.getsignal(signal.SIGINT) is before
        async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=url) as client:
            task = await client.get_segment_task("app", "room", "task")
    assert task.status is TaskStatus.RUNNING
    assert signal.getsignal(signal.SIGINT) is before


async def test_ctrl_c_while_serving_reaches_the_application_once() -> None:
    loop = asyncio.get_running_loop()
    presses: list[int] = []
    pressed = asyncio.Event()

    def on_sigint() -> None:
        presses.append(1)
        pressed.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        async with Emulator().serve():
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(pressed.wait(), 5)
        # Leaving the server must not deliver the signal a second time (uvicorn's own
        # handling re-raises the signals it caught when it stops).
        await asyncio.sleep(0.05)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    assert presses == [1]
