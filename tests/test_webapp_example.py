"""examples/webapp.py, served through httpx's ASGI transport against the emulator.

httpx.ASGITransport does not run the lifespan, so the tests enter it themselves -- as the
server would -- and check that one client is created, shared by requests, and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtc_segment import Backoff, SegmentClient
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import webapp


@contextlib.asynccontextmanager
async def serving(emulator: Emulator) -> AsyncIterator[tuple[httpx.AsyncClient, list[Any]]]:
    made: list[SegmentClient] = []

    def factory() -> SegmentClient:
        client = SegmentClient(
            DEFAULT_CREDENTIALS,
            transport=emulator.transport(),
            backoff=Backoff.disabled(),
            clock=emulator.wall_clock,
        )
        made.append(client)
        return client

    app = webapp.create_app(factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, made
    assert all(client.closed for client in made)


@pytest.mark.looptime
async def test_a_page_of_rooms_fans_out_in_order_with_per_room_errors() -> None:
    emulator = Emulator(latency=0.05)
    emulator.add_task("app", "room-1", "task-1")
    emulator.add_task(
        "app",
        "room-2",
        "task-2",
        lifecycle=Lifecycle.after_seconds(ended=0),
    )
    for i in range(3, 41):
        emulator.add_task("app", f"room-{i}", f"task-{i}")
    rooms = [f"room-{i}:task-{i}" for i in range(1, 41)] + ["room-x:missing", "room-y:bad id"]

    async with serving(emulator) as (http, made):
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await http.get("/apps/app/tasks", params=[("room", r) for r in rooms])
        elapsed = loop.time() - started

    assert response.status_code == 200
    tasks = response.json()["tasks"]
    assert [(t["room_id"], t["task_id"]) for t in tasks] == [tuple(r.split(":")) for r in rooms]
    assert tasks[0]["status"] == "RUNNING" and tasks[0]["ok"] and tasks[0]["error"] is None
    assert tasks[1]["status"] == "ENDED" and tasks[1]["ended_at"] is not None
    assert tasks[40]["error"]["type"] == "TaskNotFoundError" and not tasks[40]["ok"]
    assert tasks[41]["error"]["type"] == "ValueError" and tasks[41]["status"] is None
    # Fetched concurrently: 41 requests paced at ~60/s, not 41 round trips one after another.
    assert elapsed < 41 * 0.05
    assert emulator.count() == 41
    assert len(made) == 1


@pytest.mark.looptime
async def test_one_client_is_shared_by_concurrent_requests_under_one_ceiling() -> None:
    emulator = Emulator(latency=0.05)
    keys = [emulator.add_task("app", f"room-{i}", f"task-{i}").key for i in range(200)]
    pages = [keys[i : i + 50] for i in range(0, 200, 50)]

    async with serving(emulator) as (http, made):
        responses = await asyncio.gather(
            *(
                http.get("/apps/app/tasks", params=[("room", f"{k[1]}:{k[2]}") for k in page])
                for page in pages
            )
        )

    assert [r.status_code for r in responses] == [200] * 4
    assert all(t["ok"] for r in responses for t in r.json()["tasks"])
    assert len(made) == 1  # the lifespan made one client for all handlers
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) <= 60


@pytest.mark.looptime
async def test_bad_requests_are_refused_before_any_call() -> None:
    emulator = Emulator()
    async with serving(emulator) as (http, _made):
        no_rooms = await http.get("/apps/app/tasks")
        malformed = await http.get("/apps/app/tasks", params={"room": "room-without-task"})
        too_many = await http.get(
            "/apps/app/tasks", params=[("room", f"r{i}:t{i}") for i in range(101)]
        )
    assert [r.status_code for r in (no_rooms, malformed, too_many)] == [400, 400, 400]
    assert "ROOM_ID:TASK_ID" in malformed.json()["error"]
    assert emulator.count() == 0


async def test_the_module_app_runs_against_the_emulator_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTC_SEGMENT_EMULATOR", "1")
    app = webapp.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get(
                "/apps/demo-app/tasks", params=[("room", "room-00001:task-00001")]
            )
        assert app.state.client.limiter.qps == 60
    assert response.status_code == 200
    [task] = response.json()["tasks"]
    assert task["ok"], task
    assert app.state.client.closed
