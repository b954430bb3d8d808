"""Instrumentation hooks: what the HTTP path and the schedulers tell observers.

Hooks are set once per process with :func:`set_call_hooks` (as stamina sets its retry
hooks). A hook is told of every API call (:meth:`CallHook.on_call`) and of every fan-out or
watch (:meth:`CallHook.on_run`); it returns an observer for that call or run, or ``None``
to ignore it. ``rtc_segment.OpenTelemetryHook`` (extra ``otel``) is the ready-made one;
:class:`CallRecorder` keeps what it sees, for tests.

**Default telemetry.** Besides the hooks set, one *default hook* may be in effect: the
package registers (:func:`register_default_hook`) a source that makes an
``OpenTelemetryHook`` on the global providers when ``opentelemetry-api`` is importable.
It is looked up once, at the first call, never by this module's importers: the core never
imports ``_otel`` (see docs/architecture.md). :func:`set_default_telemetry` or the
environment variable ``RTC_SEGMENT_TELEMETRY=off`` turns it off; a set
``OpenTelemetryHook`` replaces it (the source is told the hooks set), so a call never has
two spans.

With no hook in effect, the HTTP path checks one empty tuple per call and builds nothing
else. The observers' calls are wrapped: a hook that raises is logged and the call goes on
as if it were not there.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

import attrs

from ._errors import DeadlineExceededError, RtcSegmentError, ThrottledError
from ._models import TaskKey

__all__ = [
    "TELEMETRY_ENVIRONMENT_VARIABLE",
    "CallDetails",
    "CallHook",
    "CallObservation",
    "CallObserver",
    "CallRecorder",
    "CallResult",
    "RetryDetails",
    "RunDetails",
    "RunObservation",
    "RunObserver",
    "active_call_hooks",
    "default_telemetry_enabled",
    "get_call_hooks",
    "register_default_hook",
    "set_call_hooks",
    "set_default_telemetry",
]

logger = logging.getLogger("rtc_segment")

RunKind = Literal["fan-out", "watch"]


@attrs.frozen
class CallDetails:
    """What a hook is told when an API call starts."""

    action: str
    """The OpenAPI action, e.g. ``"GetSegmentTask"``."""
    key: TaskKey | None
    """The task the call is about."""
    bulk: bool
    """Part of a fan-out or watch (then :meth:`CallHook.on_run` was told of that run)."""
    server_address: str
    """The host requests go to, e.g. ``"rtc.volcengineapi.com"``."""
    server_port: int
    """The port requests go to (443 for https unless the endpoint names another)."""


@attrs.frozen
class RetryDetails:
    """What a hook is told when a failed attempt is about to be retried."""

    call: CallDetails
    attempt: int
    """The attempt that failed (1-based); the next one is ``attempt + 1``."""
    error: RtcSegmentError
    """Why it failed."""
    backoff: float
    """Seconds the call waits before the next attempt."""


@attrs.frozen
class CallResult:
    """What a hook is told when an API call has ended, however it ended."""

    call: CallDetails
    error: BaseException | None
    """``None`` on success; else what the call raised (``asyncio.CancelledError`` too)."""
    attempts: int
    """Attempts made (sent, or at least given their turn by the limiter)."""
    throttled: int
    """Answers of this call that said the quota was exceeded."""
    http_status: int | None
    """HTTP status of the last answer, if one came."""
    request_id: str | None
    """The service's ``RequestId`` of the last answer, if it sent one."""
    duration: float
    """Seconds from the start of the call to its end (limiter, attempts and backoff)."""
    limiter_wait: float
    """Seconds the call's attempts waited for their turn, all attempts together."""

    @property
    def ok(self) -> bool:
        """True when the call returned a result."""
        return self.error is None


@attrs.frozen
class RunDetails:
    """What a hook is told when a fan-out or a watch starts."""

    kind: RunKind
    """``"fan-out"`` (``get_segment_tasks``, ``gather_segment_tasks``) or ``"watch"``."""
    action: str
    """The action its calls make: ``"GetSegmentTask"``."""


class CallObserver(Protocol):
    """Follows one API call; returned by :meth:`CallHook.on_call`."""

    def on_limiter_wait(self, seconds: float) -> None:
        """An attempt got its turn after waiting ``seconds`` (for a connection slot and the
        limiter; for bulk calls, behind the other polls of their run too)."""

    def on_retry(self, retry: RetryDetails) -> None:
        """An attempt failed and the call waits ``retry.backoff`` seconds to try again."""

    def on_end(self, result: CallResult) -> None:
        """The call has ended. Called exactly once, in the task that made the call."""


class RunObserver(Protocol):
    """Follows one fan-out or watch; returned by :meth:`CallHook.on_run`."""

    def on_end(self) -> None:
        """The run has ended: every key done, closed early, or dropped."""


@runtime_checkable
class CallHook(Protocol):
    """An observer factory, set for the process with :func:`set_call_hooks`.

    ``on_call`` runs in the task making the call, before anything is sent, and the
    observer's ``on_end`` runs in that task too: a hook may make something current for the
    call (OpenTelemetry makes its span current, so an instrumented httpx nests under it).
    ``on_run`` runs in the context the run's calls inherit: a context variable set there is
    seen by every call of the run (their :attr:`CallDetails.bulk` is true).
    """

    def on_call(self, call: CallDetails) -> CallObserver | None:
        """An API call starts; return an observer for it, or ``None``."""
        ...

    def on_run(self, run: RunDetails) -> RunObserver | None:
        """A fan-out or watch starts; return an observer for it, or ``None``."""
        ...


#: The environment variable that turns the default telemetry off: ``off`` (or ``false``,
#: ``0``, ``no``); ``on`` (or ``true``, ``1``, ``yes``) or unset leaves it on.
TELEMETRY_ENVIRONMENT_VARIABLE = "RTC_SEGMENT_TELEMETRY"
_OFF = frozenset({"off", "false", "0", "no"})
_ON = frozenset({"on", "true", "1", "yes", ""})

# A source of the default hook: told the hooks set, it returns the hook to add to them, or
# None (the package's source returns None when opentelemetry-api is missing or a set hook
# already is an OpenTelemetryHook).
DefaultHookSource = Callable[[tuple[CallHook, ...]], CallHook | None]

_hooks: tuple[CallHook, ...] = ()  # set with set_call_hooks
_default_source: DefaultHookSource | None = None
_default_telemetry: bool | None = None  # None: as the environment variable says
# The hooks in effect: the default hook (if any) and the set ones; None until looked up.
_active: tuple[CallHook, ...] | None = None


def set_call_hooks(hooks: Iterable[CallHook] | None) -> None:
    """Set the hooks told of every API call and every fan-out or watch, in this process.

    Set them once, at start-up, before the first call; calls already under way keep the
    hooks they started with. ``None`` or ``[]`` removes every hook set.

    The default telemetry (an ``OpenTelemetryHook`` on the global OpenTelemetry providers,
    when ``opentelemetry-api`` is installed) is not one of these hooks: it stays on beside
    them, unless one of them is an ``OpenTelemetryHook`` -- which then takes its place, so
    a call never has two spans -- or :func:`set_default_telemetry` turned it off.

    Raises:
        TypeError: ``hooks`` is not an iterable of objects with ``on_call`` and ``on_run``.
    """
    global _hooks, _active
    if hooks is None:
        _hooks = ()
        _active = None
        return
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(f"hooks must be an iterable of CallHook or None, not {hooks!r}")
    chosen = tuple(hooks)
    for hook in chosen:
        if not isinstance(hook, CallHook):
            raise TypeError(
                f"hooks: {hook!r} is not a CallHook (it needs on_call() and on_run() methods)"
            )
    _hooks = chosen
    _active = None


def get_call_hooks() -> tuple[CallHook, ...]:
    """The hooks set with :func:`set_call_hooks` (an empty tuple by default).

    The default telemetry is not among them (see :func:`set_default_telemetry`).
    """
    return _hooks


def set_default_telemetry(enabled: bool | None) -> None:
    """Turn the default telemetry on or off for this process.

    By default, when ``opentelemetry-api`` is installed, every call is traced and measured
    by an ``OpenTelemetryHook`` on the global providers: an application that configures
    the OpenTelemetry SDK gets the spans and metrics with no other line, and one that
    does not pays for OpenTelemetry's no-op API only. ``set_default_telemetry(False)``
    turns that off (hooks set with :func:`set_call_hooks` stay on); ``None`` goes back to
    what the environment variable ``RTC_SEGMENT_TELEMETRY`` says (``off`` turns it off;
    unset or ``on`` leaves it on), read at the next call.

    Args:
        enabled: ``True`` for on, ``False`` for off, ``None`` for the environment's choice.

    Raises:
        TypeError: ``enabled`` is not a bool or ``None``.
    """
    global _default_telemetry, _active
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, not {type(enabled).__name__}")
    _default_telemetry = enabled
    _active = None


def register_default_hook(source: DefaultHookSource | None) -> None:
    """Register where the default hook comes from (the package does, at import)."""
    global _default_source, _active
    _default_source = source
    _active = None


def default_telemetry_enabled() -> bool:
    """Whether the default telemetry is on: :func:`set_default_telemetry`'s choice, else
    the environment variable's.

    Raises:
        ValueError: the environment variable holds neither an "on" nor an "off" word.
    """
    if _default_telemetry is not None:
        return _default_telemetry
    value = os.environ.get(TELEMETRY_ENVIRONMENT_VARIABLE, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(
        f"{TELEMETRY_ENVIRONMENT_VARIABLE}={os.environ[TELEMETRY_ENVIRONMENT_VARIABLE]!r}: "
        f"expected 'off' (or false, 0, no) or 'on' (or true, 1, yes)"
    )


def active_call_hooks() -> tuple[CallHook, ...]:
    """The hooks in effect: the default hook, if on and not replaced, then the hooks set.

    Looked up at the first call after any change, then kept: the HTTP path pays for one
    global read per call.

    Raises:
        ValueError: ``RTC_SEGMENT_TELEMETRY`` holds neither an "on" nor an "off" word.
    """
    global _active
    active = _active
    if active is None:
        active = _active = _look_up_active_hooks()
    return active


def _look_up_active_hooks() -> tuple[CallHook, ...]:
    source = _default_source
    if source is None or not default_telemetry_enabled():
        return _hooks
    try:
        default = source(_hooks)
    except Exception as error:  # a broken OpenTelemetry install must not break calls
        _report(source, error)
        return _hooks
    # First: what it makes current for a call (its span) is current for the other hooks.
    return _hooks if default is None else (default, *_hooks)


def _report(hook: object, error: Exception) -> None:
    logger.warning("instrumentation hook %r raised; ignored", hook, exc_info=error)


class CallObservation:
    """One call as the HTTP path reports it, passed on to every hook's observer.

    Built only when hooks are set (:meth:`start` returns ``None`` otherwise); it keeps what
    :class:`CallResult` needs, so the HTTP path reports events and not totals.
    """

    __slots__ = (
        "_clock",
        "_details",
        "_http_status",
        "_last_retried",
        "_limiter_wait",
        "_observers",
        "_request_id",
        "_started",
        "_throttled",
        "_turns",
    )

    def __init__(
        self, details: CallDetails, observers: list[CallObserver], clock: Callable[[], float]
    ):
        self._details = details
        self._observers = observers
        self._clock = clock
        self._started = clock()
        self._turns = 0
        self._throttled = 0
        self._limiter_wait = 0.0
        self._http_status: int | None = None
        self._request_id: str | None = None
        self._last_retried: RtcSegmentError | None = None

    @classmethod
    def start(cls, details: CallDetails, clock: Callable[[], float]) -> CallObservation | None:
        """Tell the hooks a call starts; ``None`` when no hook wants to follow it."""
        observers: list[CallObserver] = []
        for hook in active_call_hooks():
            try:
                observer = hook.on_call(details)
            except Exception as error:
                _report(hook, error)
                continue
            if observer is not None:
                observers.append(observer)
        return cls(details, observers, clock) if observers else None

    def limiter_waited(self, seconds: float) -> None:
        """An attempt got its turn after ``seconds``."""
        self._turns += 1
        self._limiter_wait += seconds
        for observer in self._observers:
            try:
                observer.on_limiter_wait(seconds)
            except Exception as error:
                _report(observer, error)

    def retrying(self, attempt: int, error: RtcSegmentError, backoff: float) -> None:
        """Attempt ``attempt`` failed with ``error``; the next comes after ``backoff`` s."""
        self._failed_attempt(error)
        self._last_retried = error
        retry = RetryDetails(self._details, attempt, error, backoff)
        for observer in self._observers:
            try:
                observer.on_retry(retry)
            except Exception as error_of_hook:
                _report(observer, error_of_hook)

    def answered(self, http_status: int, request_id: str) -> None:
        """The last attempt was answered with success."""
        self._http_status = http_status
        self._request_id = request_id or None

    def end(self, error: BaseException | None) -> None:
        """The call ended with ``error`` (``None``: success); tell the observers, last first."""
        attempts = self._turns
        if isinstance(error, DeadlineExceededError):
            # The deadline may have cut in after an attempt failed and before its retry.
            last = error.last_error
            if last is not None and last is not self._last_retried:
                self._failed_attempt(last)
            attempts = error.attempts
        elif isinstance(error, RtcSegmentError):
            self._failed_attempt(error)
            attempts = error.attempts
        result = CallResult(
            call=self._details,
            error=error,
            attempts=attempts,
            throttled=self._throttled,
            http_status=self._http_status,
            request_id=self._request_id,
            duration=self._clock() - self._started,
            limiter_wait=self._limiter_wait,
        )
        # Last first: an observer that made something current for the call undoes it after
        # the observers that came after it did.
        for observer in reversed(self._observers):
            try:
                observer.on_end(result)
            except Exception as error_of_hook:
                _report(observer, error_of_hook)

    def _failed_attempt(self, error: RtcSegmentError) -> None:
        if isinstance(error, ThrottledError):
            self._throttled += 1
        if error.http_status is not None:
            self._http_status = error.http_status
        if error.request_id:
            self._request_id = error.request_id


class RunObservation:
    """One fan-out or watch: the context its calls run in, and the hooks' observers."""

    __slots__ = ("_context", "_observers")

    def __init__(self, context: contextvars.Context, observers: list[RunObserver]) -> None:
        self._context = context
        self._observers = observers

    @classmethod
    def start(cls, kind: RunKind, action: str) -> RunObservation | None:
        """Tell the hooks a run starts; ``None`` when no hook is in effect."""
        hooks = active_call_hooks()
        if not hooks:
            return None
        context = contextvars.copy_context()
        observers = context.run(_start_run, hooks, RunDetails(kind, action))
        return cls(context, observers)

    def call_context(self) -> contextvars.Context:
        """A context for one call of the run: what the hooks set in ``on_run``, its own copy
        (so what one call sets is not seen by the others)."""
        return self._context.copy()

    def end(self) -> None:
        """The run has ended; tell the observers once."""
        observers, self._observers = self._observers, []
        for observer in reversed(observers):
            try:
                observer.on_end()
            except Exception as error:
                _report(observer, error)


def _start_run(hooks: tuple[CallHook, ...], details: RunDetails) -> list[RunObserver]:
    observers: list[RunObserver] = []
    for hook in hooks:
        try:
            observer = hook.on_run(details)
        except Exception as error:
            _report(hook, error)
            continue
        if observer is not None:
            observers.append(observer)
    return observers


@attrs.define
class _RecordedCall:
    recorder: CallRecorder

    def on_limiter_wait(self, seconds: float) -> None:
        self.recorder.limiter_waits.append(seconds)

    def on_retry(self, retry: RetryDetails) -> None:
        self.recorder.retries.append(retry)

    def on_end(self, result: CallResult) -> None:
        self.recorder.calls.append(result)


@attrs.define
class _RecordedRun:
    recorder: CallRecorder
    run: RunDetails

    def on_end(self) -> None:
        self.recorder.ended_runs.append(self.run)


@attrs.define(eq=False)
class CallRecorder:
    """A hook that keeps everything it is told: for tests of your own instrumentation.

    Use it as a context manager, which adds it to the hooks and takes it off again::

        with CallRecorder() as recorded:
            await client.get_segment_task(app_id, room_id, task_id)
        assert recorded.calls[0].ok
    """

    started: list[CallDetails] = attrs.field(factory=list)
    """Calls started, in order."""
    calls: list[CallResult] = attrs.field(factory=list)
    """Calls ended, in the order they ended."""
    retries: list[RetryDetails] = attrs.field(factory=list)
    """Retries, in order."""
    limiter_waits: list[float] = attrs.field(factory=list)
    """Each attempt's wait for its turn, in seconds, in order."""
    runs: list[RunDetails] = attrs.field(factory=list)
    """Fan-outs and watches started."""
    ended_runs: list[RunDetails] = attrs.field(factory=list)
    """Fan-outs and watches ended."""

    def on_call(self, call: CallDetails) -> CallObserver:
        """Record the call and follow it."""
        self.started.append(call)
        return _RecordedCall(self)

    def on_run(self, run: RunDetails) -> RunObserver:
        """Record the run and follow it."""
        self.runs.append(run)
        return _RecordedRun(self, run)

    def __enter__(self) -> CallRecorder:
        set_call_hooks([*get_call_hooks(), self])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        set_call_hooks([hook for hook in get_call_hooks() if hook is not self])
