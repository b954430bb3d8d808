"""The actions the emulator serves, dispatched by ``(Action, Version)``.

Each action is an :class:`ActionSpec`: its HTTP method, its documented QPS ceiling and a
handler. A handler gets an :class:`ActionCall` (the parameters -- query string for GET, the
JSON body's top-level object for POST -- the version, and the :class:`TaskStore`) and
returns the ``Result`` to send, or raises ``ServiceFailure``. Routing, signature checks,
throttling, faults and recording are shared; an action is a handler and a line in
:data:`ACTIONS`.

The segment family, in both versions the service documents (:data:`VERSIONS`): 2022-06-01
and 2023-11-01 (the latest). Their request and answer shapes and their ceilings are the
same; one behaviour differs, noted below.

- **StartSegment** creates a running task (``StartTime`` = now) with the given fields.
  While a task with that key has not ended (running or not started), 2022-06-01 answers
  ``InvalidParameter.TaskAlreadyExists``; 2023-11-01 succeeds without touching the task,
  with the ``Result`` the service documents, :data:`ALREADY_STARTED`
  (https://www.volcengine.com/docs/6348/1188212). Starting the id of an *ended or failed*
  task is accepted and starts a new task under that key, which replaces the old one
  (GetSegmentTask then reports the new run): ids name a task slot, not a single run.
- **UpdateSegment** changes ``Identifier``, ``Handle`` and/or ``Duration`` of a task that has
  not ended; a body with none of them is accepted and changes nothing.
- **StopSegment** ends a task that has not ended: ``ENDED``, ``StopByAPI``, ``EndTime`` = now.
- Update and stop of a missing or ended task answer
  ``InvalidParameter.ErrorActiveTaskNotFound``; invalid bodies ``InvalidParameter`` with a
  message naming the field (see ``_requests``).

Third-party storage keys (``CustomConfig.AccessKey``/``SecretKey``) are kept with the task
but never returned, recorded or put into a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._converter import unstructure
from .._models import SegmentTask, StopReason, TaskKey, TaskStatus
from ._envelope import ServiceFailure, invalid_parameter, missing_parameter
from ._requests import (
    DURATION_RANGE,
    MAX_IDLE_TIME_RANGE,
    optional_bool,
    optional_id,
    optional_int,
    parse_control,
    parse_storage_config,
    parse_target_streams,
)
from ._state import TaskState, TaskStore

__all__ = ["ACTIONS", "ALREADY_STARTED", "VERSIONS", "ActionCall", "ActionSpec"]

#: The versions of the segment actions the emulator serves (oldest first).
VERSIONS = ("2022-06-01", "2023-11-01")
#: The ``Result`` of a 2023-11-01 StartSegment for a task that is already running, as the
#: service documents it.
ALREADY_STARTED = (
    "The task has been started. Please do not call the startup task interface repeatedly"
)
#: Versions where starting a running task succeeds with :data:`ALREADY_STARTED`.
_REPEAT_START_SUCCEEDS = frozenset({"2023-11-01"})

_ID_PATTERN = re.compile(r"[a-zA-Z0-9_@.\-]{1,128}")


@attrs.frozen
class ActionCall:
    """One call of an action, as a handler sees it.

    Attributes:
        store: The emulator's tasks and clocks.
        params: Query parameters (GET) or the JSON body's object (POST).
        version: The version the request asked for (one of :data:`VERSIONS`).
        dry: Compute the answer without side effects (no read counted, no state change).
    """

    store: TaskStore
    params: Mapping[str, Any]
    version: str
    dry: bool = False

    def require(self, *names: str) -> list[str]:
        """The values of required string parameters, or ``MissingParameter``."""
        values = []
        for name in names:
            value = self.params.get(name)
            if value is None or value == "":
                raise missing_parameter(f"The required parameter {name} is missing")
            if not isinstance(value, str):
                raise invalid_parameter(f"{name} must be a string")
            values.append(value)
        return values


@attrs.frozen
class ActionSpec:
    """An action the emulator serves."""

    name: str
    version: str
    method: str
    qps: float | None
    """The documented per-account ceiling (``None``: none enforced)."""
    handler: Callable[[ActionCall], Any]


def check_ids(app_id: str, room_id: str, task_id: str) -> TaskKey:
    """Reject ids the service rejects: ``[a-zA-Z0-9_@.-]{1,128}``
    (https://www.volcengine.com/docs/6348/69828)."""
    for name, value, code in (
        ("AppId", app_id, "InvalidParameter.IllegalAppId"),
        ("RoomId", room_id, "InvalidParameter.IllegalRoomID"),
        ("TaskId", task_id, "InvalidParameter"),
    ):
        if not _ID_PATTERN.fullmatch(value):
            raise invalid_parameter(
                f"{name} is invalid: it must be 1-128 characters from a-z A-Z 0-9 _ @ . -",
                code,
            )
    return TaskKey(app_id, room_id, task_id)


def task_not_found(key: TaskKey, why: str = "started more than 72 hours ago") -> ServiceFailure:
    """The documented "no such task" error (HTTP 400, see ``_envelope``)."""
    return invalid_parameter(
        f"The task {key.task_id!r} of room {key.room_id!r} in app {key.app_id!r} does not exist "
        f"or {why}",
        "InvalidParameter.ErrorActiveTaskNotFound",
    )


_EMPTY_CONFIGS = {
    "TosConfig": {"Region": 0},
    "VodConfig": {"Region": 0},
    "VeImageXConfig": {"Region": 0},
    "CustomConfig": {"Vendor": 0, "Region": 0},
}


def task_json(task: SegmentTask) -> dict[str, Any]:
    """``Result.SegmentTask`` the way the service writes it.

    Like the documented example: ``StopReason`` is ``""`` until the task stops, every
    storage sub-object is present (zero values when unused), and the third-party storage
    keys are never returned.
    """
    data = unstructure(task)
    data.setdefault("StopReason", "")
    storage = data.get("StorageConfig")
    if storage is not None:
        for name, empty in _EMPTY_CONFIGS.items():
            storage.setdefault(name, dict(empty))
        custom = storage["CustomConfig"]
        custom.pop("AccessKey", None)
        custom.pop("SecretKey", None)
    return data


def get_segment_task(call: ActionCall) -> Any:
    """GetSegmentTask: the state of one task."""
    key = check_ids(*call.require("AppId", "RoomId", "TaskId"))
    state = call.store.get(key)
    if state is None or not state.queryable(call.store.wall_ms()):
        raise task_not_found(key)
    if not call.dry:
        state.reads += 1
    return {"SegmentTask": task_json(state.task)}


#: What Start, Update and Stop answer on success (https://www.volcengine.com/docs/6348/155131).
OK = "ok"


def _active_task(call: ActionCall) -> TaskState:
    """The task a Start/Update/Stop body names, if it has not ended; else not found."""
    key = check_ids(*call.require("AppId", "RoomId", "TaskId"))
    optional_id(call.params, "BusinessId")
    state = call.store.get(key)
    if state is not None and not state.task.is_terminal:
        return state
    raise task_not_found(key, "has already ended")


def start_segment(call: ActionCall) -> Any:
    """StartSegment: a new running task with the body's fields (see the module's notes)."""
    params = call.params
    key = check_ids(*call.require("AppId", "RoomId", "TaskId"))
    optional_id(params, "BusinessId")
    max_idle_time = optional_int(params, "MaxIdleTime", MAX_IDLE_TIME_RANGE)
    duration = optional_int(params, "Duration", DURATION_RANGE)
    handle = optional_bool(params, "Handle")
    identifier = optional_id(params, "Identifier")
    target_streams = parse_target_streams(params)
    control = parse_control(params)
    storage_config = parse_storage_config(params)
    store = call.store
    existing = store.get(key)
    if existing is not None and not existing.task.is_terminal:
        if call.version in _REPEAT_START_SUCCEEDS:
            return ALREADY_STARTED
        raise invalid_parameter(
            f"The task {key.task_id!r} of room {key.room_id!r} already exists and has not ended",
            "InvalidParameter.TaskAlreadyExists",
        )
    if call.dry:
        return OK
    now_ms = store.wall_ms()
    task = SegmentTask(
        start_time=now_ms,
        end_time=0,
        status=TaskStatus.RUNNING,
        stop_reason=None,
        max_idle_time=180 if max_idle_time is None else max_idle_time,
        target_streams=target_streams,
        duration=20 if duration is None else duration,
        identifier=identifier,
        handle=True if handle is None else handle,
        control=control,
        storage_config=storage_config,
    )
    # A restarted id moves to the end of ``task_keys`` like a new task.
    store.put(key, task)
    return OK


def update_segment(call: ActionCall) -> Any:
    """UpdateSegment: change Identifier, Handle and/or Duration of an active task."""
    params = call.params
    check_ids(*call.require("AppId", "RoomId", "TaskId"))
    # The body is checked before the task is looked up, as StartSegment does.
    given: dict[str, Any] = {
        "identifier": optional_id(params, "Identifier"),
        "handle": optional_bool(params, "Handle"),
        "duration": optional_int(params, "Duration", DURATION_RANGE),
    }
    changes = {name: value for name, value in given.items() if value is not None}
    state = _active_task(call)
    if changes and not call.dry:
        state.task = attrs.evolve(state.task, **changes)
    return OK


def stop_segment(call: ActionCall) -> Any:
    """StopSegment: end an active task (``ENDED``, ``StopByAPI``, EndTime now)."""
    state = _active_task(call)
    if call.dry:
        return OK
    now_ms = call.store.wall_ms()
    task = state.task
    state.lifecycle = None  # stopped now: whatever was scheduled no longer happens
    state.task = attrs.evolve(
        task,
        status=TaskStatus.ENDED,
        stop_reason=StopReason.STOP_BY_API,
        start_time=task.start_time or now_ms,  # stopped before it ever ran
        end_time=now_ms,
    )
    return OK


#: The documented ceilings, per account, the same in both versions.
_FAMILY = (
    ("GetSegmentTask", "GET", 60.0, get_segment_task),
    ("StartSegment", "POST", 60.0, start_segment),
    ("UpdateSegment", "POST", 150.0, update_segment),
    ("StopSegment", "POST", 150.0, stop_segment),
)

#: Every ``(Action, Version)`` the emulator serves; any other pair is
#: ``InvalidActionOrVersion``.
ACTIONS: dict[tuple[str, str], ActionSpec] = {
    (name, version): ActionSpec(name, version, method, qps, handler)
    for version in VERSIONS
    for name, method, qps, handler in _FAMILY
}
