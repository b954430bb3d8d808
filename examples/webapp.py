"""rtc_segment in a web app: one client per process, shared by every handler.

The client is created in the app's lifespan and closed when the app shuts down: it owns
the connection pool and the rate limiter, so one per process keeps every handler under the
same ceiling and reuses connections. (Several processes of one account should share a
``RedisRateLimiter``: pass ``limiter=`` in ``make_client``.)

``GET /apps/{app_id}/tasks?room=ROOM:TASK&room=ROOM:TASK...`` fans out over a page of rooms
(at most 100) and answers, in the order asked, each task's state or the error for it::

    {"tasks": [{"room_id": "room-1", "task_id": "task-1", "ok": true,
                "status": "RUNNING", "started_at": "...", "ended_at": null,
                "stop_reason": null, "error": null}, ...]}

Run it against the emulator (50 seeded rooms of app ``demo-app``)::

    RTC_SEGMENT_EMULATOR=1 uvicorn examples.webapp:app
    curl 'http://127.0.0.1:8000/apps/demo-app/tasks?room=room-00001:task-00001&room=room-00002:task-00002'

or against the service, with ``VOLC_ACCESSKEY`` and ``VOLC_SECRETKEY`` set::

    uvicorn examples.webapp:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rtc_segment import SegmentClient, TaskKey, TaskOutcome

MAX_PAGE = 100


def make_client() -> SegmentClient:
    """The process's client: the emulator when ``RTC_SEGMENT_EMULATOR`` is set, else the API."""
    if os.environ.get("RTC_SEGMENT_EMULATOR"):
        from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

        emulator = Emulator()
        emulator.seed_rooms(50)
        return SegmentClient(DEFAULT_CREDENTIALS, transport=emulator.transport())
    return SegmentClient()  # credentials from the environment or ~/.volc/credentials


def _describe(outcome: TaskOutcome) -> dict[str, Any]:
    _app_id, room_id, task_id = outcome.key
    item: dict[str, Any] = {"room_id": room_id, "task_id": task_id, "ok": outcome.ok}
    task = outcome.task
    item["status"] = task.status.name if task else None
    item["started_at"] = task.started_at.isoformat() if task and task.started_at else None
    item["ended_at"] = task.ended_at.isoformat() if task and task.ended_at else None
    item["stop_reason"] = task.stop_reason.value if task and task.stop_reason else None
    error = outcome.error
    item["error"] = {"type": type(error).__name__, "message": str(error)} if error else None
    return item


async def list_tasks(request: Request) -> JSONResponse:
    """The state of a page of rooms' tasks, fetched concurrently under the shared ceiling."""
    client: SegmentClient = request.app.state.client
    app_id = request.path_params["app_id"]
    rooms = request.query_params.getlist("room")
    if not rooms:
        return JSONResponse({"error": "give at least one room=ROOM_ID:TASK_ID"}, status_code=400)
    if len(rooms) > MAX_PAGE:
        return JSONResponse({"error": f"at most {MAX_PAGE} rooms per page"}, status_code=400)
    keys: list[TaskKey] = []
    for room in rooms:
        room_id, colon, task_id = room.partition(":")
        if not colon:
            return JSONResponse({"error": f"room={room!r} is not ROOM_ID:TASK_ID"}, status_code=400)
        keys.append(TaskKey(app_id, room_id, task_id))
    # Invalid ids come back as per-room errors, like any other failure of one room.
    outcomes = await client.gather_segment_tasks(keys)
    return JSONResponse({"tasks": [_describe(outcome) for outcome in outcomes]})


def create_app(client_factory: Callable[[], SegmentClient] = make_client) -> Starlette:
    """The app; ``client_factory`` builds the one client it shares (tests pass their own)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client_factory() as client:
            app.state.client = client
            yield

    return Starlette(
        routes=[Route("/apps/{app_id}/tasks", list_tasks, methods=["GET"])],
        lifespan=lifespan,
    )


app = create_app()
