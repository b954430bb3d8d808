"""The :class:`Emulator`: a faithful local stand-in of the RTC segment API.

It wires the pieces below it -- signature checks (``_auth``), the ceilings (``_quota``), the
actions (``_actions``) over the task store (``_state``), faults and delays (``_faults``) and
the record (``_record``) -- into one request handler, which both deliveries (``_transport``
in process, ``_server`` over loopback HTTP) call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import attrs

from .._credentials import Credentials
from .._models import (
    Control,
    StopReason,
    StorageConfig,
    TargetStreams,
    TaskKey,
    TaskStatus,
)
from . import _envelope as errors
from . import _server
from ._actions import ACTIONS, ActionCall, ActionSpec
from ._auth import MAX_SKEW_SECONDS, AccessKey, RequestView, authenticate
from ._clock import StitchedClock, anchored_wall_clock
from ._envelope import Answer, EmulatorRequest, Envelope, ServiceFailure
from ._faults import Fault, FaultPlan, LatencyModel, as_delay_model, draw, fault_answer
from ._quota import Quota
from ._record import EmulatorStats, Recorder, RequestRecord, task_key_of
from ._seeding import seed_rooms
from ._server import EmulatorASGIApp
from ._state import UNSET, Lifecycle, TaskHandle, TaskStore, register
from ._sts import STS_ACTIONS, STS_VERSION, CredentialsIssuer, imds_action
from ._transport import EmulatorTransport

__all__ = ["DEFAULT_CREDENTIALS", "Emulator"]

#: The fake key pair every :class:`Emulator` accepts unless told otherwise.
DEFAULT_CREDENTIALS = Credentials(
    "AKLTemulator0000000000000000000000", "ZW11bGF0b3Itc2VjcmV0LWtleS0wMDAwMDAwMDAwMA=="
)

_AK_PATTERN = re.compile(r"Credential=([^/,\s]+)/")
#: How much of a caller-chosen Action/Version/path an error message repeats.
_SHOWN = 100


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


def _seeded(seed: int | None, stream: str) -> random.Random:
    """An RNG of its own per delay source, so that turning one on leaves the other's draws be."""
    return random.Random(None if seed is None else f"{stream}/{seed}")


class Emulator:
    """A local stand-in of the Volcengine RTC segment API (the segment family, both versions).

    It answers with the real envelope, verifies every request's V4 signature, enforces the
    per-account QPS ceilings, serves the tasks you register (with lifecycles), injects the
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
        forward_delay: Seconds every request takes to reach the service, before it is
            counted against the ceiling: a number, or a model from :class:`Latency` (e.g.
            ``Latency.uniform(0, 0.02)`` or ``Latency.lognormal(0.005, 0.8)``). See below.
        seed: Seeds the fault mix, the latency and forward-delay draws (each from its own
            RNG) and :meth:`seed_rooms`; same seed and same requests, same behaviour.
        clock: Monotonic seconds for the QPS window, lifecycles and latency. Default: the
            running event loop's time (so looptime's virtual time drives it).
        wall_clock: The current time as an aware UTC datetime, for ``X-Date`` checks and
            ``StartTime``/``EndTime``. Default: the real time when the emulator was created,
            advanced by ``clock``.
        max_skew: Seconds ``X-Date`` may differ from ``wall_clock`` (900: 15 minutes).
        record_limit: How many :class:`RequestRecord` to keep (oldest dropped first);
            ``None`` keeps all. Counters and the 1-second window maxima stay exact.
        credentials_lifetime: Seconds the temporary credentials it issues last (STS and
            instance role); ``None`` honours the request's ``DurationSeconds`` (3600 for
            the instance role). Settable.

    **Temporary credentials.** On the same transport and server it serves STS
    (``AssumeRole``, signed with a key it accepts; ``AssumeRoleWithOIDC``, with a token
    registered by :meth:`add_oidc_token`; ``Version=2018-01-01``) and instance metadata
    (IMDSv2, for the roles added with :meth:`add_instance_role`). The keys it issues are
    accepted by the RTC actions until they expire; then they are answered HTTP 401
    ``InvalidSecurityToken``. STS and metadata requests are recorded (the metadata ones
    with actions ``imds:token``, ``imds:roles``, ``imds:credentials``) and take faults
    like any other action (``faults.next(1, Fault.HTTP_500, action="AssumeRole")``);
    they are not counted against the RTC ceilings.

    **Versions.** GetSegmentTask, StartSegment, UpdateSegment and StopSegment are served in
    2022-06-01 and 2023-11-01 with the same shapes; in 2023-11-01 a StartSegment for a task
    that is already running succeeds with a notice as its ``Result`` (2022-06-01:
    ``InvalidParameter.TaskAlreadyExists``). Any other ``Action``/``Version`` pair is
    answered HTTP 404 ``InvalidActionOrVersion`` (CodeN 100008) once the signature checks
    out, as the gateway does; a request naming no ``Action`` or ``Version`` at all is
    ``MissingParameter`` before that. Each record keeps the version asked for.

    **Throttling.** Arrivals are counted per account and action over a sliding 1-second
    window; both versions of an action share its window (the ceiling is documented per
    action and account, not per version). A request that finds ``qps`` admitted requests
    in the last second is answered HTTP 429 ``FlowLimitExceeded`` (CodeN 100018,
    unverified). Throttled requests do *not* count toward the window: gateway limiters
    (token buckets, admitted-request logs) charge only what they let through, so a client
    that backs off is not punished further for the requests that were refused. Requests
    that fail before the ceiling (bad signature, unknown action or version) are not counted
    either: an unknown action has no ceiling to count against.

    **Path delay.** With ``forward_delay``, each request waits a fresh draw on the event
    loop (virtual under looptime) *before* it reaches the service: only then is it checked,
    counted against the ceiling and recorded (:attr:`RequestRecord.arrival` is that moment;
    :attr:`RequestRecord.forward_delay` the draw). Requests sent evenly can so arrive
    bunched, or overtake each other, as on a jittery network: a client sending exactly
    ``qps`` per second is throttled once the spread of the delay exceeds the gap between
    its sends. A request on its way still arrives if its sender stops waiting, as one
    already on the wire would. ``latency`` is separate: it delays the answer, after the
    request was counted; the client waits for both.
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
        forward_delay: float | LatencyModel | None = None,
        seed: int | None = 0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        max_skew: float = MAX_SKEW_SECONDS,
        record_limit: int | None = 100_000,
        credentials_lifetime: float | None = None,
    ) -> None:
        self._clock: Callable[[], float] = clock or StitchedClock()
        self._wall_clock = wall_clock or anchored_wall_clock(self._clock)
        self.region = region
        self.service = service
        self.max_skew = float(max_skew)
        self._keys: dict[str, AccessKey] = {}
        self._issuer = CredentialsIssuer(
            self._keys, self._wall_clock, seed=seed, lifetime=credentials_lifetime
        )
        for item in _credential_list(credentials):
            self.add_credentials(item)
        self._quota = Quota({spec.name: spec.qps for spec in ACTIONS.values()})
        self.qps = qps
        for name, ceiling in (action_qps or {}).items():
            self._quota.set_ceiling(name, ceiling, name=f"action_qps[{name!r}]")
        self._tasks = TaskStore(self._clock, self._wall_clock)
        self.faults = FaultPlan(seed=seed)
        """The :class:`FaultPlan`: scripted and random faults."""
        self._latency = as_delay_model("latency", latency)
        self._latency_rng = random.Random(seed)
        self._forward_delay = as_delay_model("forward_delay", forward_delay)
        self._forward_rng = _seeded(seed, "forward_delay")
        self._on_the_way: set[asyncio.Future[Answer]] = set()
        self._seed = seed
        self._recorder = Recorder(record_limit)
        self._sequence = 0
        self._id_stamp = f"{random.Random(seed).getrandbits(24):06X}"

    # -- configuration ----------------------------------------------------------------

    @property
    def qps(self) -> float | None:
        """The per-account ceiling of GetSegmentTask (``None``: unlimited). Settable."""
        return self._quota.ceiling("GetSegmentTask")

    @qps.setter
    def qps(self, value: float | None) -> None:
        self._quota.set_ceiling("GetSegmentTask", value)

    @property
    def latency(self) -> LatencyModel | None:
        """The latency model added to every answer. Settable (seconds or a model)."""
        return self._latency

    @latency.setter
    def latency(self, value: float | LatencyModel | None) -> None:
        self._latency = as_delay_model("latency", value)

    @property
    def forward_delay(self) -> LatencyModel | None:
        """The delay before a request reaches the service. Settable (seconds or a model)."""
        return self._forward_delay

    @forward_delay.setter
    def forward_delay(self, value: float | LatencyModel | None) -> None:
        self._forward_delay = as_delay_model("forward_delay", value)

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

    @property
    def credentials_lifetime(self) -> float | None:
        """Seconds issued temporary credentials last (``None``: as requested). Settable."""
        return self._issuer.lifetime

    @credentials_lifetime.setter
    def credentials_lifetime(self, value: float | None) -> None:
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"credentials_lifetime must be positive seconds, got {value!r}")
        self._issuer.lifetime = value

    def add_oidc_token(self, token: str) -> None:
        """Accept ``token`` as an OIDC token in ``AssumeRoleWithOIDC`` (any role)."""
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty str")
        self._issuer.oidc_tokens.add(token)

    def remove_oidc_token(self, token: str) -> None:
        """Stop accepting ``token`` (as after the kubelet rotated it)."""
        self._issuer.remove_oidc_token(token)

    def add_instance_role(self, role_name: str) -> None:
        """Attach a role to the emulated instance: its metadata serves credentials for it."""
        if not isinstance(role_name, str) or not role_name:
            raise ValueError("role_name must be a non-empty str")
        self._issuer.instance_roles.append(role_name)

    def expire_issued_credentials(self) -> int:
        """Make every temporary key issued so far expire now (a revoked role, say).

        Returns:
            How many keys were still valid.
        """
        return self._issuer.expire_all()

    @property
    def issued_credentials(self) -> int:
        """How many sets of temporary credentials STS and the metadata service issued."""
        return self._issuer.issued

    def clock(self) -> float:
        """The emulator's monotonic time, in seconds."""
        return self._clock()

    def wall_clock(self) -> datetime:
        """The emulator's current time (aware UTC datetime)."""
        return self._wall_clock()

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
        stop_reason: StopReason | None = UNSET,
        max_idle_time: int | None = UNSET,
        target_streams: TargetStreams | None = UNSET,
        duration: int | None = UNSET,
        identifier: str | None = None,
        handle: bool | None = UNSET,
        control: Control | None = UNSET,
        storage_config: StorageConfig | None = UNSET,
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
        register(
            self._tasks,
            key,
            status=status,
            start_time=start_time,
            end_time=end_time,
            stop_reason=stop_reason,
            identifier=identifier,
            lifecycle=lifecycle,
            max_idle_time=max_idle_time,
            target_streams=target_streams,
            duration=duration,
            handle=handle,
            control=control,
            storage_config=storage_config,
        )
        return TaskHandle(self._tasks, key)

    def task(self, app_id: str, room_id: str, task_id: str) -> TaskHandle:
        """The handle of a registered task.

        Raises:
            KeyError: No such task.
        """
        key = TaskKey(app_id, room_id, task_id)
        if key not in self._tasks:
            raise KeyError(f"no task {key} in the emulator")
        return TaskHandle(self._tasks, key)

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
        return seed_rooms(self._tasks, n, app_id=app_id, seed=self._seed if seed is None else seed)

    # -- request handling -------------------------------------------------------------

    async def handle(self, request: EmulatorRequest) -> Answer:
        """Answer one request: the single code path behind both deliveries.

        Waits out the request's forward delay (if any), then records it and returns the
        :class:`Answer` to deliver (after ``delay``, or by dropping the connection when
        ``drop`` is set). This makes the emulator a :class:`RequestHandler`.
        """
        delay = draw(self._forward_delay, self._forward_rng)
        if delay == 0.0:
            return self._receive(request, 0.0)
        # The request is on the wire: it arrives even if its sender stops waiting for it.
        arrival = asyncio.ensure_future(self._arrive_after(delay, request))
        self._on_the_way.add(arrival)
        arrival.add_done_callback(self._on_the_way.discard)
        return await asyncio.shield(arrival)

    async def _arrive_after(self, delay: float, request: EmulatorRequest) -> Answer:
        await asyncio.sleep(delay)
        return self._receive(request, delay)

    def _receive(self, request: EmulatorRequest, forward_delay: float) -> Answer:
        """The request reaches the service now: fault or service, latency, record."""
        now = self._clock()
        wall = self._wall_clock()
        self._sequence += 1
        request_id = f"{wall:%Y%m%d%H%M%S}{self._id_stamp}{self._sequence:012X}"
        pairs = parse_qsl(request.query, keep_blank_values=True)
        query: dict[str, str] = {}
        for name, value in pairs:
            query.setdefault(name, value)
        action = query.get("Action")
        version = query.get("Version")
        metadata_action = imds_action(request.path)
        if metadata_action is not None:
            action, version = metadata_action, None
        spec = ACTIONS.get((action, version)) if action and version else None
        params: Mapping[str, Any] = query
        if spec is not None and spec.method == "POST" and request.method == "POST":
            with contextlib.suppress(ServiceFailure):
                params = _json_params(request.body)
        fault = self.faults.choose(action, params)
        envelope = Envelope(request_id, action or "", version or "", self.service, self.region)

        account: str | None = None
        admitted = False
        if fault is None or fault is Fault.SLOW:
            if metadata_action is not None:
                answer, code = self._issuer.serve_imds(request)
            elif action in STS_ACTIONS and version == STS_VERSION and request.path == "/":
                envelope = attrs.evolve(envelope, service="sts")
                answer, account, code = self._issuer.serve_sts(
                    request, pairs, query, envelope, region=self.region, max_skew=self.max_skew
                )
            else:
                answer, account, admitted, code = self._serve(
                    request, pairs, spec, params, envelope, wall, now
                )
        else:
            answer, code = fault_answer(
                fault,
                envelope,
                retry_after=self.faults.retry_after,
                would_be=lambda: self._serve(
                    request, pairs, spec, params, envelope, wall, now, dry=True
                )[0],
            )

        delay = draw(self._latency, self._latency_rng)
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
                key=task_key_of(params),
                account=account,
                access_key_id=ak_match.group(1) if ak_match else None,
                x_date=request.headers.get("x-date"),
                http_status=None if answer.drop else answer.status,
                error_code=code,
                fault=fault,
                admitted=admitted,
                forward_delay=forward_delay,
            )
        )
        return answer

    def _serve(
        self,
        request: EmulatorRequest,
        pairs: list[tuple[str, str]],
        spec: ActionSpec | None,
        params: Mapping[str, Any],
        envelope: Envelope,
        wall: datetime,
        now: float,
        *,
        dry: bool = False,
    ) -> tuple[Answer, str | None, bool, str | None]:
        """The service proper: signature, routing, ceiling, action -- in the gateway's order.

        Returns the answer, the account (once authenticated), whether the ceiling admitted
        the request and the error code (``None`` on success).
        """
        account: str | None = None
        admitted = False
        try:
            # Without an Action and a Version there is nothing to route to.
            for name, value in (("Action", envelope.action), ("Version", envelope.version)):
                if not value:
                    raise errors.missing_parameter(f"The required parameter {name} is missing")
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
            spec = self._route(request, spec, envelope)
            self._quota.admit(account, spec.name, now, dry=dry)
            admitted = not dry
            if spec.method == "POST":
                params = _json_params(request.body)
            result = spec.handler(ActionCall(self._tasks, params, spec.version, dry))
        except ServiceFailure as failure:
            return envelope.failure(failure), account, admitted, failure.code
        return envelope.success(result), account, admitted, None

    def _route(
        self, request: EmulatorRequest, spec: ActionSpec | None, envelope: Envelope
    ) -> ActionSpec:
        if spec is None or request.path != "/":
            raise errors.invalid_action_or_version(
                f"Could not find operation {envelope.action[:_SHOWN]} for version "
                f"{envelope.version[:_SHOWN]} of service {self.service} "
                f"(path {request.path[:_SHOWN]!r})"
            )
        if request.method != spec.method:
            raise errors.method_not_allowed(
                f"{spec.name} must be called with {spec.method}, not {request.method[:20]}"
            )
        return spec

    # -- delivery ---------------------------------------------------------------------

    def transport(self) -> EmulatorTransport:
        """An :class:`httpx.AsyncBaseTransport` that delivers requests in process (no sockets).

        Pass it as ``SegmentClient(transport=...)``; any endpoint URL works. Delays sleep
        on the event loop (virtual under looptime); a read timeout shorter than the forward
        delay plus the answer's delay raises :class:`httpx.ReadTimeout`, a dropped
        connection :class:`httpx.RemoteProtocolError`.
        """
        return EmulatorTransport(self)

    def asgi_app(self) -> EmulatorASGIApp:
        """A plain ASGI application serving this emulator (what :meth:`serve` runs)."""
        return EmulatorASGIApp(self)

    def serve(
        self, *, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """Serve over HTTP with uvicorn (extra ``emulator``) while the context is open.

        ``async with emulator.serve(port=0) as base_url:`` -- ``base_url`` is
        ``http://127.0.0.1:<port>``, the endpoint to give the client. ``port=0`` picks a free
        port.
        """
        return _server.serve(self, host=host, port=port)

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

        Filters are :class:`RequestRecord` attributes (``action``, ``version``,
        ``http_status``, ``error_code``, ``fault``, ``account``, ``admitted``,
        ``throttled``, ``ok``, ``key``), plus ``app_id``, ``room_id`` and ``task_id``.
        Without filters the answer is exact; with filters it counts the kept records.
        """
        return self._recorder.count(filters)

    def max_in_window(
        self, seconds: float = 1.0, *, admitted_only: bool = False, **filters: Any
    ) -> int:
        """The most request arrivals in any sliding window of ``seconds``, as counted.

        Arrivals are the moments requests reached the service (after any forward delay),
        in half-open windows as :func:`max_in_window` counts them. ``admitted_only`` counts
        only requests that passed the ceiling. For a 1-second window without filters the
        answer is exact however long the run; otherwise it is computed from the kept
        records (filters as in :meth:`count`).
        """
        return self._recorder.max_in_window(seconds, admitted_only=admitted_only, filters=filters)

    def reset_record(self) -> None:
        """Forget the record and the counters (the tasks and the QPS window are kept)."""
        self._recorder.reset()

    def __repr__(self) -> str:
        return (
            f"Emulator(accounts={len({k.account for k in self._keys.values()})}, "
            f"qps={self.qps!r}, tasks={len(self._tasks)}, requests={self._recorder.total})"
        )


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
