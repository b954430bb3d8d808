"""The actions the emulator serves, dispatched by ``(Action, Version)``.

Each action is an :class:`ActionSpec`: its HTTP method, its documented QPS ceiling and a
handler. A handler gets an :class:`ActionCall` (the parameters -- query string for GET, the
JSON body's top-level object for POST -- and access to the emulator's state) and returns
the ``Result`` to send, or raises ``ServiceFailure``. Adding StartSegment & co. means
adding a handler and a line to :data:`ACTIONS`; routing, signature checks, throttling,
faults and recording are shared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._converter import unstructure
from .._models import SegmentTask, TaskKey
from ._envelope import ServiceFailure, invalid_parameter, missing_parameter

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["ACTIONS", "ActionCall", "ActionSpec"]

_ID_PATTERN = re.compile(r"[a-zA-Z0-9_@.\-]{1,128}")


@attrs.frozen
class ActionCall:
    """One call of an action, as a handler sees it.

    Attributes:
        emulator: The emulator (its task store and clocks).
        params: Query parameters (GET) or the JSON body's object (POST).
        dry: Compute the answer without side effects (no read counted, no state change).
    """

    emulator: Emulator
    params: Mapping[str, Any]
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
    """Reject ids the service rejects (facts §1: ``[a-zA-Z0-9_@.-]{1,128}``)."""
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


def task_not_found(key: TaskKey) -> ServiceFailure:
    """The documented "no such task" error (HTTP 400, see ``_envelope``)."""
    return invalid_parameter(
        f"The task {key.task_id!r} of room {key.room_id!r} in app {key.app_id!r} does not exist "
        "or started more than 72 hours ago",
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
    """GetSegmentTask 2022-06-01: the state of one task."""
    key = check_ids(*call.require("AppId", "RoomId", "TaskId"))
    emulator = call.emulator
    state = emulator._tasks.get(key)
    if state is None:
        raise task_not_found(key)
    emulator._advance(state)
    if not state.queryable(emulator._wall_ms()):
        raise task_not_found(key)
    if not call.dry:
        state.reads += 1
    return {"SegmentTask": task_json(state.task)}


ACTIONS: dict[tuple[str, str], ActionSpec] = {
    (spec.name, spec.version): spec
    for spec in (ActionSpec("GetSegmentTask", "2022-06-01", "GET", 60.0, get_segment_task),)
}
