"""OpenTelemetry traces and metrics for every API call: :class:`OpenTelemetryHook`.

Needs only ``opentelemetry-api`` (extra ``otel``); the application configures providers and
exporters with the SDK as usual -- this module never does. Nothing in the core imports it:
``rtc_segment.OpenTelemetryHook`` loads it on first use, and so does the default telemetry
(``_telemetry.py``: one hook on the global providers, made at the first call, unless
turned off). Without a configured provider every span is non-recording and every
instrument a no-op, and the hook skips the work of filling them in.

Names follow OpenTelemetry's semantic conventions where they have one (``rpc.*``,
``server.*``, ``http.response.status_code``, ``error.type``) and the AWS SDK's conventions
for a signed cloud HTTP API (span ``Service.Operation``, the provider's request id);
what is particular to this client is under ``rtc.*``. See docs/telemetry.md.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._errors import RtcSegmentError
from ._instrumentation import CallDetails, CallResult, RetryDetails, RunDetails
from ._version import __version__

__all__ = ["RPC_SERVICE", "RPC_SYSTEM", "OpenTelemetryHook"]

#: ``rpc.system``. The conventions list no value for Volcengine; like the AWS SDK's
#: ``aws-api`` it names the provider's signed HTTP API ("OpenAPI" is Volcengine's own name
#: for it), in the snake_case of the listed values (``grpc``, ``java_rmi``, ``connect_rpc``).
RPC_SYSTEM = "volcengine_openapi"
#: ``rpc.service``: the service's name in the API (its signing scope, ``ResponseMetadata``).
RPC_SERVICE = "rtc"

_INSTRUMENTATION_NAME = "rtc_segment"

# Advisory histogram buckets, in seconds. Call durations: the semantic conventions'
# recommendation for HTTP client durations. Limiter waits: from no wait at all up to the
# minute a fan-out far over the quota can queue a call.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_WAIT_BUCKETS = (0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

Attributes = Mapping[str, Any]


class OpenTelemetryHook:
    """A :class:`~rtc_segment.CallHook` that traces and measures every API call.

    One is on by default, on the global providers (extra ``otel``; see
    :func:`~rtc_segment.set_default_telemetry`). Set one yourself, once, at start-up, for
    providers of your own or ``per_key_spans``; it takes the default's place::

        rtc_segment.set_call_hooks([rtc_segment.OpenTelemetryHook(per_key_spans=True)])

    **Traces.** One span per API call, named ``RTC.<Action>`` (``RTC.GetSegmentTask``),
    kind ``CLIENT``, current while the call runs (so an instrumented httpx nests under
    it), with ``rpc.system`` (``"volcengine_openapi"``), ``rpc.service`` (``"rtc"``),
    ``rpc.method``, ``server.address``, ``server.port``, ``rtc.app_id``, ``rtc.room_id``,
    ``rtc.task_id``, and at the end ``http.response.status_code``,
    ``volcengine.request_id``, ``rtc.attempts``, ``rtc.throttled`` and
    ``rtc.limiter.wait_seconds``. A failed call has status ``ERROR`` with the error's
    message, and ``error.type`` (the error class, e.g. ``ThrottledError``). Each retry is
    a ``retry`` event: the attempt, ``error.type``, the reason and the backoff.

    A fan-out or watch is one span, ``RTC.GetSegmentTask fan-out`` or
    ``RTC.GetSegmentTask watch``, counting its calls, failures, retries, throttled answers
    and limiter wait; its calls get spans of their own (under it) only with
    ``per_key_spans=True``.

    **Metrics** (attributes ``rpc.system``, ``rpc.service``, ``rpc.method``, and
    ``error.type`` on failures; never an id): ``rtc.client.calls`` (counter),
    ``rtc.client.retries`` (counter, by ``error.type``), ``rtc.client.throttled``
    (throttled answers), ``rtc.client.call.duration`` and ``rtc.client.limiter.wait``
    (histograms, seconds; the wait also by ``rtc.bulk``), ``rtc.client.active_calls``
    (up-down counter).

    Args:
        tracer_provider: Where spans go; ``None`` for the global one (set by the
            application with ``opentelemetry.trace.set_tracer_provider``).
        meter_provider: Where measurements go; ``None`` for the global one.
        per_key_spans: Also give each call of a fan-out or watch its own span.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        per_key_spans: bool = False,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
            raise TypeError(
                f"tracer_provider must be an opentelemetry TracerProvider or None, "
                f"not {type(tracer_provider).__name__}"
            )
        if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
            raise TypeError(
                f"meter_provider must be an opentelemetry MeterProvider or None, "
                f"not {type(meter_provider).__name__}"
            )
        if not isinstance(per_key_spans, bool):
            raise TypeError(f"per_key_spans must be a bool, not {type(per_key_spans).__name__}")
        self._per_key_spans = per_key_spans
        self._tracer = trace.get_tracer(_INSTRUMENTATION_NAME, __version__, tracer_provider)
        meter = metrics.get_meter(_INSTRUMENTATION_NAME, __version__, meter_provider)
        self._calls = meter.create_counter(
            "rtc.client.calls", unit="{call}", description="API calls that ended, by outcome."
        )
        self._retries = meter.create_counter(
            "rtc.client.retries", unit="{retry}", description="Attempts retried, by why."
        )
        self._throttled = meter.create_counter(
            "rtc.client.throttled",
            unit="{answer}",
            description="Answers that said the quota was exceeded.",
        )
        self._duration = meter.create_histogram(
            "rtc.client.call.duration",
            unit="s",
            description="API calls from start to end: limiter, attempts and backoff.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._limiter_wait = meter.create_histogram(
            "rtc.client.limiter.wait",
            unit="s",
            description="How long each attempt waited for its turn (slot and rate limiter).",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self._active = meter.create_up_down_counter(
            "rtc.client.active_calls", unit="{call}", description="API calls under way."
        )
        # Attribute sets are few (actions x error classes) and built once each.
        self._attribute_sets: dict[tuple[str, str | None, bool | None], Attributes] = {}

    def __repr__(self) -> str:
        return f"OpenTelemetryHook(per_key_spans={self._per_key_spans})"

    # -- the hook ----------------------------------------------------------------------

    def on_call(self, call: CallDetails) -> _CallTelemetry:
        """Start the call's span (unless it is part of a run) and count it as active."""
        span: trace.Span | None = None
        if not call.bulk or self._per_key_spans:
            span = self._tracer.start_span(
                f"RTC.{call.action}", kind=SpanKind.CLIENT, attributes=_call_attributes(call)
            )
            if not span.is_recording():  # no provider configured: nothing to fill in
                span = None
        return _CallTelemetry(self, call, span, _CURRENT_RUN.get())

    def on_run(self, run: RunDetails) -> _RunTelemetry:
        """Start the run's span; make it the parent of the run's calls."""
        span = self._tracer.start_span(
            f"RTC.{run.action} {run.kind}",
            kind=SpanKind.INTERNAL,
            attributes={**self._attributes(run.action), "rtc.run.kind": run.kind},
        )
        recording = span.is_recording()
        if recording:
            # on_run runs in the context the run's calls inherit (never detached: that
            # context belongs to the run alone).
            otel_context.attach(trace.set_span_in_context(span))
        telemetry = _RunTelemetry(span if recording else None)
        _CURRENT_RUN.set(telemetry)
        return telemetry

    # -- attribute sets ----------------------------------------------------------------

    def _attributes(
        self, action: str, error_type: str | None = None, bulk: bool | None = None
    ) -> Attributes:
        cache_key = (action, error_type, bulk)
        attributes = self._attribute_sets.get(cache_key)
        if attributes is None:
            built: dict[str, Any] = {
                "rpc.system": RPC_SYSTEM,
                "rpc.service": RPC_SERVICE,
                "rpc.method": action,
            }
            if error_type is not None:
                built["error.type"] = error_type
            if bulk is not None:
                built["rtc.bulk"] = bulk
            attributes = self._attribute_sets[cache_key] = built
        return attributes


def _call_attributes(call: CallDetails) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": RPC_SERVICE,
        "rpc.method": call.action,
        "server.address": call.server_address,
        "server.port": call.server_port,
    }
    if call.key is not None:
        attributes["rtc.app_id"] = call.key.app_id
        attributes["rtc.room_id"] = call.key.room_id
        attributes["rtc.task_id"] = call.key.task_id
    return attributes


def _error_type(error: BaseException) -> str:
    return type(error).__qualname__


class _RunTelemetry:
    """One fan-out or watch: its span and the totals of its calls."""

    __slots__ = ("_span", "calls", "failed", "limiter_wait", "retries", "throttled")

    def __init__(self, span: trace.Span | None) -> None:
        self._span = span
        self.calls = self.failed = self.retries = self.throttled = 0
        self.limiter_wait = 0.0

    def add(self, result: CallResult) -> None:
        self.calls += 1
        self.failed += result.error is not None
        self.retries += max(0, result.attempts - 1)
        self.throttled += result.throttled
        self.limiter_wait += result.limiter_wait

    def on_end(self) -> None:
        span = self._span
        if span is None:
            return
        span.set_attributes(
            {
                "rtc.run.calls": self.calls,
                "rtc.run.failed_calls": self.failed,
                "rtc.run.retries": self.retries,
                "rtc.run.throttled_answers": self.throttled,
                "rtc.limiter.wait_seconds": self.limiter_wait,
            }
        )
        span.end()


# The run (fan-out or watch) the current call belongs to: set by on_run in the run's context.
_CURRENT_RUN: contextvars.ContextVar[_RunTelemetry | None] = contextvars.ContextVar(
    "rtc_segment_otel_run", default=None
)


class _CallTelemetry:
    """One call: its span (if it has one and something records it) and its measurements."""

    __slots__ = ("_action", "_bulk", "_hook", "_run", "_span", "_token")

    def __init__(
        self,
        hook: OpenTelemetryHook,
        call: CallDetails,
        span: trace.Span | None,
        run: _RunTelemetry | None,
    ) -> None:
        self._hook = hook
        self._action = call.action
        self._bulk = call.bulk
        self._span = span
        self._run = run
        # Current while the call runs; detached in on_end, which runs in the same task.
        self._token = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        hook._active.add(1, hook._attributes(call.action))

    def on_limiter_wait(self, seconds: float) -> None:
        hook = self._hook
        hook._limiter_wait.record(seconds, hook._attributes(self._action, bulk=self._bulk))

    def on_retry(self, retry: RetryDetails) -> None:
        hook = self._hook
        error_type = _error_type(retry.error)
        hook._retries.add(1, hook._attributes(self._action, error_type))
        span = self._span
        if span is not None:
            event: dict[str, Any] = {
                "rtc.attempt": retry.attempt,
                "error.type": error_type,
                "rtc.retry.reason": retry.error.message,
                "rtc.retry.backoff_seconds": retry.backoff,
            }
            if retry.error.http_status is not None:
                event["http.response.status_code"] = retry.error.http_status
            span.add_event("retry", event)

    def on_end(self, result: CallResult) -> None:
        hook = self._hook
        error = result.error
        error_type = None if error is None else _error_type(error)
        outcome = hook._attributes(self._action, error_type)
        hook._calls.add(1, outcome)
        hook._duration.record(result.duration, outcome)
        method = hook._attributes(self._action)
        if result.throttled:
            hook._throttled.add(result.throttled, method)
        hook._active.add(-1, method)
        if self._run is not None:
            self._run.add(result)
        span = self._span
        if span is None:
            return
        attributes: dict[str, Any] = {
            "rtc.attempts": result.attempts,
            "rtc.throttled": result.throttled > 0,
            "rtc.limiter.wait_seconds": result.limiter_wait,
        }
        if result.http_status is not None:
            attributes["http.response.status_code"] = result.http_status
        if result.request_id:
            attributes["volcengine.request_id"] = result.request_id
        if error is not None:
            attributes["error.type"] = error_type
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
        span.set_attributes(attributes)
        span.end()
        if self._token is not None:
            otel_context.detach(self._token)


def _describe(error: BaseException) -> str:
    if isinstance(error, RtcSegmentError):
        return str(error)
    return str(error) or type(error).__name__
