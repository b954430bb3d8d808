"""The :class:`Emulator`: a faithful local stand-in of the RTC segment API."""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs

from .._credentials import Credentials
from .._models import (
    Control,
    SegmentTask,
    StopReason,
    StorageConfig,
    TargetStreams,
    TaskKey,
    TaskStatus,
)
from . import _envelope as errors
from ._actions import ACTIONS, ActionCall, ActionSpec
from ._auth import MAX_SKEW_SECONDS, AccessKey, RequestView, authenticate
from ._clock import StitchedClock
from ._envelope import JSON_HEADERS, Answer, ServiceFailure, error_body, success_body
from ._faults import Fault, FaultPlan, LatencyModel, as_latency_model
from ._record import EmulatorStats, Recorder, RequestRecord, max_in_window
from ._state import Lifecycle, TaskHandle, TaskState, default_fields, to_ms

if TYPE_CHECKING:
    from ._server import EmulatorASGIApp
    from ._transport import EmulatorTransport

__all__ = ["DEFAULT_CREDENTIALS", "Emulator", "EmulatorRequest"]

#: The fake key pair every :class:`Emulator` accepts unless told otherwise.
DEFAULT_CREDENTIALS = Credentials(
    "AKLTemulator0000000000000000000000", "ZW11bGF0b3Itc2VjcmV0LWtleS0wMDAwMDAwMDAwMA=="
)

_AK_PATTERN = re.compile(r"Credential=([^/,\s]+)/")
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Service notice</h1><p>The page you requested is temporarily unavailable."
    b"</p></body></html>\n"
)
_HTML_HEADERS = (("content-type", "text/html; charset=utf-8"),)
_UNSET: Any = object()


@attrs.frozen
class EmulatorRequest:
    """A request as the emulator sees it, independent of how it was delivered.

    Attributes:
        method: HTTP method (upper case).
        path: The decoded path (always ``/`` for the real API).
        query: The raw (percent-encoded) query string, without ``?``.
        headers: Header values by lower-case name.
        body: The raw body.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""


def _credential_list(credentials: Credentials | Iterable[Credentials] | None) -> list[Credentials]:
    if credentials is None:
        return [DEFAULT_CREDENTIALS]
    if isinstance(credentials, Credentials):
        return [credentials]
    items = list(credentials)
    for item in items:
        if not isinstance(item, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(item).__name__}")
    return items


class Emulator:
    """A local stand-in of the Volcengine RTC segment API (the 2022-06-01 segment family).

    It answers with the real envelope, verifies every request's V4 signature, enforces the
    per-account QPS ceiling, serves the tasks you register (with lifecycles), injects the
    faults you ask for and records every request. Use it in process through
    :meth:`transport` (no sockets) or over HTTP on 127.0.0.1 through :meth:`serve`.

    Args:
        credentials: The key pair(s) it accepts; each is its own account unless added with
            :meth:`add_credentials` under a shared account. Default: :data:`DEFAULT_CREDENTIALS`.
        qps: The per-account ceiling of GetSegmentTask (documented: 60); ``None`` disables it.
        action_qps: Ceilings of other actions by name (they default to their documented ones).
        region: The signing region it expects and reports (``cn-north-1``).
        service: The signing service it expects and reports (``rtc``).
        latency: Seconds added to every answer: a number, or a model from :class:`Latency`.
        seed: Seeds the fault mix, the latency draws and :meth:`seed_rooms`; same seed and same
            requests, same behaviour.
        clock: Monotonic seconds for the QPS window, lifecycles and latency. Default: the
            running event loop's time (so looptime's virtual time drives it).
        wall_clock: The current time as an aware UTC datetime, for ``X-Date`` checks and
            ``StartTime``/``EndTime``. Default: the real time when the emulator was created,
            advanced by ``clock``.
        max_skew: Seconds ``X-Date`` may differ from ``wall_clock`` (900: 15 minutes).
        record_limit: How many :class:`RequestRecord` to keep (oldest dropped first);
            ``None`` keeps all. Counters and the 1-second window maxima stay exact.

    **Throttling.** Arrivals are counted per account and action over a sliding 1-second
    window; a request that finds ``qps`` admitted requests in the last second is answered
    HTTP 429 ``FlowLimitExceeded`` (CodeN 100018, unverified). Throttled requests do *not*
    count toward the window: gateway limiters (token buckets, admitted-request logs) charge
    only what they let through, so a client that backs off is not punished further for the
    requests that were refused. Requests that fail before the ceiling (bad signature,
    unknown action) are not counted either: they are not attributable to an account.
    """

    def __init__(
        self,
        credentials: Credentials | Iterable[Credentials] | None = None,
        *,
        qps: float | None = 60.0,
        action_qps: Mapping[str, float | None] | None = None,
        region: str = "cn-north-1",
        service: str = "rtc",
        latency: float | LatencyModel | None = None,
        seed: int | None = 0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        max_skew: float = MAX_SKEW_SECONDS,
        record_limit: int | None = 100_000,
    ) -> None:
        self._clock: Callable[[], float] = clock or StitchedClock()
        if wall_clock is None:
            anchor_wall = datetime.now(timezone.utc)
            anchor = self._clock()
            monotonic = self._clock

            def wall_clock() -> datetime:
                return anchor_wall + timedelta(seconds=monotonic() - anchor)

        self._wall_clock: Callable[[], datetime] = wall_clock
        self.region = region
        self.service = service
        self.max_skew = float(max_skew)
        self._keys: dict[str, AccessKey] = {}
        for item in _credential_list(credentials):
            self.add_credentials(item)
        self._ceilings: dict[str, float | None] = {spec.name: spec.qps for spec in ACTIONS.values()}
        self.qps = qps
        for name, ceiling in (action_qps or {}).items():
            self._ceilings[name] = _check_qps(ceiling)
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._tasks: dict[TaskKey, TaskState] = {}
        self.faults = FaultPlan(seed=seed)
        """The :class:`FaultPlan`: scripted and random faults."""
        self._latency = as_latency_model(latency)
        self._latency_rng = random.Random(seed)
        self._seed = seed
        self._recorder = Recorder(record_limit)
        self._sequence = 0
        self._id_stamp = f"{random.Random(seed).getrandbits(24):06X}"

    # -- configuration ----------------------------------------------------------------

    @property
    def qps(self) -> float | None:
        """The per-account ceiling of GetSegmentTask (``None``: unlimited). Settable."""
        return self._ceilings["GetSegmentTask"]

    @qps.setter
    def qps(self, value: float | None) -> None:
        self._ceilings["GetSegmentTask"] = _check_qps(value)

    @property
    def latency(self) -> LatencyModel | None:
        """The latency model added to every answer. Settable (seconds or a model)."""
        return self._latency

    @latency.setter
    def latency(self, value: float | LatencyModel | None) -> None:
        self._latency = as_latency_model(value)

    @property
    def credentials(self) -> list[Credentials]:
        """Every key pair the emulator accepts."""
        return [key.credentials for key in self._keys.values()]

    def add_credentials(self, credentials: Credentials, *, account: str | None = None) -> None:
        """Accept another key pair.

        Args:
            credentials: The key pair (with a session token, requests must carry it).
            account: The account whose quota the key uses; keys with the same account share
                one ceiling (as sub-user keys of one Volcengine account do). Default: its own
                account, named after the access key id.
        """
        if not isinstance(credentials, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
        name = credentials.access_key_id if account is None else account
        self._keys[credentials.access_key_id] = AccessKey(credentials, name)

    def clock(self) -> float:
        """The emulator's monotonic time, in seconds."""
        return self._clock()

    def wall_clock(self) -> datetime:
        """The emulator's current time (aware UTC datetime)."""
        return self._wall_clock()

    def _now(self) -> float:
        return self._clock()

    def _wall_ms(self) -> int:
        return to_ms(self._wall_clock())

    def _wall_ms_at(self, monotonic: float) -> int:
        return to_ms(self._wall_clock() - timedelta(seconds=self._clock() - monotonic))

    # -- state ------------------------------------------------------------------------

    def add_task(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        status: TaskStatus | None = None,
        start_time: datetime | int | None = None,
        end_time: datetime | int | None = None,
        stop_reason: StopReason | None = _UNSET,
        max_idle_time: int | None = _UNSET,
        target_streams: TargetStreams | None = _UNSET,
        duration: int | None = _UNSET,
        identifier: str | None = None,
        handle: bool | None = _UNSET,
        control: Control | None = _UNSET,
        storage_config: StorageConfig | None = _UNSET,
        lifecycle: Lifecycle | None = None,
    ) -> TaskHandle:
        """Register a task (replacing any with the same key) and return its handle.

        Every :class:`SegmentTask` field can be given; omitted ones take the service's
        defaults (``MaxIdleTime`` 180, ``Duration`` 20, ``Handle`` true, all target streams,
        TOS storage). Times are aware datetimes or Unix milliseconds.

        Args:
            status: Initial status. Default: not started when ``lifecycle`` schedules a
                start, else running.
            start_time: Default: now, unless the task has not started (then 0 until it does).
            end_time: Default: now for an ended or failed task, else 0.
            stop_reason: Default: ``StopByAPI`` for an ended task, ``StartTaskFailed`` for a
                failed one, none otherwise.
            lifecycle: How the task moves on (see :class:`Lifecycle`).
        """
        key = TaskKey(app_id, room_id, task_id)
        if status is None:
            has_start = lifecycle is not None and lifecycle.has_start
            status = TaskStatus.NOT_STARTED if has_start else TaskStatus.RUNNING
        status = TaskStatus(status)
        now_ms = self._wall_ms()
        if start_time is None:
            start_ms = 0 if status in (TaskStatus.NOT_STARTED, TaskStatus.UNKNOWN) else now_ms
        else:
            start_ms = _as_ms(start_time)
        end_ms = (now_ms if status.is_terminal else 0) if end_time is None else _as_ms(end_time)
        if stop_reason is _UNSET:
            stop_reason = {
                TaskStatus.ENDED: StopReason.STOP_BY_API,
                TaskStatus.FAILED: StopReason.START_TASK_FAILED,
            }.get(status)
        fields = default_fields()
        given = {
            "max_idle_time": max_idle_time,
            "target_streams": target_streams,
            "duration": duration,
            "handle": handle,
            "control": control,
            "storage_config": storage_config,
        }
        fields.update({name: value for name, value in given.items() if value is not _UNSET})
        task = SegmentTask(
            start_time=start_ms,
            end_time=end_ms,
            status=status,
            stop_reason=stop_reason,
            identifier=identifier,
            **fields,
        )
        self._tasks[key] = TaskState(
            key=key,
            task=task,
            added_at=self._now(),
            registered_ms=now_ms,
            lifecycle=lifecycle,
        )
        return TaskHandle(self, key)

    def task(self, app_id: str, room_id: str, task_id: str) -> TaskHandle:
        """The handle of a registered task.

        Raises:
            KeyError: No such task.
        """
        key = TaskKey(app_id, room_id, task_id)
        if key not in self._tasks:
            raise KeyError(f"no task {key} in the emulator")
        return TaskHandle(self, key)

    @property
    def task_keys(self) -> list[TaskKey]:
        """The keys of every registered task, in registration order."""
        return list(self._tasks)

    def seed_rooms(
        self, n: int, *, app_id: str = "demo-app", seed: int | None = None
    ) -> list[TaskKey]:
        """Register ``n`` rooms with one task each, in varied states (for demos and benchmarks).

        About 10 % have not started yet (they start within 5 s and end within a minute),
        35 % are running and end within 2-20 s, 25 % run for a long time, 20 % have ended
        and 10 % have failed; fields (streams, storage, control) vary too. Reproducible for
        a given ``seed`` (default: the emulator's).
        """
        from ._seeding import seed_rooms

        return seed_rooms(self, n, app_id=app_id, seed=self._seed if seed is None else seed)

    def _advance(self, state: TaskState) -> None:
        state.advance(self._now(), self._wall_ms_at)

    # -- request handling -------------------------------------------------------------

    def handle(self, request: EmulatorRequest) -> Answer:
        """Answer one request: the single code path behind both transports.

        Records the request; returns the :class:`Answer` to deliver (after ``delay``, or
        by dropping the connection when ``drop`` is set).
        """
        now = self._now()
        wall = self._wall_clock()
        self._sequence += 1
        request_id = f"{wall:%Y%m%d%H%M%S}{self._id_stamp}{self._sequence:012X}"
        pairs = parse_qsl(request.query, keep_blank_values=True)
        query: dict[str, str] = {}
        for name, value in pairs:
            query.setdefault(name, value)
        action = query.get("Action")
        version = query.get("Version")
        spec = ACTIONS.get((action, version)) if action and version else None
        params: Mapping[str, Any] = query
        if spec is not None and spec.method == "POST" and request.method == "POST":
            with contextlib.suppress(ServiceFailure):
                params = _json_params(request.body)
        fault = self.faults.choose(action, params)
        meta = (request_id, action or "", version or "")

        account: str | None = None
        admitted = False
        if fault is None or fault is Fault.SLOW:
            answer, account, admitted, code = self._serve(
                request, pairs, spec, params, meta, wall, now
            )
        else:
            answer, code = self._fault_answer(fault, request, pairs, spec, params, meta, wall, now)

        delay = self._latency(self._latency_rng) if self._latency is not None else 0.0
        if fault is Fault.SLOW:
            delay += self.faults.slow_seconds
        if delay:
            answer = attrs.evolve(answer, delay=delay)

        ak_match = _AK_PATTERN.search(request.headers.get("authorization", ""))
        self._recorder.add(
            RequestRecord(
                request_id=request_id,
                arrival=now,
                method=request.method,
                action=action,
                version=version,
                key=_key_of(params),
                account=account,
                access_key_id=ak_match.group(1) if ak_match else None,
                x_date=request.headers.get("x-date"),
                http_status=None if answer.drop else answer.status,
                error_code=code,
                fault=fault,
                admitted=admitted,
            )
        )
        return answer

    def _serve(
        self,
        request: EmulatorRequest,
        pairs: list[tuple[str, str]],
        spec: ActionSpec | None,
        params: Mapping[str, Any],
        meta: tuple[str, str, str],
        wall: datetime,
        now: float,
        *,
        dry: bool = False,
    ) -> tuple[Answer, str | None, bool, str | None]:
        """The service proper: routing, signature, ceiling, action.

        Returns the answer, the account (once authenticated), whether the ceiling admitted
        the request and the error code (``None`` on success).
        """
        request_id, action, version = meta
        account: str | None = None
        admitted = False
        try:
            spec = self._route(request, spec, action, version)
            view = RequestView(
                method=request.method,
                path=request.path,
                query_pairs=pairs,
                header=request.headers.get,
                body=request.body,
            )
            key = authenticate(
                view,
                lookup=self._keys.get,
                now=wall,
                region=self.region,
                service=self.service,
                max_skew=self.max_skew,
            )
            account = key.account
            self._admit(account, spec.name, now, dry=dry)
            admitted = not dry
            if spec.method == "POST":
                params = _json_params(request.body)
            result = spec.handler(ActionCall(self, params, dry))
        except ServiceFailure as failure:
            body = error_body(
                failure,
                request_id=request_id,
                action=action,
                version=version,
                service=self.service,
                region=self.region,
            )
            answer = Answer(failure.status, JSON_HEADERS + failure.headers, body)
            return answer, account, admitted, failure.code
        body = success_body(
            request_id=request_id,
            action=action,
            version=version,
            service=self.service,
            region=self.region,
            result=result,
        )
        return Answer(200, JSON_HEADERS, body), account, admitted, None

    def _route(
        self, request: EmulatorRequest, spec: ActionSpec | None, action: str, version: str
    ) -> ActionSpec:
        if not action:
            raise errors.missing_parameter("The required parameter Action is missing")
        if not version:
            raise errors.missing_parameter("The required parameter Version is missing")
        if spec is None or request.path != "/":
            raise errors.invalid_action_or_version(
                f"Could not find operation {action} for version {version} of service "
                f"{self.service} (path {request.path[:100]!r})"
            )
        if request.method != spec.method:
            raise errors.method_not_allowed(
                f"{action} must be called with {spec.method}, not {request.method[:20]}"
            )
        return spec

    def _admit(self, account: str, action: str, now: float, *, dry: bool) -> None:
        ceiling = self._ceilings.get(action)
        if ceiling is None:
            return
        window = self._windows.get((account, action))
        if window is None:
            window = self._windows[account, action] = deque()
        horizon = now - 1.0
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= ceiling:
            raise errors.flow_limit_exceeded(
                f"Request was denied due to request throttling: the account's ceiling of "
                f"{ceiling:g} requests per second for {action} was exceeded"
            )
        if not dry:
            window.append(now)

    def _fault_answer(
        self,
        fault: Fault,
        request: EmulatorRequest,
        pairs: list[tuple[str, str]],
        spec: ActionSpec | None,
        params: Mapping[str, Any],
        meta: tuple[str, str, str],
        wall: datetime,
        now: float,
    ) -> tuple[Answer, str | None]:
        request_id, action, version = meta
        failure: ServiceFailure | None = None
        if fault is Fault.HTTP_500:
            failure = errors.internal_error("An internal error occurred; please retry later")
        elif fault is Fault.HTTP_502:
            failure = errors.internal_service_error("The service could not process the request")
        elif fault is Fault.HTTP_503:
            failure = errors.service_unavailable("The service is temporarily unavailable")
        elif fault is Fault.HTTP_504:
            failure = errors.internal_service_timeout("The service timed out")
        elif fault is Fault.HTTP_429:
            failure = errors.flow_limit_exceeded(
                "Request was denied due to request throttling",
                headers=(("retry-after", str(self.faults.retry_after)),),
            )
        if failure is not None:
            body = error_body(
                failure,
                request_id=request_id,
                action=action,
                version=version,
                service=self.service,
                region=self.region,
            )
            return Answer(failure.status, JSON_HEADERS + failure.headers, body), failure.code
        if fault is Fault.DROP:
            return Answer(200, JSON_HEADERS, b"", drop=True), None
        if fault is Fault.HTML_BODY:
            return Answer(200, _HTML_HEADERS, _HTML_PAGE), None
        if fault is Fault.EMPTY_BODY:
            return Answer(200, JSON_HEADERS, b""), None
        # TRUNCATED_BODY: the answer the service would give, computed without side effects.
        would_be, *_ = self._serve(request, pairs, spec, params, meta, wall, now, dry=True)
        return Answer(200, JSON_HEADERS, would_be.body[: len(would_be.body) // 2]), None

    # -- delivery ---------------------------------------------------------------------

    def transport(self) -> EmulatorTransport:
        """An :class:`httpx.AsyncBaseTransport` that delivers requests in process (no sockets).

        Pass it as ``SegmentClient(transport=...)``; any endpoint URL works. Latency sleeps
        on the event loop (virtual under looptime); a read timeout shorter than the delay
        raises :class:`httpx.ReadTimeout`, a dropped connection
        :class:`httpx.RemoteProtocolError`.
        """
        from ._transport import EmulatorTransport

        return EmulatorTransport(self)

    def asgi_app(self) -> EmulatorASGIApp:
        """A plain ASGI application serving this emulator (what :meth:`serve` runs)."""
        from ._server import EmulatorASGIApp

        return EmulatorASGIApp(self)

    def serve(
        self, *, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """Serve over HTTP with uvicorn (extra ``emulator``) while the context is open.

        ``async with emulator.serve(port=0) as base_url:`` -- ``base_url`` is
        ``http://127.0.0.1:<port>``, the endpoint to give the client. ``port=0`` picks a free
        port.
        """
        from ._server import serve

        return serve(self, host=host, port=port)

    # -- the record -------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """The kept records, oldest first (at most ``record_limit``)."""
        return list(self._recorder.records)

    @property
    def stats(self) -> EmulatorStats:
        """Exact totals since the last :meth:`reset_record`."""
        return self._recorder.stats()

    @property
    def throttled_count(self) -> int:
        """Requests refused by the QPS ceiling (exact; injected 429 faults excluded)."""
        return self._recorder.throttled

    def count(self, **filters: Any) -> int:
        """How many requests match every filter.

        Filters are :class:`RequestRecord` attributes (``action``, ``http_status``,
        ``error_code``, ``fault``, ``account``, ``admitted``, ``throttled``, ``ok``,
        ``key``), plus ``app_id``, ``room_id`` and ``task_id``. Without filters the answer is
        exact; with filters it counts the kept records.
        """
        if not filters:
            return self._recorder.total
        return sum(1 for record in self._recorder.records if _matches(record, filters))

    def max_in_window(
        self, seconds: float = 1.0, *, admitted_only: bool = False, **filters: Any
    ) -> int:
        """The most request arrivals in any sliding window of ``seconds``.

        ``admitted_only`` counts only requests that passed the ceiling. For a 1-second
        window without filters the answer is exact however long the run; otherwise it is
        computed from the kept records (filters as in :meth:`count`).
        """
        if seconds == 1.0 and not filters:
            return self._recorder.window_max(admitted_only=admitted_only)
        if admitted_only:
            filters["admitted"] = True
        arrivals = (r.arrival for r in self._recorder.records if _matches(r, filters))
        return max_in_window(arrivals, seconds)

    def reset_record(self) -> None:
        """Forget the record and the counters (the tasks and the QPS window are kept)."""
        self._recorder.reset()

    def __repr__(self) -> str:
        return (
            f"Emulator(accounts={len({k.account for k in self._keys.values()})}, "
            f"qps={self.qps!r}, tasks={len(self._tasks)}, requests={self._recorder.total})"
        )


def _check_qps(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"qps must be a positive number or None, got {value!r}")
    return float(value)


def _as_ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"times must be datetimes or Unix milliseconds, not {value!r}")
    return value


def _json_params(body: bytes) -> dict[str, Any]:
    if not body:
        raise errors.invalid_parameter("The request body is empty", "InvalidParameter.BodyIsEmpty")
    try:
        params = json.loads(body)
    except (ValueError, RecursionError):
        params = None
    if not isinstance(params, dict):
        raise errors.invalid_parameter(
            "The request body is not a JSON object", "InvalidParameter.Unmarshal"
        )
    return params


def _key_of(params: Mapping[str, Any]) -> TaskKey | None:
    app_id, room_id, task_id = (params.get(n) for n in ("AppId", "RoomId", "TaskId"))
    if isinstance(app_id, str) and isinstance(room_id, str) and isinstance(task_id, str):
        return TaskKey(app_id, room_id, task_id)
    return None


_KEY_PARTS = {"app_id": 0, "room_id": 1, "task_id": 2}


def _matches(record: RequestRecord, filters: Mapping[str, Any]) -> bool:
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
